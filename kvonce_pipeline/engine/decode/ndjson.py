"""NDJSON event logs, line by line, for every domain: what a line is, not what it means.

Reading is line by line, so memory does not grow with the file; lines are UTF-8 with an optional
BOM, CRLF or LF endings, and blank lines are ignored. A line that is not a JSON object, or whose
fields have the wrong JSON types, makes the whole input unusable (exit 2). An object that is merely
incomplete (no ``key``, an unknown ``type``) is an event the validator reports on. Each domain says
what a line means (KvOnce: :mod:`kvonce_pipeline.domains.kvonce.event_log`; any other:
:func:`kvonce_pipeline.engine.domain_decode.event_from_object`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from ..errors import InputError
from ..timestamps import check_time_range, parse_timestamp
from ..json_values import scan_json



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
        return parse_event_time(obj)
    except ValueError as exc:
        raise InputError(source, str(exc), where=where) from None


def parse_event_time(obj: dict[str, Any]) -> int | None:
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


