"""The pipeline's stages as plain functions that write one artifact each.

The Dagster assets and the CLI both call these, so a CLI run and a Dagster run produce
byte-identical artifacts. Every write goes through :mod:`kvonce_pipeline.engine.atomic`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from .. import artifacts
from ....engine.atomic import atomic_writer
from ....engine.errors import OutputError
from ....engine.timestamps import format_timestamp
from ..events import Event
from ..event_log import EventLine, dump_events, encode_lines, event_line
from ....engine.domain_pass import input_error_report
from .one_pass import (BATCH, BackgroundWriter, ProgressCallback, Written, progressed, projection_file,
                       write_events_and_states)
from ....engine.gc_pause import gc_paused
from ..projection import PerKeyFold, ProjectionBuilder, StateFold, StateSequence
from ..summary import render_summary
from ..validation import DEFAULT_MAX_RETRIES, Validator

if TYPE_CHECKING:
    from .parallel import FedProjection


def _timestamped(events: Iterable[Event]) -> Iterator[tuple[Event, str | None]]:
    for event in events:
        yield event, event.timestamp


def write_events(events: Iterable[Event], path: Path, *, progress: ProgressCallback | None = None) -> Written:
    with BackgroundWriter(path) as out:
        dump_events(progressed(_timestamped(events), progress, "events"), out)
    return out.written


@dataclass(frozen=True)
class ProjectionResult:
    projection: dict[str, Any]
    projection_file: Written
    state_sequence_file: Written


def write_projection(events: Iterable[Event], out_dir: Path, *,
                     progress: ProgressCallback | None = None) -> ProjectionResult:
    """Fold events into the projection, streaming the state sequence as a JSON array."""
    builder = ProjectionBuilder()
    per_key, sequence = builder.per_key_fold.fold, StateSequence(builder.states)
    with BackgroundWriter(out_dir / artifacts.STATE_SEQUENCE) as states:
        for index, event in enumerate(events):
            stamp = event.timestamp
            per_key(event, stamp)
            sequence.add(index, event, stamp)
            if not (index + 1) % BATCH:
                states.write(sequence.take())
                if progress is not None:
                    progress("projection", index + 1, None)
        states.write(sequence.close())
    return _write_projection_file(builder.per_key_fold, out_dir, states.written)


def _write_projection_file(folded: PerKeyFold, out_dir: Path, state_file: Written) -> ProjectionResult:
    return ProjectionResult(*projection_file(folded, out_dir / artifacts.PROJECTION), state_file)


@dataclass(frozen=True)
class ValidationResult:
    report: dict[str, Any]
    validation_file: Written
    summary_file: Written

    @property
    def valid(self) -> bool:
        return bool(self.report["valid"])


def write_validation(
    events: Iterable[Event],
    out_dir: Path,
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
    strict: bool = False,
    disabled: frozenset[str] = frozenset(),
    input_summary: dict[str, Any] | None = None,
    projection_stats: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> ValidationResult:
    validator = Validator(max_retries=max_retries, strict=strict, disabled=disabled)
    observe = validator.observe
    for index, event in enumerate(progressed(events, progress, "validation")):
        observe(index, event)
    report = validator.report(input_summary=input_summary)
    return ValidationResult(report, *write_report_files(report, out_dir, projection_stats))


@dataclass(frozen=True)
class ArtifactsResult:
    """Everything :func:`write_artifacts` wrote."""

    events_file: Written
    projection: ProjectionResult
    validation: ValidationResult


def write_artifacts(
    events: Iterable[Event],
    out_dir: Path,
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
    strict: bool = False,
    disabled: frozenset[str] = frozenset(),
    input_summary: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
    progress: ProgressCallback | None = None,
    total: int | None = None,
    parallel: bool = False,
    fed: "FedProjection | None" = None,
) -> ArtifactsResult:
    """Events, projection, state sequence and validation in one pass over ``events``.

    The same bytes as :func:`write_events`, :func:`write_projection` and :func:`write_validation`
    called one after the other (the tests hold it to that), at the cost of one pass: each event's
    timestamp is formatted once, the state entry is serialised straight from the live per-key
    state, and the two large files are hashed and written by threads. ``events`` may be a
    one-shot iterator (the streaming path); ``input_summary`` may be a function, called after
    the last event, when the counts are only known then.

    ``parallel=True`` moves the projection to a worker process on the second core
    (:mod:`kvonce_pipeline.domains.kvonce.own_pass.parallel`); the files are the same, but the returned projection then
    holds the stats and not ``perKey`` (read ``kvonce-projection.json`` for that). ``fed`` is a
    :class:`~kvonce_pipeline.domains.kvonce.own_pass.parallel.FedProjection` that was sent exactly ``events`` (a list)
    while they were decoded: it writes the events file, the state sequence and the projection, and
    this process makes the verdict.
    """
    validator = Validator(max_retries=max_retries, strict=strict, disabled=disabled)
    if fed is not None:
        with gc_paused():
            events_list = cast("list[Event]", events)  # a fed run hands over the reader's own list
            return _write_artifacts_fed(events_list, out_dir, fed, validator=validator,
                                        input_summary=input_summary, progress=progress, total=total)
    write: Callable[..., ArtifactsResult] = _write_artifacts
    if parallel:
        from .parallel import can_fork

        write = _write_artifacts_forked if type(events) is list and can_fork() else _write_artifacts_parallel
    with gc_paused():
        return write(events, out_dir, validator=validator, input_summary=input_summary, progress=progress, total=total)


def _write_artifacts_parallel(
    events: Iterable[Event],
    out_dir: Path,
    *,
    validator: Validator,
    input_summary: dict[str, Any] | Callable[[], dict[str, Any]] | None,
    progress: ProgressCallback | None,
    total: int | None,
) -> ArtifactsResult:
    """The projection in a worker process that reads the events file's bytes from a pipe."""
    from .parallel import Feeder, ProjectionWorker

    (out_dir / artifacts.STATE_SEQUENCE).parent.mkdir(parents=True, exist_ok=True)
    worker = ProjectionWorker(out_dir)
    try:
        feeder = Feeder(worker)
        events_file = _write_events_and_observe(events, out_dir, validator, progress, total, also=feeder.write,
                                                before_publish=feeder.close)
        outcome = worker.finish()
    except BaseException:
        worker.abort()
        raise
    summary = input_summary() if callable(input_summary) else input_summary
    return _with_worker_projection(outcome, events_file, validator.report(input_summary=summary), out_dir)


def _write_artifacts_forked(
    events: list[Event],
    out_dir: Path,
    *,
    validator: Validator,
    input_summary: dict[str, Any] | Callable[[], dict[str, Any]] | None,
    progress: ProgressCallback | None,
    total: int | None,
) -> ArtifactsResult:
    """Half the projection in a forked child that reads the same list: nothing to send or parse.

    The child folds the per-key aggregates and writes ``kvonce-projection.json``; this process
    writes the events, the state sequence (its own, lighter fold) and the verdict. Measured on
    the 1M-event trace, that split keeps both cores about equally busy.
    """
    from .parallel import ForkedProjection

    (out_dir / artifacts.STATE_SEQUENCE).parent.mkdir(parents=True, exist_ok=True)
    summary = input_summary() if callable(input_summary) else input_summary  # final: the list is complete
    child = ForkedProjection(events, out_dir, validator, summary)  # before the writer threads start
    outcome: dict[str, Any] = {}

    def child_done() -> None:  # before the parent's files are renamed: if the child failed, nothing is
        outcome.update(child.finish())
        child.publish()

    try:
        events_file, state_file = write_events_and_states(events, out_dir, StateFold(), None, None, progress,
                                                           total or len(events), before_publish=child_done)
    except BaseException:
        child.abort()
        raise
    outcome["state"] = {"sha256": state_file.sha256, "size": state_file.size}
    return _with_worker_projection(outcome, events_file, outcome["report"], out_dir)


def _write_artifacts_fed(events: list[Event], out_dir: Path, fed: "FedProjection", *, validator: Validator,
                         input_summary: dict[str, Any] | Callable[[], dict[str, Any]] | None,
                         progress: ProgressCallback | None, total: int | None) -> ArtifactsResult:
    """The verdict here; the events file, the state sequence and the projection are the fed worker's.

    The worker was fed while the document was decoded and sealed when its list was final; it
    finishes its files while this process makes the verdict (the split that kept the two
    processes' shares of the 1M-event run closest). All files are published together, here.
    """
    observe = validator.observe
    try:
        for index, event in enumerate(events):  # a second or so: progress came with the decoding
            observe(index, event)
        outcome = fed.finish()
        fed.publish()
    except BaseException:
        fed.abort()
        raise
    if progress is not None:
        progress("write", len(events), total or len(events))
    events_file = Written(out_dir / artifacts.EVENTS, outcome["events"]["sha256"], outcome["events"]["size"])
    summary = input_summary() if callable(input_summary) else input_summary
    return _with_worker_projection(outcome, events_file, validator.report(input_summary=summary), out_dir)


def _write_events_and_observe(events: Iterable[Event], out_dir: Path, validator: Validator,
                              progress: ProgressCallback | None, total: int | None, *,
                              also: Callable[[bytes], None] | None = None,
                              before_publish: Callable[[], None] | None = None) -> Written:
    """``kvonce-events.ndjson`` and the validator's pass, while the projection is made elsewhere.

    ``also`` gets every chunk of NDJSON lines too (the pipe to a projection worker);
    ``before_publish`` runs after the last chunk, before the events file is renamed into place.
    """
    observe, stamp_of = validator.observe, format_timestamp
    index = -1
    with BackgroundWriter(out_dir / artifacts.EVENTS) as event_out:
        lines: list[EventLine] = []
        for index, event in enumerate(events):
            time_ns = event.time_unix_nano
            lines.append(event_line(event, None if time_ns is None else stamp_of(time_ns)))
            observe(index, event)
            if len(lines) >= BATCH:
                chunk = encode_lines(lines)
                event_out.write(chunk)
                if also is not None:
                    also(chunk)
                lines.clear()
                if progress is not None:
                    progress("write", index + 1, total)
        if lines:
            chunk = encode_lines(lines)
            event_out.write(chunk)
            if also is not None:
                also(chunk)
        if before_publish is not None:
            before_publish()
    if progress is not None:
        progress("write", index + 1, total)
    return event_out.written


def _with_worker_projection(outcome: dict[str, Any], events_file: Written, report: dict[str, Any],
                            out_dir: Path) -> ArtifactsResult:
    """The result of a run whose projection files a worker wrote (``perKey`` stays in the file)."""
    stats = outcome["stats"]
    projection = {"schemaVersion": "kvonce/v1", "eventCount": stats["totalEvents"], "stats": stats,
                  "outputs": {"stateSequence": artifacts.STATE_SEQUENCE}}
    projection_result = ProjectionResult(
        projection,
        Written(out_dir / artifacts.PROJECTION, outcome["projection"]["sha256"], outcome["projection"]["size"]),
        Written(out_dir / artifacts.STATE_SEQUENCE, outcome["state"]["sha256"], outcome["state"]["size"]),
    )
    validation = ValidationResult(report, *write_report_files(report, out_dir, stats))
    return ArtifactsResult(events_file, projection_result, validation)


def _write_artifacts(
    events: Iterable[Event],
    out_dir: Path,
    *,
    validator: Validator,
    input_summary: dict[str, Any] | Callable[[], dict[str, Any]] | None,
    progress: ProgressCallback | None,
    total: int | None,
) -> ArtifactsResult:
    builder = ProjectionBuilder()
    events_file, state_file = write_events_and_states(events, out_dir, builder.states, builder.per_key_fold,
                                                         validator, progress, total)
    projection = _write_projection_file(builder.per_key_fold, out_dir, state_file)
    summary = input_summary() if callable(input_summary) else input_summary
    report = validator.report(input_summary=summary)
    validation = ValidationResult(report, *write_report_files(report, out_dir, projection.projection["stats"]))
    return ArtifactsResult(events_file, projection, validation)


def write_report_files(report: dict[str, Any], out_dir: Path,
                       projection_stats: dict[str, Any] | None = None) -> tuple[Written, Written]:
    """Write ``kvonce-validation.json`` and ``kvonce-summary.md``; append to the CI step summary."""
    validation_path = out_dir / artifacts.VALIDATION
    with atomic_writer(validation_path) as out:
        out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        out.write(b"\n")
    validation_file = Written(validation_path, out.hexdigest(), out.size)
    text = render_summary(report, projection_stats).encode()
    summary_path = out_dir / artifacts.SUMMARY
    with atomic_writer(summary_path) as out:
        out.write(text)
    append_step_summary(text)
    return validation_file, Written(summary_path, out.hexdigest(), out.size)


def append_step_summary(text: bytes) -> None:
    """GitHub Actions shows ``$GITHUB_STEP_SUMMARY`` on the run page; appending is its contract."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "ab") as handle:
            handle.write(text + b"\n")


def write_input_error(error: Any, out_dir: Path, input_summary: dict[str, Any] | None = None,
                      also_remove: tuple[str, ...] = ()) -> None:
    """An unusable input still gets a report, one that says so: ``valid`` is false.

    The earlier run's event, projection and state files describe another input; they are removed
    (they are ours, in our folder) so that nothing left behind vouches for this one, and so is the
    state sequence's folder when that leaves it empty. ``also_remove``: more of our artifact names
    that cannot belong to this input (the CLI never writes the collected copy, so one in its folder
    is another run's).
    """
    for name in (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE, *also_remove):
        try:
            (out_dir / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # read-only folder, a file where the folder should be, permissions
            raise OutputError(f"cannot remove {out_dir / name}: {exc.strerror or exc}") from exc
    try:
        (out_dir / artifacts.STATE_SEQUENCE).parent.rmdir()
    except OSError:  # not there, not empty, or not ours to remove: leave it
        pass
    report = input_error_report("kvonce-validation/v1", error, input_summary)
    write_report_files(report, out_dir)


class EventColumns:
    """The columns the ``events_schema`` Pandera check needs, gathered while events stream past.

    The Dagster ``kvonce_events`` asset used to keep every ``Event`` to build its check frame
    after writing; with this tap it streams (see ``tap``) and keeps six flat columns instead.
    """

    def __init__(self) -> None:
        self.times: list[int | None] = []
        self.types: list[str | None] = []
        self.keys: list[str | None] = []
        self.trace_ids: list[str] = []
        self.actors: list[str] = []

    def tap(self, events: Iterable[Event]) -> Iterator[Event]:
        times, types, keys = self.times.append, self.types.append, self.keys.append
        trace_ids, actors = self.trace_ids.append, self.actors.append
        for event in events:
            times(event.time_unix_nano)
            types(event.type)
            keys(event.key)
            trace_ids(event.trace_id)
            actors(event.actor)
            yield event

    def frame(self) -> Any:
        """The same table as ``schemas.events_frame`` (timestamps formatted here, once)."""
        import pandas as pd

        stamps = [None if t is None else format_timestamp(t) for t in self.times]
        return pd.DataFrame({
            "timeUnixNano": pd.array(self.times, dtype="Int64"),
            "timestamp": pd.Series(stamps, dtype="object"),
            "type": pd.Series(self.types, dtype="object"),
            "key": pd.Series(self.keys, dtype="object"),
            "traceId": pd.Series(self.trace_ids, dtype="object"),
            "actor": pd.Series(self.actors, dtype="object"),
        })
