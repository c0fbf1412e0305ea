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
import operator
import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson

from ..atomic import private_folder_name, sweep_stale_folders
from ..errors import InputError, NoEventsError
from ...domains.kvonce.events import Event
from ..limits import RATIO_GRACE, Limits
from .spans import TAP_EVENTS, DecodeStats, Tap
from .ndjson import iter_lines, iter_ndjson_events, loads_line
from .otlp_json import AnyValueDecoder, count_resources, iter_request_events
from .otlp_json_typed import decode_document
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
FORMAT_CHOICES = ("auto", "ndjson", "otlp-json", "otlp-jsonl", "otlp-proto", "otlp-proto-delimited")
# Every label a report prints is accepted back by ``--format``. The two framings of a family are
# told apart by their first bytes anyway, so a label names the family: ``otlp-jsonl`` reads as
# ``otlp-json`` (a one-line document is both) and ``otlp-proto-delimited`` as ``otlp-proto``.
_HINT_FAMILY = {"otlp-jsonl": "otlp-json", "otlp-proto-delimited": "otlp-proto"}


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
            "warnings": self.stats.report_warnings(),
        }


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
                                        max_depth=limits.max_context_depth, stats=stats):
            count += 1
            if count > limits.max_events:
                raise InputError(source, f"more than {limits.max_events} events (KVONCE_MAX_EVENTS)")
            yield event
        return
    if detected is InputFormat.OTLP_JSON:
        events, _ordered, _fraction = _document_events(stream.read(), source, stats, limits)
        yield from _limited(iter(events), source, limits) if type(events) is list else events
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
        yield from _limited(iter(_message_events(message, source, stats, limits)), source, limits)
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


def park(value: Any) -> None:
    """Keep ``value`` (a decoded document's events, say) to the end of the process, if
    :func:`park_until_exit` was called; otherwise do nothing and let it be freed."""
    if _park_until_exit:
        _PARKED.append(value)


def _document_events(blob: bytes, source: str, stats: DecodeStats, limits: Limits,
                     tap: Tap | None = None) -> tuple[list[Event] | Iterator[Event], bool, Any]:
    """The events of one OTLP/JSON document in document order: ``(events, in time order, fraction)``.

    The typed decoder (:mod:`kvonce_pipeline.engine.decode.otlp_json_typed`) reads spec documents at less than
    half the time and memory of ``orjson.loads`` and gives a list (``fraction`` None); anything
    else (lenient forms, errors to name) goes through the general decoder, which gives an
    iterator that consumes the parsed document as it goes (``fraction()`` tells how far it is).
    """
    if blob.startswith(b"\xef\xbb\xbf"):
        blob = blob[3:]
    enabled = gc.isenabled()
    gc.disable()
    try:
        listed = decode_document(blob, stats=stats, max_depth=limits.max_context_depth,
                                 keep=_PARKED if _park_until_exit else None, tap=tap)
    finally:
        if enabled:
            gc.enable()
    if listed is not None:
        return listed, events_time_ordered(listed), None
    request = _loads_document(blob, source)
    del blob
    ordered = document_time_ordered(request)
    spans = _count_spans(request)
    decoder = AnyValueDecoder(stats, limits.max_context_depth)
    events = _limited(iter_request_events(request, source=source, stats=stats, decoder=decoder, consume=True),
                      source, limits)
    return events, ordered, lambda: min(1.0, stats.spans / spans) if spans else 1.0


def _message_events(message: Any, source: str, stats: DecodeStats, limits: Limits,
                    tap: Tap | None = None) -> list[Event]:
    """The events of one protobuf message, as a list (held whole anyway; a forked child can share it)."""
    events = iter_message_events(message, source=source, stats=stats,
                                 decoder=ProtoAnyValueDecoder(limits.max_context_depth))
    if tap is None:
        return list(events)
    listed: list[Event] = []
    append, tapped = listed.append, 0
    for event in events:
        append(event)
        if len(listed) - tapped >= TAP_EVENTS:
            tap(tapped, listed[tapped:])
            tapped = len(listed)
    if len(listed) > tapped:
        tap(tapped, listed[tapped:])
    return listed


def events_time_ordered(events: list[Event]) -> bool:
    """Are these events' times non-decreasing (events without a time keep their place)?"""
    last = 0
    for event in events:
        time_ns = event.time_unix_nano
        if time_ns is not None:
            if time_ns < last:
                return False
            last = time_ns
    return True


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
        raise NoEventsError(str(path), f"no kvonce events{detail}")
    reordered = sort_key_times(events)
    return TraceRead(source=str(path), format=detected, compressed=compressed, events=events,
                     stats=stats, reordered=reordered)


# --- streaming: events in time order without holding them all ---------------------------------

#: Events per sorted run when out-of-order streaming input is sorted on disk: about 150 MB of
#: events in memory at 1M per run, whatever the input's size.
SORT_RUN_EVENTS = 250_000
#: Inputs read as a stream (line or record at a time); the others are one message in memory.
STREAMABLE = frozenset({InputFormat.NDJSON, InputFormat.OTLP_JSONL, InputFormat.OTLP_PROTO_DELIMITED})


class OutOfOrder(Exception):
    """Raised by an optimistic stream at the first event earlier than the one before it."""


@dataclass
class TraceStream:
    """A trace being read: ``events`` yields them once, in time order (stable, as :func:`read_trace`).

    ``count`` and ``stats`` are final once ``events`` is exhausted; :meth:`summary` is then the
    same as :meth:`TraceRead.summary` for the same input. ``fraction()`` estimates how much of
    the input has been decoded (for progress bars), or returns None.
    """

    source: str
    format: InputFormat
    compressed: bool
    events: Iterator[Event]
    stats: DecodeStats
    reordered: bool = False
    count: int = 0
    fraction: Any = None
    spilled_runs: int = 0
    #: The events as one list in time order, when the input had to be held whole anyway (a
    #: single OTLP document): a consumer may share it (a forked projection) instead of iterating.
    listed: list[Event] | None = None

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source,
            "format": self.format.value,
            "compressed": self.compressed,
            "events": self.count,
            "spans": self.stats.spans if self.format.is_otlp else None,
            "skippedSpans": self.stats.skipped_spans if self.format.is_otlp else None,
            "reordered": self.reordered,
            "warnings": self.stats.report_warnings(),
        }


def _raw_start(span: Any) -> int | None:
    if type(span) is dict:
        raw = span.get("startTimeUnixNano", span.get("start_time_unix_nano"))
        if type(raw) is str and raw.isdigit():
            return int(raw)
        if type(raw) is int and raw >= 0:
            return raw
    raise ValueError("not a plain start time")


def document_time_ordered(request: Any) -> bool:
    """A cheap look at a parsed OTLP/JSON document: are its spans' start times non-decreasing?

    Spans that will not become events count too, and any oddity answers False, so True is a
    safe promise that the events come out in time order (the document can then be streamed).
    """
    last = 0
    try:
        for resource_spans in request.get("resourceSpans", request.get("resource_spans")):
            for scope_spans in resource_spans.get("scopeSpans", resource_spans.get("scope_spans")):
                for span in scope_spans["spans"]:
                    start = _raw_start(span)
                    if start:  # 0 is "unset": the event keeps its place
                        if start < last:
                            return False
                        last = start
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
    return True


def _note_disorder(stream: "TraceStream", events: Iterable[Event]) -> Iterator[Event]:
    """Pass events through, setting ``stream.reordered`` if any is earlier than the one before."""
    last = 0
    for event in events:
        time_ns = event.time_unix_nano
        if time_ns is not None:
            if time_ns < last:
                stream.reordered = True
            last = time_ns
        yield event


def _ordered_or_raise(events: Iterator[Event]) -> Iterator[Event]:
    last = 0
    for event in events:
        time_ns = event.time_unix_nano
        if time_ns is not None:
            if time_ns < last:
                raise OutOfOrder
            last = time_ns
        yield event


def _spill_record(sort_key: int, seq: int, e: Event) -> bytes:
    return orjson.dumps([sort_key, seq, e.time_unix_nano, e.type, e.key, e.value, e.reason, e.context,
                         e.trace_id, e.span_id, e.actor, e.origin])


def _read_run(path: Path) -> Iterator[tuple[int, int, Event]]:
    with open(path, "rb") as handle:
        for line in handle:
            k, seq, *fields = orjson.loads(line)
            yield k, seq, Event(*fields)


def external_sort(events: Iterable[Event], spill_dir: Path, run_events: int = SORT_RUN_EVENTS,
                  on_spill: Any = None) -> Iterator[Event]:
    """Stable time order with memory bounded by ``run_events``: sorted runs on disk, then a merge.

    The order is exactly :func:`sort_key_times`'s: the key of an event without a time is the
    last time seen before it, ties keep input order (the input position breaks them). Runs are
    JSON lines in a private temporary folder under ``spill_dir``, removed when done.
    """
    import heapq
    import shutil
    import tempfile

    buffer: list[tuple[int, int, Event]] = []
    last = 0
    seq = 0
    folder: Path | None = None
    runs: list[Path] = []
    try:
        for event in events:
            if event.time_unix_nano is not None:
                last = event.time_unix_nano
            buffer.append((last, seq, event))
            seq += 1
            if len(buffer) >= run_events:
                if folder is None:
                    spill_dir.mkdir(parents=True, exist_ok=True)
                    sweep_stale_folders(spill_dir, ".kvonce-sort-")  # runs of a killed run
                    folder = Path(tempfile.mkdtemp(prefix=private_folder_name(".kvonce-sort-"), dir=spill_dir))
                buffer.sort(key=_first_two)
                run = folder / f"run-{len(runs):05d}.jsonl"
                with open(run, "wb") as handle:
                    for start in range(0, len(buffer), 4096):
                        handle.write(b"\n".join(_spill_record(*item) for item in buffer[start:start + 4096]) + b"\n")
                runs.append(run)
                buffer.clear()
                if on_spill is not None:
                    on_spill(len(runs))
        buffer.sort(key=_first_two)
        if not runs:
            for item in buffer:
                yield item[2]
            return
        streams = [_read_run(run) for run in runs] + [iter(buffer)]
        for item in heapq.merge(*streams, key=_first_two):
            yield item[2]
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _first_two(item: tuple[int, int, Event]) -> tuple[int, int]:
    return item[0], item[1]


def _counted(stream: TraceStream, events: Iterable[Event], source: str) -> Iterator[Event]:
    count = 0
    for count, event in enumerate(events, 1):
        yield event
    stream.count = count
    if not count:
        stats = stream.stats
        detail = f" ({stats.spans} spans, none with kvonce.event.type and kvonce.event.key)" if stats.spans else ""
        raise NoEventsError(source, f"no kvonce events{detail}")


@contextmanager
def open_trace(path: str | os.PathLike[str], *, format: str = "auto", limits: Limits | None = None,
               spill_dir: Path | None = None, sort_on_disk: bool = False,
               run_events: int = SORT_RUN_EVENTS, tap: Tap | None = None,
               detected: tuple[InputFormat, bool] | None = None) -> Iterator[TraceStream]:
    """Open a trace for one pass over its events in time order, holding as few as the input allows.

    * JSON Lines, NDJSON and length-delimited protobuf are decoded as they are read. Without
      ``sort_on_disk`` the stream is optimistic: events pass straight through, and the first
      one out of time order raises :class:`OutOfOrder` (the caller starts again with
      ``sort_on_disk=True``, which sorts through runs in ``spill_dir``). Memory then depends
      on the number of keys the consumer tracks, not on the number of events.
    * A single OTLP/JSON document or protobuf message must be parsed whole. When its spans
      are already in time order it is streamed and consumed as it goes (its memory is handed
      over to the events); otherwise the events are collected and sorted as :func:`read_trace` does.
      ``tap`` sees its events in document order while they are decoded (:data:`~kvonce_pipeline.engine.decode.spans.Tap`).

    ``detected`` is :func:`detect_format`'s answer for this path, when the caller has it already.
    """
    limits = limits or Limits()
    stats = DecodeStats()
    source = str(path)
    kind, compressed = detected or detect_format(path, hint=format, limits=limits)
    stream = TraceStream(source, kind, compressed, iter(()), stats)
    enabled = gc.isenabled()
    gc.disable()
    try:
        if kind in STREAMABLE:
            size = check_input_path(path).stat().st_size
            with open_payload(path, limits) as (payload, _):
                raw = payload if not compressed else None
                events: Iterable[Event] = _decode(payload, kind, source=source, limits=limits, stats=stats)
                if sort_on_disk:
                    def spilled(runs: int) -> None:
                        stream.spilled_runs = runs

                    events = external_sort(_note_disorder(stream, events), spill_dir or Path(tempfile_dir()),
                                           run_events, spilled)
                else:
                    events = _ordered_or_raise(iter(events))
                if raw is not None and size:
                    stream.fraction = lambda: min(1.0, raw.tell() / size)
                stream.events = _counted(stream, events, source)
                yield stream
            return
        with open_payload(path, limits) as (payload, _):
            blob = payload.read()
        if kind is InputFormat.OTLP_JSON:
            events, ordered, fraction = _document_events(blob, source, stats, limits, tap)
            del blob
        else:
            message = parse_request(blob, source=source)
            del blob
            events = _message_events(message, source, stats, limits, tap)
            ordered = events_time_ordered(events)
            fraction = None
            del message
        if not ordered or type(events) is list:
            listed = events if type(events) is list else list(events)
            if len(listed) > limits.max_events:
                raise InputError(source, f"more than {limits.max_events} events (KVONCE_MAX_EVENTS)")
            if not ordered:
                stream.reordered = sort_key_times(listed)
            stream.listed = listed
            events = remaining = iter(listed)
            count = len(listed)
            fraction = (lambda: 1.0 - operator.length_hint(remaining) / count) if count else None
            del listed
        stream.fraction = fraction
        stream.events = _counted(stream, events, source)
        yield stream
    finally:
        if enabled:
            gc.enable()


def _count_spans(request: Any) -> int:
    try:
        return sum(len(scope["spans"]) for resource in request["resourceSpans"] for scope in resource["scopeSpans"])
    except (KeyError, TypeError):
        return 0


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()
