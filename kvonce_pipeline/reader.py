"""Reading any supported trace input into ordered KvOnce events.

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
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import BinaryIO

import orjson

from .errors import InputError
from .events import Event
from .limits import Limits
from .mapping import DecodeStats
from .ndjson import iter_lines, iter_ndjson_events, loads_line
from .otlp_json import AnyValueDecoder, count_resources, iter_request_events
from .otlp_proto import ProtoAnyValueDecoder, iter_delimited_records, iter_message_events, parse_request

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
FORMAT_CHOICES = ("auto", "ndjson", "otlp-json", "otlp-proto")


@dataclass
class TraceRead:
    """The result of reading one input: events in time order plus what was seen on the way."""

    source: str
    format: InputFormat
    compressed: bool
    events: list[Event]
    stats: DecodeStats = field(default_factory=DecodeStats)
    reordered: bool = False

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source,
            "format": self.format.value,
            "compressed": self.compressed,
            "events": len(self.events),
            "spans": self.stats.spans if self.format.is_otlp else None,
            "skippedSpans": self.stats.skipped_spans if self.format.is_otlp else None,
            "reordered": self.reordered,
            "warnings": list(self.stats.warnings),
        }


class _LimitedReader(io.RawIOBase):
    """Counts decompressed bytes and stops at the limit: a gzip bomb fails cheaply."""

    def __init__(self, inner: BinaryIO, limit: int, source: str) -> None:
        self._inner = inner
        self._limit = limit
        self._seen = 0
        self._source = source

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
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        if compressed:
            inner = gzip.GzipFile(fileobj=raw, mode="rb")
            yield io.BufferedReader(_LimitedReader(inner, limits.max_decompressed_bytes, str(target)),
                                    buffer_size=1024 * 1024), True
        else:
            yield raw, False


def sniff(head: bytes, first_line: bytes, *, source: str, hint: str = "auto") -> InputFormat:
    """Decide the format from the first bytes and the first line (both after gunzip)."""
    line = first_line.removeprefix(b"\xef\xbb\xbf").strip()
    if not line and not head.strip(b" \t\r\n\xef\xbb\xbf"):
        raise InputError(source, "the file is empty: no kvonce events")
    if hint == "ndjson":
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


def detect_format(path: str | os.PathLike[str], *, hint: str = "auto",
                  limits: Limits | None = None) -> tuple[InputFormat, bool]:
    """Sniff ``path``; returns ``(format, gzip-compressed)``. Opens and closes the file."""
    limits = limits or Limits()
    source = str(path)
    if hint not in FORMAT_CHOICES:
        raise InputError(source, f"unknown format {hint!r}; use one of {', '.join(FORMAT_CHOICES)}")
    with open_payload(path, limits) as (stream, compressed):
        raw = first_line = stream.readline(limits.max_line_bytes + 1)
        if raw[:1] != b"\x0a":  # protobuf starts with byte 0x0a, which readline calls "\n"
            while first_line and not first_line.strip(b" \t\r\n\xef\xbb\xbf"):
                first_line = stream.readline(limits.max_line_bytes + 1)  # skip leading blank lines
        else:
            first_line = b""
        head = raw[: 64 * 1024] + stream.read(64)
    return sniff(head, first_line.strip(), source=source, hint=hint), compressed


def iter_events(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    limits: Limits | None = None,
    stats: DecodeStats | None = None,
    detected: InputFormat | None = None,
) -> Iterator[Event]:
    """Yield events in input order, streaming where the format allows it."""
    limits = limits or Limits()
    stats = stats if stats is not None else DecodeStats()
    if detected is None:
        detected, _ = detect_format(path, hint=format, limits=limits)
    with open_payload(path, limits) as (stream, _compressed):
        yield from _decode(stream, detected, source=str(path), limits=limits, stats=stats)


def _decode(stream: BinaryIO, detected: InputFormat, *, source: str, limits: Limits,
            stats: DecodeStats) -> Iterator[Event]:
    count = 0
    if detected is InputFormat.NDJSON:
        for event in iter_ndjson_events(stream, source=source, max_line=limits.max_line_bytes,
                                        max_depth=limits.max_context_depth):
            count += 1
            if count > limits.max_events:
                raise InputError(source, f"more than {limits.max_events} events (KVONCE_MAX_EVENTS)")
            yield event
        return
    if detected is InputFormat.OTLP_JSON:
        blob = stream.read()
        request = _loads_document(blob, source)
        del blob
        decoder = AnyValueDecoder(stats, limits.max_context_depth)
        yield from _limited(iter_request_events(request, source=source, stats=stats, decoder=decoder,
                                                consume=True), source, limits)
        return
    if detected is InputFormat.OTLP_JSONL:
        decoder = AnyValueDecoder(stats, limits.max_context_depth)
        offset = 0
        for number, line in iter_lines(stream, source=source, max_line=limits.max_line_bytes):
            request = loads_line(line, source=source, number=number)
            for event in iter_request_events(request, source=source, stats=stats, decoder=decoder,
                                             resource_offset=offset, where_prefix=f"line {number} "):
                count += 1
                if count > limits.max_events:
                    raise InputError(source, f"more than {limits.max_events} events (KVONCE_MAX_EVENTS)")
                yield event
            offset += count_resources(request)
        return
    proto_decoder = ProtoAnyValueDecoder(limits.max_context_depth)
    if detected is InputFormat.OTLP_PROTO:
        message = parse_request(stream.read(), source=source)
        yield from _limited(iter_message_events(message, source=source, stats=stats, decoder=proto_decoder),
                            source, limits)
        return
    offset = 0
    for number, blob in iter_delimited_records(stream, source=source, max_record=limits.max_body_bytes):
        message = parse_request(blob, source=source, where=f"record {number}")
        for event in iter_message_events(message, source=source, stats=stats, decoder=proto_decoder,
                                         resource_offset=offset, where_prefix=f"record {number} "):
            count += 1
            if count > limits.max_events:
                raise InputError(source, f"more than {limits.max_events} events (KVONCE_MAX_EVENTS)")
            yield event
        offset += len(message.resource_spans)


def _limited(events: Iterator[Event], source: str, limits: Limits) -> Iterator[Event]:
    for count, event in enumerate(events, 1):
        if count > limits.max_events:
            raise InputError(source, f"more than {limits.max_events} events (KVONCE_MAX_EVENTS)")
        yield event


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


def sort_key_times(events: list[Event]) -> bool:
    """Order events by time, stably; events without a time keep their place after the previous one.

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


def read_trace(path: str | os.PathLike[str], *, format: str = "auto", limits: Limits | None = None) -> TraceRead:
    """Read a whole trace into time-ordered events; raises :class:`InputError` if it is unusable."""
    limits = limits or Limits()
    stats = DecodeStats()
    detected, compressed = detect_format(path, hint=format, limits=limits)
    enabled = gc.isenabled()
    gc.disable()  # millions of small objects that live to the end: the cyclic GC only costs here
    try:
        events = list(iter_events(path, limits=limits, stats=stats, detected=detected))
    finally:
        if enabled:
            gc.enable()
    if not events:
        detail = f" ({stats.spans} spans, none with kvonce.event.type and kvonce.event.key)" if stats.spans else ""
        raise InputError(str(path), f"no kvonce events{detail}")
    reordered = sort_key_times(events)
    return TraceRead(source=str(path), format=detected, compressed=compressed, events=events,
                     stats=stats, reordered=reordered)
