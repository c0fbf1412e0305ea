"""KvOnce's NDJSON event log: one line per event, read and written.

The fields follow the seed's event table (``timestamp``, ``type``, ``key``, ``value``, ``reason``,
``context``) plus what the OTLP mapping adds (``event``, ``timeUnixNano``, ``traceId``, ``spanId``,
``actor``) and ``origin``. Reading a line is the engine's (:mod:`kvonce_pipeline.engine.decode.ndjson`:
lines, limits, duplicate keys, times); what a line means as a KvOnce event is here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import msgspec

from ...engine.decode.ndjson import checked_nesting, iter_lines, loads_line, parse_event_time, refuse_duplicate_keys
from ...engine.decode.spans import DecodeStats, scalar_text
from ...engine.errors import InputError
from .events import Event

#: Fields a line may only hold as strings (KvOnce's ``reason`` among them).
_TEXT_FIELDS = ("type", "event", "reason", "traceId", "spanId", "actor", "origin")


def event_from_json(obj: Any, *, source: str, number: int, max_depth: int, raw: bytes | None = None,
                    stats: DecodeStats | None = None) -> Event:
    where = f"line {number}"
    if type(obj) is not dict:
        raise InputError(source, "an event must be a JSON object", where=where)
    for name in _TEXT_FIELDS:  # inline, not check_event_object: a call per line costs 1-2 % of a read
        item = obj.get(name)
        if item is not None and type(item) is not str:
            raise InputError(source, f"field '{name}' must be a string, got {type(item).__name__}", where=where)
    key, value = obj.get("key"), obj.get("value")
    if type(key) is not str or (value is not None and type(value) is not str):
        notes = stats if stats is not None else DecodeStats()
        try:
            key = scalar_text(key, "field 'key'", notes)
            value = scalar_text(value, "field 'value'", notes)
        except ValueError as exc:
            raise InputError(source, str(exc), where=where) from None
    context = obj.get("context")
    keys = len(obj)
    if context is not None:
        keys += checked_nesting("context", context, max_depth, source=source, where=where)
    if raw is not None:
        refuse_duplicate_keys(raw, keys, source=source, where=where)
    try:
        time_ns = parse_event_time(obj)
    except ValueError as exc:
        raise InputError(source, str(exc), where=where) from None
    return Event(
        time_unix_nano=time_ns,
        type=obj.get("type") or obj.get("event"),
        key=key,
        value=value,
        reason=obj.get("reason"),
        context=context,
        trace_id=obj.get("traceId") or f"ndjson-missing-traceid-l{number}",
        span_id=obj.get("spanId") or "",
        actor=obj.get("actor") or "unknown",
        origin=obj.get("origin") or f"{where}",
    )


def iter_ndjson_events(stream: BinaryIO, *, source: str, max_line: int, max_depth: int,
                       stats: DecodeStats | None = None) -> Iterator[Event]:
    for number, line in iter_lines(stream, source=source, max_line=max_line):
        yield event_from_json(loads_line(line, source=source, number=number), source=source,
                              number=number, max_depth=max_depth, raw=line, stats=stats)


class EventLine(msgspec.Struct, omit_defaults=True, gc=False):
    """One line of the NDJSON this package writes: :meth:`Event.to_json`'s fields, in its order.

    Encoding a batch of these with msgspec's ``encode_lines`` is one C call, against a dict and
    an ``orjson.dumps`` call per event (2.6 s against 1.2 s per million events, measured).
    Optional fields are left out when empty, as ``to_json`` does; ``traceId`` and ``actor`` are
    strings, never equal to their ``None`` default, so they are always written. (msgspec writes
    large floats as ``1e16`` where orjson writes ``1e+16``: the same number.)
    """

    timestamp: Any
    timeUnixNano: Any
    type: Any
    event: Any
    key: Any
    value: Any = None
    reason: Any = None
    context: Any = None
    traceId: Any = None
    spanId: Any = ""
    actor: Any = None
    origin: Any = ""


def event_line(event: Event, stamp: str | None) -> EventLine:
    """``event`` as a line to encode; ``stamp`` is its formatted timestamp (None without a time)."""
    time_ns = event.time_unix_nano
    return EventLine(stamp, None if time_ns is None else str(time_ns), event.type, event.type, event.key,
                     event.value, event.reason, event.context, event.trace_id, event.span_id, event.actor,
                     event.origin)


#: ``encode_lines(list of EventLine)``: the NDJSON bytes, each line ending with a newline.
encode_lines = msgspec.json.Encoder().encode_lines


def dump_events(events: Iterable[tuple[Event, str | None]], out: Any, batch: int = 4096) -> int:
    """Write ``(event, formatted timestamp)`` pairs as NDJSON in batches; return the count."""
    buffer: list[EventLine] = []
    count = 0
    for event, stamp in events:
        buffer.append(event_line(event, stamp))
        count += 1
        if len(buffer) >= batch:
            out.write(encode_lines(buffer))
            buffer.clear()
    if buffer:
        out.write(encode_lines(buffer))
    return count
