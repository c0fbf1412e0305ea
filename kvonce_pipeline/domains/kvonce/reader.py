"""Reading any supported trace input into KvOnce events, whole or as a stream in time order.

The engine sniffs the format, opens gzip and applies the limits
(:mod:`kvonce_pipeline.engine.decode.reader`) and decodes spans through the mapping it is given
(:mod:`kvonce_pipeline.engine.decode`); here the mapping is KvOnce's
(:data:`~kvonce_pipeline.domains.kvonce.span_mapping.KVONCE_SPANS`), NDJSON lines are KvOnce's event
log (:mod:`kvonce_pipeline.domains.kvonce.event_log`), and events come out as KvOnce's
:class:`~kvonce_pipeline.domains.kvonce.events.Event`: whole (:func:`read_trace`) or streamed in time
order with an on-disk sort when they arrive out of order (:func:`open_trace`), for KvOnce's own pass.
"""

from __future__ import annotations

import gc
import operator
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ...engine.decode.ndjson import iter_lines, loads_line
from ...engine.decode.otlp_json import AnyValueDecoder, count_resources, iter_request_events
from ...engine.decode.otlp_json_typed import decode_document
from ...engine.decode.otlp_proto import ProtoAnyValueDecoder, iter_delimited_records, iter_message_events, parse_request
from ...engine.decode.reader import (InputFormat, _loads_document, check_input_path, detect_format, open_payload,
                                     parked, sort_key_times, tempfile_dir)
from ...engine.decode.spans import TAP_EVENTS, DecodeStats, Tap
from ...engine.atomic import private_folder_name, sweep_stale_folders
from ...engine.errors import InputError, NoEventsError
from ...engine.limits import Limits
from .event_log import iter_ndjson_events
from .events import Event
from .span_mapping import KVONCE_SPANS


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
                                             resource_offset=offset, where_prefix=f"line {number} ",
                                             to_event=KVONCE_SPANS):
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
                                         resource_offset=offset, where_prefix=f"record {number} ",
                                         to_event=KVONCE_SPANS):
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
                                 keep=parked(), tap=tap, to_event=KVONCE_SPANS)
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
    events = _limited(iter_request_events(request, source=source, stats=stats, decoder=decoder, consume=True,
                                         to_event=KVONCE_SPANS),
                      source, limits)
    return events, ordered, lambda: min(1.0, stats.spans / spans) if spans else 1.0


def _message_events(message: Any, source: str, stats: DecodeStats, limits: Limits,
                    tap: Tap | None = None) -> list[Event]:
    """The events of one protobuf message, as a list (held whole anyway; a forked child can share it)."""
    events = iter_message_events(message, source=source, stats=stats,
                                 decoder=ProtoAnyValueDecoder(limits.max_context_depth), to_event=KVONCE_SPANS)
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
