"""NDJSON event logs (the seed's format) and the NDJSON this package writes.

Reading is line by line, so memory does not grow with the file; lines are UTF-8 with an optional
BOM, CRLF or LF endings, and blank lines are ignored. A line that is not a JSON object, or whose
fields have the wrong JSON types, makes the whole input unusable (exit 2). An object that is merely
incomplete (no ``key``, an unknown ``type``) is an event the validator reports on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import msgspec
import orjson

from ..errors import InputError
from ..timestamps import check_time_range, parse_timestamp
from ..json_values import json_depth_exceeds, scan_json
from ...domains.kvonce.events import Event
from .spans import DecodeStats, scalar_text

_TEXT_FIELDS = ("type", "event", "reason", "traceId", "spanId", "actor", "origin")


def iter_lines(stream: BinaryIO, *, source: str, max_line: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, content)`` for each non-blank line, without line endings or BOM."""
    number = 0
    while True:
        line = stream.readline(max_line + 2)
        if not line:
            return
        number += 1
        if len(line) > max_line and not line.endswith(b"\n"):
            raise InputError(source, f"line is longer than the limit of {max_line} bytes", where=f"line {number}")
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        line = line.strip()
        if line:
            yield number, line


def loads_line(line: bytes, *, source: str, number: int) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InputError(source, f"not valid JSON ({exc})", where=f"line {number}") from None


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, item in pairs:
        if name in out:
            raise _Duplicate(name)
        out[name] = item
    return out


_SPACED_COLON = re.compile(rb'"[ \t\r]+:').search


def _duplicate_key(line: bytes) -> str | None:
    """The first key that appears twice in one object of ``line`` (exact, slow: stdlib json)."""
    import json

    try:
        json.loads(line, object_pairs_hook=_no_duplicates)
    except _Duplicate as found:
        return str(found.args[0])
    except (ValueError, RecursionError):
        return None  # orjson accepted the line; the stdlib parser's own limits are not a verdict
    return None


def check_event_object(obj: Any, text_fields: tuple[str, ...], *, source: str, where: str) -> None:
    """An event line must be a JSON object whose ``text_fields`` are strings (or absent)."""
    if type(obj) is not dict:
        raise InputError(source, "an event must be a JSON object", where=where)
    for name in text_fields:
        item = obj.get(name)
        if item is not None and type(item) is not str:
            raise InputError(source, f"field '{name}' must be a string, got {type(item).__name__}", where=where)


def checked_nesting(name: str, value: Any, max_depth: int, *, source: str, where: str) -> int:
    """How many object keys ``value`` holds; too deep, or an integer OTLP cannot carry, is an error."""
    too_deep, nested_keys, wide = scan_json(value, max_depth)
    if too_deep:
        raise InputError(source, f"'{name}' nests deeper than {max_depth} levels", where=where)
    if wide is not None:
        raise InputError(source, f"'{name}' holds the integer {wide}, beyond 64 bits (OTLP cannot carry it)",
                         where=where)
    return nested_keys


def refuse_duplicate_keys(raw: bytes, keys: int, *, source: str, where: str) -> None:
    """A line that names a key twice says two things: an error. ``keys``: the object keys the parsed
    line holds (nested ones included). The exact check is slow (the standard library's parser), so it
    runs only when there is not exactly one '":' per key (a duplicate, or '":' inside a string) or a
    key is spaced from its colon (which the count cannot see)."""
    if raw.count(b'":') != keys or ((b'" ' in raw or b'"\t' in raw or b'"\r' in raw) and _SPACED_COLON(raw)):
        duplicate = _duplicate_key(raw)
        if duplicate is not None:
            raise InputError(source, f"duplicate key {duplicate!r}: the line says two things", where=where)


def event_time(obj: dict[str, Any], *, source: str, where: str) -> int | None:
    """The line's time (``timeUnixNano`` before ``timestamp``); a bad one is an error naming the line."""
    try:
        return _event_time(obj)
    except ValueError as exc:
        raise InputError(source, str(exc), where=where) from None


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
        time_ns = _event_time(obj)
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


def _event_time(obj: dict[str, Any]) -> int | None:
    raw_ns = obj.get("timeUnixNano")
    if raw_ns is not None:
        if type(raw_ns) is int:
            return check_time_range(raw_ns)
        if type(raw_ns) is str and raw_ns.isascii() and raw_ns.isdigit():
            return check_time_range(int(raw_ns))
        raise ValueError(f"timeUnixNano {raw_ns!r:.40} is not a non-negative integer")
    stamp = obj.get("timestamp")
    if stamp is None:
        return None
    if type(stamp) is not str:
        raise ValueError(f"field 'timestamp' must be an ISO 8601 string, got {type(stamp).__name__}")
    return parse_timestamp(stamp)


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
