"""OTLP protobuf decoding with opentelemetry-proto (``ExportTraceServiceRequest``/``TracesData``).

The two messages share one wire format, so one parser reads both. The Collector's file exporter
(``format: proto``) writes records each preceded by a 4-byte big-endian length; those are read
record by record.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..errors import InputError
from ...domains.kvonce.events import Event
from ..timestamps import MAX_TIME_NS
from .spans import DecodeStats, SpanToEvent
from ...domains.kvonce.mapping import ACTOR_ATTRIBUTES, TRACE_ID_ATTRIBUTES, resource_fallbacks, span_to_event

_SLOW_NAMES = frozenset(TRACE_ID_ATTRIBUTES) | frozenset(ACTOR_ATTRIBUTES)
_SLOW = object()


def _fast_span_event(span: Any, decoder: "ProtoAnyValueDecoder", actor: str, origin: str) -> Any:
    """The event of an ordinary span, or :data:`_SLOW` for the general mapping.

    As for OTLP/JSON (see ``otlp_json._fast_span_event``): no attribute dict, no per-value
    ``WhichOneof`` for the string attributes. A non-empty ``string_value`` can only come from the
    string member of the ``oneof``; anything else (empty strings, other kinds, fallback
    attributes, bad ids) goes the general way, which gives the same result or the same error.
    """
    event_type = key = reason = value = context = None
    seen = 0
    for attribute in span.attributes:
        name = attribute.key
        if name.startswith("kvonce.event."):
            seen += 1
        if name == "kvonce.event.type":
            event_type = attribute.value.string_value
        elif name == "kvonce.event.key":
            key = attribute.value.string_value
        elif name == "kvonce.event.value":
            value = attribute.value
        elif name == "kvonce.event.reason":
            reason = attribute.value.string_value
            if not reason:
                return _SLOW
        elif name == "kvonce.event.context":
            context = attribute.value
        elif name in _SLOW_NAMES or name.startswith("kvonce.event.context."):
            return _SLOW
    if not event_type or not key:
        return _SLOW
    if seen != 2 + (value is not None) + (reason is not None) + (context is not None):
        return _SLOW
    trace_id = span.trace_id
    if len(trace_id) != 16:
        return _SLOW
    span_id = span.span_id
    if span_id and len(span_id) != 8:
        return _SLOW
    start: int = span.start_time_unix_nano
    if start > MAX_TIME_NS:
        return _SLOW
    start_ns = start or None  # 0 is "unset" in OTLP
    if value is not None:
        text = value.string_value
        if text:
            value = text
        elif value.WhichOneof("value") in ("kvlist_value", "array_value"):
            value = decoder(value, "kvonce.event.value")  # structured: kept as it is
        else:
            return _SLOW  # empty, or a scalar of another kind: the general path decides
    if context is not None:
        if context.WhichOneof("value") == "kvlist_value":
            entries = {}
            for entry in context.kvlist_value.values:
                if entry.key in entries:
                    return _SLOW
                item = entry.value
                kind = item.WhichOneof("value")
                if kind == "int_value":
                    entries[entry.key] = item.int_value
                elif kind == "string_value":
                    entries[entry.key] = item.string_value
                else:
                    entries[entry.key] = decoder.decode(item, 1)
            context = entries
        else:
            context = decoder(context, "kvonce.event.context")
            if isinstance(context, str) and context[:1] in ("{", "["):
                return _SLOW
    return Event(start_ns, event_type, key, value, reason, context, trace_id.hex(),
                 span_id.hex() if span_id else "", actor, origin)


class ProtoAnyValueDecoder:
    """AnyValue (protobuf) to a JSON-compatible value; same conventions as the JSON decoder."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth

    def __call__(self, value: Any, name: str) -> Any:
        try:
            return self.decode(value, 0)
        except ValueError as exc:
            raise ValueError(f"attribute {name}: {exc}") from None

    def decode(self, value: Any, depth: int) -> Any:
        kind = value.WhichOneof("value")
        if kind == "string_value":
            return value.string_value
        if kind == "int_value":
            return value.int_value
        if kind == "bool_value":
            return value.bool_value
        if kind == "double_value":
            number = value.double_value
            if math.isfinite(number):
                return number
            return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
        if kind is None:
            return None
        if depth >= self.max_depth:
            raise ValueError(f"value nests deeper than {self.max_depth} levels")
        if kind == "kvlist_value":
            out = {}
            for kv in value.kvlist_value.values:
                if kv.key in out:
                    raise ValueError(f"kvlistValue key {kv.key!r} appears more than once")
                out[kv.key] = self.decode(kv.value, depth + 1)
            return out
        if kind == "array_value":
            return [self.decode(v, depth + 1) for v in value.array_value.values]
        if kind == "bytes_value":
            import base64

            return base64.b64encode(value.bytes_value).decode("ascii")
        return None


def parse_request(blob: bytes, *, source: str, where: str | None = None) -> ExportTraceServiceRequest:
    try:
        return ExportTraceServiceRequest.FromString(blob)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InputError(source, f"not a valid OTLP protobuf message ({exc})", where=where) from None


def _id(raw: bytes, name: str, size: int) -> str:
    if not raw:
        return ""
    if len(raw) != size:
        raise ValueError(f"{name} has {len(raw)} bytes, expected {size}")
    return raw.hex()


def iter_message_events(
    message: ExportTraceServiceRequest,
    *,
    source: str,
    stats: DecodeStats,
    decoder: ProtoAnyValueDecoder,
    resource_offset: int = 0,
    where_prefix: str = "",
    to_event: SpanToEvent | None = None,
) -> Iterator[Any]:
    """Yield the events of one protobuf request in document order (``to_event``: as for OTLP/JSON's
    :func:`~kvonce_pipeline.otlp_json.iter_request_events`)."""
    where = where_prefix + "request"
    try:
        for r_local, resource_spans in enumerate(message.resource_spans):
            r = resource_offset + r_local
            where = f"{where_prefix}resource r{r}"
            fallbacks = resource_fallbacks(
                {kv.key: kv.value for kv in resource_spans.resource.attributes}, decoder
            )
            actor = fallbacks.actor or "unknown"
            for s, scope_spans in enumerate(resource_spans.scope_spans):
                spans = scope_spans.spans
                stats.spans += len(spans)
                origin_prefix = f"{where_prefix}span r{r}/s{s}/p"
                for p, span in enumerate(spans):
                    origin = f"{origin_prefix}{p}"
                    try:
                        event = _SLOW if to_event is not None else _fast_span_event(span, decoder, actor, origin)
                    except Exception:  # noqa: BLE001 - the general path below names the error
                        event = _SLOW
                    if event is _SLOW:
                        where = origin
                        event = (to_event or span_to_event)(
                            _attr_map(span.attributes),
                            decoder,
                            fallbacks,
                            trace_id=_id(span.trace_id, "traceId", 16),
                            span_id=_id(span.span_id, "spanId", 8),
                            start_ns=span.start_time_unix_nano,
                            position=(r, s, p),
                            origin=origin,
                            stats=stats,
                        )
                        if event is None:
                            stats.skipped_spans += 1
                            continue
                    yield event
    except (TypeError, ValueError) as exc:
        raise InputError(source, str(exc), where=where) from None
    except RecursionError:
        raise InputError(source, "value nests too deeply", where=where) from None


def iter_delimited_records(stream: BinaryIO, *, source: str, max_record: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(record number, bytes)`` from a 4-byte big-endian length-prefixed file."""
    number = 0
    while True:
        header = stream.read(4)
        if not header:
            return
        number += 1
        if len(header) < 4:
            raise InputError(source, "truncated length prefix", where=f"record {number}")
        (size,) = struct.unpack(">I", header)
        if size > max_record:
            raise InputError(source, f"record of {size} bytes exceeds the limit of {max_record}",
                             where=f"record {number}")
        blob = stream.read(size)
        if len(blob) != size:
            raise InputError(source, f"truncated record: {len(blob)} of {size} bytes", where=f"record {number}")
        yield number, blob


def _attr_map(attributes: Any) -> dict[str, Any]:
    out = {kv.key: kv.value for kv in attributes}
    if len(out) != len(attributes):
        seen: set[str] = set()
        for kv in attributes:
            if kv.key in seen and kv.key.startswith("kvonce."):
                raise ValueError(f"attribute {kv.key} appears more than once")
            seen.add(kv.key)
    return out
