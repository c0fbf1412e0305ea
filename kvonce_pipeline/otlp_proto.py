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

from .errors import InputError
from .events import Event
from .mapping import DecodeStats, resource_fallbacks, span_to_event


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
            return {kv.key: self.decode(kv.value, depth + 1) for kv in value.kvlist_value.values}
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
) -> Iterator[Event]:
    where = where_prefix + "request"
    try:
        for r_local, resource_spans in enumerate(message.resource_spans):
            r = resource_offset + r_local
            where = f"{where_prefix}resource r{r}"
            fallbacks = resource_fallbacks(
                {kv.key: kv.value for kv in resource_spans.resource.attributes}, decoder
            )
            for s, scope_spans in enumerate(resource_spans.scope_spans):
                for p, span in enumerate(scope_spans.spans):
                    where = f"{where_prefix}span r{r}/s{s}/p{p}"
                    stats.spans += 1
                    event = span_to_event(
                        {kv.key: kv.value for kv in span.attributes},
                        decoder,
                        fallbacks,
                        trace_id=_id(span.trace_id, "traceId", 16),
                        span_id=_id(span.span_id, "spanId", 8),
                        start_ns=span.start_time_unix_nano,
                        position=(r, s, p),
                        origin=where,
                    )
                    if event is None:
                        stats.skipped_spans += 1
                    else:
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
