"""Opening any supported trace input: its format, gzip, and the limits on what it may cost to read.

The format is sniffed from the content (after gunzip), not the file name; ``--format`` overrides.

============================  ============================================================
format                        recognised by
============================  ============================================================
``ndjson``                    first line is a JSON object without ``resourceSpans``
``otlp-json``                 a JSON document with ``resourceSpans`` (any layout)
``otlp-jsonl``                first line is a complete ``{"resourceSpans": ...}`` object
                              (the Collector file exporter's ``format: json``)
``otlp-proto``                protobuf starting with field 1 (``resourceSpans``)
``otlp-proto-delimited``      4-byte big-endian length-prefixed protobuf records
                              (the Collector file exporter's ``format: proto``)
============================  ============================================================
"""

from __future__ import annotations

import gc
import gzip
import io
import os
import re
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson

from ..errors import InputError, NoEventsError
from ..limits import RATIO_GRACE, Limits

GZIP_MAGIC = b"\x1f\x8b"


class InputFormat(str, Enum):
    NDJSON = "ndjson"
    OTLP_JSON = "otlp-json"
    OTLP_JSONL = "otlp-jsonl"
    OTLP_PROTO = "otlp-proto"
    OTLP_PROTO_DELIMITED = "otlp-proto-delimited"

    @property
    def is_otlp(self) -> bool:
        return self is not InputFormat.NDJSON


#: What ``--format`` accepts; ``otlp-json`` and ``otlp-proto`` still sniff their sub-layout.
FORMAT_CHOICES = ("auto", "ndjson", "otlp-json", "otlp-jsonl", "otlp-proto", "otlp-proto-delimited")
# Every label a report prints is accepted back by ``--format``. The two framings of a family are
# told apart by their first bytes anyway, so a label names the family: ``otlp-jsonl`` reads as
# ``otlp-json`` (a one-line document is both) and ``otlp-proto-delimited`` as ``otlp-proto``.
_HINT_FAMILY = {"otlp-jsonl": "otlp-json", "otlp-proto-delimited": "otlp-proto"}


class _LimitedReader(io.RawIOBase):
    """Counts decompressed bytes and stops at the limit: a gzip bomb fails cheaply."""

    def __init__(self, inner: BinaryIO, limit: int, source: str, *, raw: BinaryIO | None = None,
                 max_ratio: int | None = None) -> None:
        self._inner = inner
        self._limit = limit
        self._seen = 0
        self._source = source
        self._raw = raw
        self._max_ratio = max_ratio

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._inner.read(len(buffer))
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(self._source, f"corrupt or truncated gzip data ({exc})") from None
        self._seen += len(data)
        if self._seen > self._limit:
            raise InputError(self._source, f"decompressed size exceeds the limit of {self._limit} bytes "
                             "(KVONCE_MAX_DECOMPRESSED_BYTES)")
        if self._max_ratio and self._raw is not None and self._seen > RATIO_GRACE:
            compressed = max(self._raw.tell(), 1)  # read ahead by the decompressor: errs low
            if self._seen > self._max_ratio * compressed:
                raise InputError(self._source, f"gzip data inflates more than {self._max_ratio}:1 "
                                 f"({self._seen} bytes from {compressed}): a compression bomb, not a trace "
                                 "(KVONCE_MAX_COMPRESSION_RATIO)")
        buffer[: len(data)] = data
        return len(data)


def check_input_path(path: str | os.PathLike[str]) -> Path:
    """Refuse what is not a regular readable file before opening it (a FIFO would block)."""
    target = Path(path)
    try:
        info = target.stat()
    except FileNotFoundError:
        raise InputError(str(target), "no such file") from None
    except OSError as exc:
        raise InputError(str(target), f"cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(str(target), "is a directory, not a trace file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(str(target), "is not a regular file (a FIFO, socket or device)")
    return target


@contextmanager
def open_payload(path: str | os.PathLike[str], limits: Limits) -> Iterator[tuple[BinaryIO, bool]]:
    """Open a payload for reading, transparently gunzipping; yields ``(stream, compressed)``."""
    target = check_input_path(path)
    try:
        raw = open(target, "rb")
    except OSError as exc:
        raise InputError(str(target), f"cannot read: {exc.strerror or exc}") from None
    with raw:
        try:  # a path that opens but cannot be read (/proc/self/mem, a bad disk) is an unusable input
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
        except OSError as exc:
            raise InputError(str(target), f"cannot read: {exc.strerror or exc}") from None
        if compressed:
            inner = cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
            limited = _LimitedReader(inner, limits.max_decompressed_bytes, str(target), raw=raw,
                                     max_ratio=limits.max_compression_ratio)
            yield io.BufferedReader(limited, buffer_size=1024 * 1024), True
        else:
            yield raw, False


def sniff(head: bytes, first_line: bytes, *, source: str, hint: str = "auto") -> InputFormat:
    """Decide the format from the first bytes and the first line (both after gunzip)."""
    line = first_line.removeprefix(b"\xef\xbb\xbf").strip()
    if not line and not head.strip(b" \t\r\n\xef\xbb\xbf"):
        raise NoEventsError(source, "the file is empty: no kvonce events")
    if hint == "ndjson":
        if line[:1] in (b"{", b"[") and _REQUEST_START.match(head) and not _whole_json_object(line):
            raise InputError(source, "this is an OTLP/JSON document (it opens with \"resourceSpans\"), not an "
                             "NDJSON event log: use --format otlp-json, or auto", where="line 1")
        return InputFormat.NDJSON
    looks_json = line[:1] in (b"{", b"[")
    if hint == "otlp-proto" or (hint == "auto" and not looks_json):
        if head[:1] == b"\x0a":
            return InputFormat.OTLP_PROTO
        if len(head) >= 5 and head[0] == 0 and head[4:5] == b"\x0a":
            return InputFormat.OTLP_PROTO_DELIMITED
        if hint == "otlp-proto":
            raise InputError(source, "not OTLP protobuf: the first byte is not field 1 (resourceSpans)")
        raise InputError(source, "unrecognised format: not NDJSON, OTLP/JSON or OTLP protobuf "
                         "(use --format to say which it is)")
    if not looks_json:
        raise InputError(source, "not JSON: the first character is not '{'")
    try:
        first = orjson.loads(line)
    except orjson.JSONDecodeError:
        first = None  # a pretty-printed document: the first line is not a whole value
    if type(first) is dict:
        if hint == "otlp-json" or "resourceSpans" in first or "resource_spans" in first:
            return InputFormat.OTLP_JSONL
        return InputFormat.NDJSON
    return InputFormat.OTLP_JSON


def _whole_json_object(line: bytes) -> bool:
    try:
        return type(orjson.loads(line)) is dict
    except orjson.JSONDecodeError:
        return False


def detect_format(path: str | os.PathLike[str], *, hint: str = "auto",
                  limits: Limits | None = None) -> tuple[InputFormat, bool]:
    """Sniff ``path``; returns ``(format, gzip-compressed)``. Opens and closes the file."""
    limits = limits or Limits()
    source = str(path)
    if hint not in FORMAT_CHOICES:
        raise InputError(source, f"unknown format {hint!r}; use one of {', '.join(FORMAT_CHOICES)}")
    hint = _HINT_FAMILY.get(hint, hint)
    with open_payload(path, limits) as (stream, compressed):
        raw = first_line = stream.readline(limits.max_line_bytes + 1)
        number = 1
        if raw[:1] != b"\x0a":  # protobuf starts with byte 0x0a, which readline calls "\n"
            while first_line and not first_line.strip(b" \t\r\n\xef\xbb\xbf"):
                first_line = stream.readline(limits.max_line_bytes + 1)  # skip leading blank lines
                number += 1
        else:
            first_line = b""
        head = raw[: 64 * 1024] + stream.read(64)
    if (hint == "auto" and len(first_line) > limits.max_line_bytes
            and first_line.lstrip(b"\xef\xbb\xbf \t")[:1] == b"{" and not _REQUEST_START.match(first_line, 0, 256)):
        # too long for a line, and not the start of a one-line OTLP/JSON document
        raise InputError(source, f"line is longer than the limit of {limits.max_line_bytes} bytes "
                         "(KVONCE_MAX_LINE_BYTES)", where=f"line {number}")
    shortcut = _sniff_long_line(first_line, limits.max_line_bytes, hint)
    if shortcut is not None:
        return shortcut, compressed
    return sniff(head, first_line.strip(), source=source, hint=hint), compressed


_REQUEST_START = re.compile(rb'(?:\xef\xbb\xbf)?\s*\{\s*"resource_?[sS]pans"\s*:\s*\[')


def _sniff_long_line(first_line: bytes, max_line: int, hint: str) -> InputFormat | None:
    """Decide big JSON first lines without parsing them (the decoder parses them anyway).

    Sniffing used to ``orjson.loads`` the whole first line: for a one-line document of a few
    hundred megabytes that is a second full parse (or a 64 MiB failed one). A line longer than
    the line limit cannot be JSON Lines, so it is a document; a long complete line that opens
    as a request is a JSON Lines batch. Short lines keep the exact check.
    """
    if hint not in ("auto", "otlp-json") or len(first_line) < 1024 * 1024:
        return None
    if not _REQUEST_START.match(first_line, 0, 256):
        return None
    return InputFormat.OTLP_JSON if len(first_line) > max_line else InputFormat.OTLP_JSONL


#: Decoded documents kept to the end of the process instead of freed (see :func:`park_until_exit`).
_PARKED: list[Any] = []
_park_until_exit = False


def park_until_exit() -> None:
    """For a command that ends with ``os._exit``: keep decoded documents instead of freeing them.

    Freeing a 1M-span document's structs costs over a second, spent only to return memory
    that the process's exit returns anyway. Library users (Dagster) never call this.
    """
    global _park_until_exit
    _park_until_exit = True


def parked() -> list[Any] | None:
    """Where a decoder parks what it would free, after :func:`park_until_exit`; otherwise None."""
    return _PARKED if _park_until_exit else None


def park(value: Any) -> None:
    """Keep ``value`` (a decoded document's events, say) to the end of the process, if
    :func:`park_until_exit` was called; otherwise do nothing and let it be freed."""
    if _park_until_exit:
        _PARKED.append(value)


def _loads_document(blob: bytes, source: str) -> object:
    """Parse one JSON document with the cyclic GC paused: it dominates the cost otherwise."""
    if blob.startswith(b"\xef\xbb\xbf"):
        blob = blob[3:]
    enabled = gc.isenabled()
    gc.disable()
    try:
        return orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        line = blob.count(b"\n", 0, exc.pos) + 1 if exc.pos is not None else None
        raise InputError(source, f"not valid JSON ({exc.msg})", where=f"line {line}" if line else None) from None
    finally:
        if enabled:
            gc.enable()


def sort_key_times(events: list[Any]) -> bool:
    """Order events by time, stably; events without a time keep their place after the previous one.

    Any events with a ``time_unix_nano`` (KvOnce's and every other domain's).

    Returns True when the order changed (collected batches arrive in any order).
    """
    keys: list[int] = []
    last = 0
    ordered = True
    for event in events:
        t = event.time_unix_nano
        if t is not None:
            if t < last:
                ordered = False
            last = t
        keys.append(last)
    if ordered:
        return False
    order = sorted(range(len(events)), key=keys.__getitem__)
    events[:] = [events[i] for i in order]
    return True


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()
