"""The OTLP/HTTP trace contract, apart from any server: what a request may be and what we answer.

Kept free of sockets and threads so the rules (media types, content codings, size limit after
decompression, full validation before a 200, response bodies in the request's encoding) can be read
and tested in one place. ``collector.py`` wires them to ``http.server``.

Statuses (OTLP/HTTP specification, ``../shared/reference/otlp-formats.md``):

====  ==========================================================================================
200   decoded and validated; the body is an ``ExportTraceServiceResponse``
400   the body cannot be decoded or holds data the KvOnce mapping refuses (never retried)
413   the body is larger than the limit, after decompression (a gzip bomb stops at the limit)
415   a media type other than protobuf/JSON, or a content coding other than gzip/deflate
====  ==========================================================================================
"""

from __future__ import annotations

import gc
import hmac
import zlib
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from ..engine.errors import InputError
from ..engine.limits import RATIO_GRACE
from ..engine.decode.spans import DecodeStats

#: gRPC status codes carried in ``google.rpc.Status`` error bodies (what OTLP clients log).
GRPC_INVALID_ARGUMENT = 3
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNAUTHENTICATED = 16
GRPC_UNAVAILABLE = 14
GRPC_UNIMPLEMENTED = 12
GRPC_NOT_FOUND = 5

_GRPC_FOR_STATUS = {
    400: GRPC_INVALID_ARGUMENT,
    401: GRPC_UNAUTHENTICATED,
    404: GRPC_NOT_FOUND,
    405: GRPC_UNIMPLEMENTED,
    411: GRPC_INVALID_ARGUMENT,
    413: GRPC_RESOURCE_EXHAUSTED,
    415: GRPC_INVALID_ARGUMENT,
    503: GRPC_UNAVAILABLE,
}


class Media(str, Enum):
    """The two OTLP/HTTP encodings; the value is the ``Content-Type`` we answer with."""

    PROTOBUF = "application/x-protobuf"
    JSON = "application/json"


#: Accepted ``Content-Type`` values (parameters such as ``charset`` are ignored).
MEDIA_TYPES = {
    "application/x-protobuf": Media.PROTOBUF,
    "application/protobuf": Media.PROTOBUF,
    "application/json": Media.JSON,
}
#: Accepted ``Content-Encoding`` values. gzip is required by OTLP; deflate is what the Python
#: exporter sends for ``Compression.Deflate``, so refusing it would break a stock SDK setting.
CONTENT_CODINGS = ("", "identity", "gzip", "x-gzip", "deflate")


class HttpError(Exception):
    """A request refused with ``status``; ``message`` says what was wrong, for the client's log."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def media_type(content_type: str | None) -> Media:
    """The request's encoding from ``Content-Type``; 415 for anything else."""
    essence = (content_type or "").split(";", 1)[0].strip().lower()
    media = MEDIA_TYPES.get(essence)
    if media is None:
        shown = essence or "(none)"
        raise HttpError(415, f"unsupported Content-Type {shown!r:.80}: send application/x-protobuf "
                             "or application/json")
    return media


def content_coding(content_encoding: str | None) -> str:
    """The normalised ``Content-Encoding``; 415 for codings we cannot undo."""
    coding = (content_encoding or "").strip().lower()
    if coding not in CONTENT_CODINGS:
        raise HttpError(415, f"unsupported Content-Encoding {coding!r:.40}: send gzip, deflate or none")
    return {"identity": "", "x-gzip": "gzip"}.get(coding, coding)


#: Compressed bytes handed to the inflater at a time. zlib copies the input left over after each
#: gzip member (``unused_data``), so feeding the whole body made a body of many tiny members cost
#: time quadratic in its size (2 MB of empty members: 3 s; 6 MB: 29 s). In slices the copy is at
#: most a slice per member.
INFLATE_SLICE = 16 * 1024
#: Concatenated gzip members accepted in one body (RFC 1952 allows several; exporters send one).
MAX_GZIP_MEMBERS = 1024


def decompress(body: bytes, coding: str, limit: int, max_ratio: int | None = None) -> bytes:
    """Undo ``coding`` without ever holding more than ``limit + 1`` decompressed bytes.

    A gzip bomb (megabytes that inflate to gigabytes) is refused with 413 as soon as the output
    passes the limit, or, past the first MiB, inflates more than ``max_ratio`` times its compressed
    size (``KVONCE_MAX_COMPRESSION_RATIO``, as for files), so it costs at most ``limit`` bytes of
    memory and the time to inflate them. Concatenated gzip members (RFC 1952) are read as one
    body, at most :data:`MAX_GZIP_MEMBERS` of them, in time linear in the body's size.
    """
    if not coding:
        if len(body) > limit:
            raise HttpError(413, f"request body of {len(body)} bytes exceeds the limit of {limit} bytes")
        return body
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    out = bytearray()
    view = memoryview(body)
    position = 0  # next compressed byte not yet given to an inflater
    members = 0
    while True:
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise HttpError(400, f"Content-Encoding {coding}: more than {MAX_GZIP_MEMBERS} gzip members in one body")
        inflater = zlib.decompressobj(wbits)
        pending: bytes | memoryview = b""  # input of this member given but not consumed yet
        try:
            while not inflater.eof:
                if not pending:
                    if position >= len(view):
                        break  # no input left: the stream is cut short
                    pending = view[position:position + INFLATE_SLICE]
                    position += len(pending)
                # never inflate past what the ratio allows for the input given so far: a bomb is
                # refused after a few MiB, not after the body cap's worth (8 at once were 350 MiB)
                allowed = min(limit, max(RATIO_GRACE, max_ratio * position)) if max_ratio else limit
                chunk = inflater.decompress(pending, allowed + 1 - len(out))
                out += chunk
                if len(out) > limit:
                    raise HttpError(413, f"request body exceeds the limit of {limit} bytes after {coding} "
                                         "decompression")
                if max_ratio and len(out) > RATIO_GRACE and len(out) > max_ratio * position:
                    raise HttpError(413, f"request body inflates more than {max_ratio} times its compressed size "
                                         "(KVONCE_MAX_COMPRESSION_RATIO): refused as a compression bomb")
                pending = inflater.unconsumed_tail
        except zlib.error as exc:
            raise HttpError(400, f"Content-Encoding {coding}: the body is not valid {coding} data ({exc})") from None
        if not inflater.eof:
            raise HttpError(400, f"Content-Encoding {coding}: the body is truncated")
        leftover = len(inflater.unused_data)  # at most one slice: the next member's first bytes
        position -= leftover
        if position >= len(view) or coding != "gzip":
            if position < len(view):
                raise HttpError(400, f"Content-Encoding {coding}: {len(view) - position} bytes of trailing garbage")
            return bytes(out)


@dataclass
class DecodedRequest:
    """One validated ``ExportTraceServiceRequest``.

    ``blob`` is its protobuf serialization (the bytes that go into the payload file: for a
    protobuf request it is the body itself, so nothing is re-encoded on the common path).
    """

    message: Any  # ExportTraceServiceRequest (imported lazily: protobuf is a heavy import)
    blob: bytes
    spans: int
    events: int

    #: the event type attributes of the installed domains, for the note (``kvonce.event.type``, ...)
    type_attributes: tuple[str, ...] = ("kvonce.event.type",)

    @property
    def foreign_spans(self) -> int:
        """Spans that are no installed domain's event: skipped by the reader."""
        return max(0, self.spans - self.events)

    @property
    def note(self) -> str:
        """The success response's ``partial_success.error_message``: a warning, not a rejection
        (``rejected_spans`` stays 0), when no span is an installed domain's event; the spans are
        stored as sent."""
        if self.spans and not self.events:
            return (f"accepted {self.spans} span(s), none an event of an installed domain (none with "
                    f"{' or '.join(self.type_attributes)} and its key): they are stored but are checked by no domain")
        return ""


def bearer_matches(authorization: str, token: str) -> bool:
    """Does an ``Authorization`` value (HTTP header or gRPC metadata) carry ``Bearer <token>``?
    The credential is trimmed; the comparison takes constant time."""
    scheme, _, credential = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), token.encode())


def decode_request(body: bytes, media: Media, *, source: str, max_context_depth: int) -> DecodedRequest:
    """Decode and fully validate one request body; 400 naming the span and the problem otherwise
    (any failure of a decoder included: HTTP and gRPC both answer it, neither drops the request).

    Validation runs the same mappings as ``kvonce conformance``, so a request answered with 200
    can never make the payload file it lands in unreadable: KvOnce's first (its fast paths keep the
    common request cheap), then, for a request with spans that are not KvOnce events, every other
    installed domain's (:func:`other_domains`), so an Inventory span that no reader could read is a
    400 here too, naming the span.
    """
    from google.protobuf import json_format

    from ..domains.kvonce.span_mapping import KVONCE_SPANS

    from ..engine.decode.otlp_json import AnyValueDecoder, iter_request_events
    from ..engine.decode.otlp_proto import ProtoAnyValueDecoder, iter_message_events, parse_request
    from ..engine.otlp_encodings import request_to_message

    stats = DecodeStats()
    try:
        if media is Media.PROTOBUF:
            message = parse_request(body, source=source)
            decoder = ProtoAnyValueDecoder(max_context_depth)
            events = sum(1 for _ in iter_message_events(message, source=source, stats=stats, decoder=decoder,
                                                        to_event=KVONCE_SPANS))
            others = other_domains()
            if stats.spans > events and others.carried_by(body):
                events += sum(len(found) for found in iter_message_events(message, source=source, stats=DecodeStats(),
                                                                          decoder=decoder, to_event=others.mapping))
            if body[:1] != b"\x0a" and stats.spans:
                # Valid protobuf may start with an unknown field, but a payload file must start with
                # field 1 (resourceSpans) to be recognised; store the request without unknown fields.
                message.DiscardUnknownFields()
                return DecodedRequest(message, message.SerializeToString(), stats.spans, events, others.names)
            return DecodedRequest(message, body, stats.spans, events, others.names)
        document = _loads_json(body, source)
        events = sum(1 for _ in iter_request_events(document, source=source, stats=stats,
                                                    decoder=AnyValueDecoder(stats, max_context_depth),
                                                    to_event=KVONCE_SPANS))
        others = other_domains()
        if stats.spans > events and others.carried_by(body):
            scratch = DecodeStats()
            events += sum(len(found) for found in iter_request_events(document, source=source, stats=scratch,
                                                                      decoder=AnyValueDecoder(scratch, max_context_depth),
                                                                      to_event=others.mapping))
        for name, (_count, first) in stats.legacy_ids.items():
            raise InputError(source, f"{name} {first!r:.50} is not {32 if name == 'traceId' else 16} hex digits: "
                                     "payload files hold OTLP protobuf, which has room for hex ids only "
                                     "(kvonce conformance and the drop folder read legacy ids from a file)")
        try:
            message = request_to_message(document)
        except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
            raise InputError(source, f"not a valid OTLP/JSON request ({exc})") from None
        return DecodedRequest(message, message.SerializeToString(), stats.spans, events, others.names)
    except InputError as error:
        raise HttpError(400, str(error)) from None
    except HttpError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the request's 400, never a dropped answer
        raise HttpError(400, f"cannot decode the request ({type(exc).__name__}: {exc!s:.200})") from None


@dataclass(frozen=True)
class OtherDomains:
    """The installed domains besides KvOnce, as the collector validates them."""

    #: their span mapping (None: no other domain is installed)
    mapping: Any
    #: their ``<prefix>type`` attribute names as bytes: a request none of which occurs in is not read again
    needles: tuple[bytes, ...]
    #: every installed domain's type attribute, KvOnce's included (for the note)
    names: tuple[str, ...]

    def carried_by(self, body: bytes) -> bool:
        return self.mapping is not None and any(needle in body for needle in self.needles)


#: (the installed domains' identities, what the collector makes of them): rebuilt when they change
_OTHER_DOMAINS: tuple[tuple[int, ...], OtherDomains] | None = None


def other_domains() -> OtherDomains:
    """The installed domains other than KvOnce (KvOnce's own mapping is applied first)."""
    global _OTHER_DOMAINS
    from ..engine import registry
    from ..engine.domain_decode import SpanMapper

    installed = registry.installed()
    identity = tuple(id(domain) for domain in installed.values())
    cached = _OTHER_DOMAINS
    if cached is None or cached[0] != identity:
        generic = [domain for domain in installed.values() if domain.runner is None]
        names = tuple(domain.definition.prefix + "type" for domain in installed.values()) or ("kvonce.event.type",)
        needles = tuple((domain.definition.prefix + "type").encode() for domain in generic)
        cached = _OTHER_DOMAINS = (identity, OtherDomains(SpanMapper(generic) if generic else None, needles, names))
    return cached[1]


def _loads_json(body: bytes, source: str) -> Any:
    """Parse a JSON body with the cyclic GC paused (it dominates the cost of big documents)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return orjson.loads(body.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as exc:
        line = body.count(b"\n", 0, exc.pos) + 1 if exc.pos is not None else None
        raise InputError(source, f"not valid JSON ({exc.msg})", where=f"line {line}" if line else None) from None
    finally:
        if enabled:
            gc.enable()


def success_body(media: Media, *, rejected_spans: int = 0, message: str = "") -> bytes:
    """An ``ExportTraceServiceResponse``; ``partial_success`` only when there is something to say."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    response = ExportTraceServiceResponse()
    if rejected_spans or message:
        response.partial_success.rejected_spans = rejected_spans
        response.partial_success.error_message = message
    if media is Media.PROTOBUF:
        return response.SerializeToString()
    return orjson.dumps(json_format.MessageToDict(response))


def error_body(media: Media | None, status: int, message: str) -> tuple[bytes, str]:
    """A ``google.rpc.Status`` for an error response, in the request's encoding when it has one.

    Returns ``(body, content type)``; an unknown or unsupported request encoding gets JSON.
    """
    from google.rpc.status_pb2 import Status

    rpc = Status(code=_GRPC_FOR_STATUS.get(status, GRPC_INVALID_ARGUMENT), message=message)
    if media is Media.PROTOBUF:
        return rpc.SerializeToString(), Media.PROTOBUF.value
    return orjson.dumps({"code": rpc.code, "message": rpc.message}), Media.JSON.value
