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
from .spans import SLOW, DecodeStats, SpanMapping, resource_fallbacks

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
    to_event: SpanMapping,
) -> Iterator[Any]:
    """Yield the events of one protobuf request in document order (``to_event``: as for OTLP/JSON's
    :func:`~kvonce_pipeline.engine.decode.otlp_json.iter_request_events`, with ``fast_proto``)."""
    fast, owned = to_event.fast_proto, to_event.owned_prefixes
    where = where_prefix + "request"
    try:
        for r_local, resource_spans in enumerate(message.resource_spans):
            r = resource_offset + r_local
            where = f"{where_prefix}resource r{r}"
            fallbacks = resource_fallbacks(
                {kv.key: kv.value for kv in resource_spans.resource.attributes}, decoder, to_event
            )
            actor = fallbacks.actor or "unknown"
            for s, scope_spans in enumerate(resource_spans.scope_spans):
                spans = scope_spans.spans
                stats.spans += len(spans)
                origin_prefix = f"{where_prefix}span r{r}/s{s}/p"
                for p, span in enumerate(spans):
                    origin = f"{origin_prefix}{p}"
                    try:
                        event = fast(span, decoder, actor, origin)
                    except Exception:  # noqa: BLE001 - the general path below names the error
                        event = SLOW
                    if event is SLOW:
                        where = origin
                        event = to_event(
                            _attr_map(span.attributes, owned),
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


def _attr_map(attributes: Any, owned: tuple[str, ...]) -> dict[str, Any]:
    """``{name: value}``; a name the mapping reads (``owned`` prefixes) given twice is an error."""
    out = {kv.key: kv.value for kv in attributes}
    if len(out) != len(attributes):
        seen: set[str] = set()
        for kv in attributes:
            if kv.key in seen and kv.key.startswith(owned):
                raise ValueError(f"attribute {kv.key} appears more than once")
            seen.add(kv.key)
    return out
