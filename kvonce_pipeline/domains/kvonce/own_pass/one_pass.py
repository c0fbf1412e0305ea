"""The one pass over events in time order, and the files it writes.

:func:`write_events_and_states` is the reference per-event loop: the events file, the state
sequence, the per-key fold and the validator, each event's timestamp formatted once. The worker
halves of the two-core strategies (:mod:`kvonce_pipeline.domains.kvonce.own_pass.parallel`) and the strategies' selector
(:mod:`kvonce_pipeline.domains.kvonce.own_pass.stages`) both build on this module, which imports neither of them: the
layers run one way (``stages`` -> ``parallel`` -> ``one_pass``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .. import artifacts
from ....engine.atomic import atomic_writer
from ....engine.timestamps import format_timestamp
from ..events import Event
from ..event_log import EventLine, encode_lines, event_line
from ..projection import PerKeyFold, StateFold, StateSequence
from ..validation import Validator

#: ``progress(stage, done, total)``: called every :data:`BATCH` events (``total`` None if unknown).
ProgressCallback = Callable[[str, int, "int | None"], None]
#: Events per write batch and per progress call: large enough that per-batch costs vanish,
#: small enough (about a megabyte of output) that memory and progress stay fine-grained.
BATCH = 4096
#: Below this many events the projection file is indented (small runs are read by people).
INDENT_BELOW = 10_000


@dataclass(frozen=True)
class Written:
    """A file this package wrote, with what lineage needs."""

    path: Path
    sha256: str
    size: int


class BackgroundWriter:
    """An atomic file written and hashed by a thread, fed batches through a small queue.

    ``sha256`` and file writes release the GIL, so on two cores hashing and writing several
    hundred megabytes (and the final fsync) overlap with building the next batches instead of
    adding to the run. The queue is bounded, so memory stays a few batches. Used as a context
    manager: leaving it normally publishes the file (:attr:`written`); leaving it with an
    exception discards the temporary file and keeps the previous artifact.
    """

    _DONE = object()
    _ABORT = object()

    def __init__(self, path: Path, depth: int = 8) -> None:
        self.path = path
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._written: Written | None = None
        self._thread = threading.Thread(target=self._run, name=f"write {path.name}", daemon=True)

    def __enter__(self) -> "BackgroundWriter":
        self._thread.start()
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self._put(self._DONE if kind is None else self._ABORT)
        self._thread.join()
        if kind is None and self._error is not None:
            raise self._error

    @property
    def written(self) -> Written:
        if self._written is None:
            raise RuntimeError(f"{self.path} was not written")
        return self._written

    def write(self, data: bytes) -> int:
        self._put(data)
        return len(data)

    def _put(self, item: Any) -> None:
        while True:
            if self._error is not None and item is not self._ABORT:
                raise self._error
            if not self._thread.is_alive() and item is not self._DONE and item is not self._ABORT:
                raise RuntimeError(f"the writer of {self.path} stopped")
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    return

    def _run(self) -> None:
        get = self._queue.get
        try:
            with atomic_writer(self.path) as out:
                while True:
                    item = get()
                    if item is self._DONE:
                        break
                    if item is self._ABORT:
                        raise _Aborted
                    out.write(item)
            self._written = Written(self.path, out.hexdigest(), out.size)
        except _Aborted:
            pass
        except BaseException as error:  # noqa: BLE001 - handed to the producing thread
            self._error = error
            while True:  # unblock a producer waiting on a full queue
                try:
                    get_nowait = self._queue.get_nowait
                    get_nowait()
                except queue.Empty:
                    break


class _Aborted(Exception):
    """The producer failed: discard the temporary file."""


def progressed(items: Iterable[Any], progress: ProgressCallback | None, stage: str) -> Iterable[Any]:
    if progress is None:
        return items
    return _report_every(items, progress, stage)


def _report_every(items: Iterable[Any], progress: ProgressCallback, stage: str) -> Iterator[Any]:
    count = 0
    for count, item in enumerate(items, 1):
        yield item
        if not count % BATCH:
            progress(stage, count, None)
    progress(stage, count, None)


def project_per_key(events: Iterable[Event], path: Path, validator: Validator,
                    input_summary: dict[str, Any] | None) -> bytes:
    """``kvonce-projection.json`` (written to ``path``) and the verdict for ``events``, as JSON for the parent.

    The other half of :func:`_write_artifacts_forked`, run in the forked child.
    """
    per_key = PerKeyFold(share=False)  # the events hold their contexts anyway
    fold, observe, stamp_of = per_key.fold, validator.observe, format_timestamp
    for index, event in enumerate(events):
        time_ns = event.time_unix_nano
        fold(event, None if time_ns is None else stamp_of(time_ns))
        observe(index, event)
    projection, written = projection_file(per_key, path, entries=False)
    return orjson.dumps({"stats": projection["stats"], "report": validator.report(input_summary=input_summary),
                         "projection": {"sha256": written.sha256, "size": written.size}})


def write_fed_files(events: Iterable[Any], events_path: Path, states_path: Path, projection_path: Path) -> bytes:
    """The fed worker's pass (:class:`~kvonce_pipeline.domains.kvonce.own_pass.parallel.FedProjection`): the events file,
    the state sequence and ``kvonce-projection.json`` of stamped events, under the given (staged)
    names; what the parent needs of them, as JSON."""
    per_key = PerKeyFold(share=False)  # each context arrived once: nothing to share
    events_file, state_file = write_events_and_states(events, projection_path.parent, StateFold(), per_key, None,
                                                       None, None, paths=(events_path, states_path), stamped=True)
    projection, written = projection_file(per_key, projection_path, entries=False)
    return orjson.dumps({"stats": projection["stats"],
                         "events": {"sha256": events_file.sha256, "size": events_file.size},
                         "state": {"sha256": state_file.sha256, "size": state_file.size},
                         "projection": {"sha256": written.sha256, "size": written.size}})


def projection_file(folded: PerKeyFold, projection_path: Path, *,
                     entries: bool = True) -> tuple[dict[str, Any], Written]:
    """Write ``kvonce-projection.json``; returns the projection (only its stats without ``entries``)."""
    data, stats = folded.encoded(state_sequence_path=artifacts.STATE_SEQUENCE, indent=folded.event_count < INDENT_BELOW)
    with atomic_writer(projection_path) as out:
        out.write(data)
        out.write(b"\n")
    projection = folded.result(state_sequence_path=artifacts.STATE_SEQUENCE) if entries else {"stats": stats}
    return projection, Written(projection_path, out.hexdigest(), out.size)


def write_events_and_states(events: Iterable[Event], out_dir: Path, states: StateFold,
                             per_key: PerKeyFold | None, validator: Validator | None,
                             progress: ProgressCallback | None, total: int | None, *,
                             before_publish: Callable[[], None] | None = None,
                             paths: tuple[Path, Path] | None = None,
                             stamped: bool = False) -> tuple[Written, Written]:
    """The one pass: events file, state sequence and the validator, each timestamp formatted once.

    ``per_key`` and ``validator`` None: the per-key projection and the verdict are made
    elsewhere (the forked child's half). ``before_publish`` runs after the last event, before
    either file is renamed into place. ``paths``: where the events file and the state sequence
    go instead of ``out_dir`` (the fed worker's staged names). ``stamped``: the events carry
    their formatted timestamp as ``stamp``.
    """
    sequence = StateSequence(states)
    add_state = sequence.add
    fold = per_key.fold if per_key is not None else _ignore
    observe = validator.observe if validator is not None else _ignore
    stamp_of = format_timestamp
    events_path, states_path = paths or (out_dir / artifacts.EVENTS, out_dir / artifacts.STATE_SEQUENCE)
    index = -1
    with BackgroundWriter(events_path) as event_out, BackgroundWriter(states_path) as state_out:
        lines: list[EventLine] = []
        for index, event in enumerate(events):
            if stamped:
                stamp = event.stamp  # type: ignore[attr-defined]
            else:
                time_ns = event.time_unix_nano
                stamp = None if time_ns is None else stamp_of(time_ns)
            lines.append(event_line(event, stamp))
            add_state(index, event, stamp)
            fold(event, stamp)
            observe(index, event)
            if len(lines) >= BATCH:
                event_out.write(encode_lines(lines))
                state_out.write(sequence.take())
                lines.clear()
                if progress is not None:
                    progress("write", index + 1, total)
        if lines:
            event_out.write(encode_lines(lines))
        state_out.write(sequence.close())
        if before_publish is not None:
            before_publish()
    if progress is not None:
        progress("write", index + 1, total)
    return event_out.written, state_out.written


def _ignore(first: Any, second: Any) -> None:
    """No per-key fold or verdict in this pass."""
