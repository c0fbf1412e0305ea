"""Protobuf written by hand on the wire format, so hostile messages can break any rule.

The ``opentelemetry-proto`` classes refuse to build some of what we need (a 10,000-deep AnyValue
is slow to build through them, a 15-byte trace id is fine but invalid UTF-8 is not), so the corpus
encodes ``ExportTraceServiceRequest`` directly. Field numbers are those of ``trace.proto`` and
``common.proto``.
"""

from __future__ import annotations

import struct
from typing import Any

BASE_NS = 1_759_557_600_000_000_000  # 2025-10-04T06:00:00Z
TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("a1b2c3d4e5f60001")


def varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(tag << 3 | 2) + varint(len(payload)) + payload


def any_value(value: Any) -> bytes:
    """AnyValue: str -> string_value(1), bool -> bool_value(2), int -> int_value(3), bytes raw."""
    if isinstance(value, bytes):
        return value  # an already encoded AnyValue body
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)
    return field(1, value.encode())


def key_value(key: str, value: Any) -> bytes:
    return field(1, key.encode()) + field(2, any_value(value))


def deep_array(levels: int) -> bytes:
    """An AnyValue that is ``levels`` nested ``array_value``s around one string."""
    value = field(1, b"x")
    for _ in range(levels):
        value = field(5, field(1, value))
    return value


def span(attributes: dict[str, Any], *, trace_id: bytes = TRACE_ID, span_id: bytes = SPAN_ID,
         start_ns: int = BASE_NS, name: bytes = b"kvonce.op") -> bytes:
    parts = [field(1, trace_id), field(2, span_id), field(5, name),
             b"\x39" + struct.pack("<Q", start_ns), b"\x41" + struct.pack("<Q", start_ns)]
    parts += [field(9, key_value(key, value)) for key, value in attributes.items()]
    return b"".join(parts)


def request(*spans: bytes) -> bytes:
    """``ExportTraceServiceRequest`` with one resource and one scope holding ``spans``."""
    scope_spans = b"".join(field(2, s) for s in spans)
    return field(1, field(2, scope_spans))


def kvonce_span(event_type: Any = "success", key: Any = "k", **extra: Any) -> bytes:
    """A span carrying one KvOnce event; ``extra`` maps to ``kvonce.event.<name>`` attributes."""
    ids = {name: extra.pop(name) for name in ("trace_id", "span_id", "start_ns") if name in extra}
    attributes: dict[str, Any] = {"kvonce.event.type": event_type, "kvonce.event.key": key}
    for name, value in extra.items():
        attributes[f"kvonce.event.{name}"] = value
    return span(attributes, **ids)


def delimited(*records: bytes) -> bytes:
    """The Collector file exporter's ``format: proto``: 4-byte big-endian length, then the record."""
    return b"".join(struct.pack(">I", len(record)) + record for record in records)
