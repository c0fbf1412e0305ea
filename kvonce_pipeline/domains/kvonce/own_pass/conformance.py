"""One conformance run without Dagster: input -> events -> projection -> validation -> summary.

The run is one pass: events flow from the decoder straight into the writer of every artifact
(:func:`kvonce_pipeline.domains.kvonce.own_pass.stages.write_artifacts`), in time order. Inputs read as a stream (NDJSON,
JSON Lines, length-delimited protobuf) are never held whole: when they turn out not to be in
time order the pass starts again through an on-disk merge sort, so memory depends on the number
of keys, not of events. A single OTLP document is parsed whole (JSON has no cheaper way) and its
memory is handed over to the events as they are produced.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import artifacts
from ....engine.errors import InputError, OutputError
from ..events import Event
from ....engine.limits import Limits
from ....engine.decode.spans import Tap
from .parallel import FedProjection
from ..reader import SORT_RUN_EVENTS, STREAMABLE, OutOfOrder, open_trace, read_trace
from ....engine.decode.reader import detect_format, park
from .stages import ProgressCallback, write_artifacts, write_input_error
from ....engine.storage import is_remote, run_staged
from ..validation import DEFAULT_MAX_RETRIES, check_disabled


@dataclass(frozen=True)
class ConformanceOptions:
    format: str = "auto"
    strict: bool = False
    max_retries: int = DEFAULT_MAX_RETRIES
    #: rule ids not reported at all (``--disable``); the report lists them as ``disabledRules``
    disabled: frozenset[str] = frozenset()
    limits: Limits = Limits()
    #: False reads the whole trace into memory first (:func:`read_trace`), as earlier versions
    #: did; the artifacts are byte-identical either way.
    streaming: bool = True
    #: Events per sorted run when a streamed input must be sorted on disk.
    sort_run_events: int = SORT_RUN_EVENTS
    #: Run the projection in a worker process on another core: None decides by input size
    #: (:data:`PARALLEL_MIN_BYTES`) and core count. The artifacts are the same either way.
    parallel: bool | None = None


#: Below this input size a worker's start-up (a fresh interpreter, ~0.3 s) is not worth it.
PARALLEL_MIN_BYTES = 32 * 1024 * 1024


def use_parallel(input_path: str | os.PathLike[str], option: bool | None) -> bool:
    if option is not None:
        return option
    if (os.cpu_count() or 1) < 2:
        return False
    try:
        return Path(input_path).stat().st_size >= PARALLEL_MIN_BYTES
    except OSError:
        return False


@dataclass(frozen=True)
class ConformanceResult:
    valid: bool
    report: dict[str, Any]
    #: where the reports are: a folder, or the URL they were published to
    output_dir: Path | str

    @property
    def exit_code(self) -> int:
        return 0 if self.valid else 1


def run_conformance(input_path: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                    options: ConformanceOptions = ConformanceOptions(), *,
                    progress: ProgressCallback | None = None) -> ConformanceResult:
    """Write every artifact for ``input_path`` into ``output_dir``.

    Raises :class:`InputError` for unusable input, after writing a validation report that says
    so (a half-written artifact is never published: the writers discard their temporary files).
    ``progress(stage, done, total)`` is called every few thousand events. Either may be a URL
    (``s3://...``): see :mod:`kvonce_pipeline.engine.storage`.
    """
    check_disabled(options.disabled)  # before anything is read or written

    def run(source: str | os.PathLike[str], out: Path) -> ConformanceResult:
        return _run_local(source, out, options, progress)

    result = run_staged(input_path, output_dir, run, limits=options.limits, report_input_error=report_input_error,
                        published=artifacts.PUBLISH_ORDER)
    out_text = os.fspath(output_dir)
    return replace(result, output_dir=out_text.rstrip("/")) if is_remote(out_text) else result


def report_input_error(error: InputError, out: Path) -> None:
    """The report of an unusable input (a report that cannot be written becomes a note on the error)."""
    try:
        write_input_error(error, out, also_remove=(artifacts.COLLECTED,))
    except OutputError as output_error:
        error.add_note(f"no report written: {output_error}")


def _run_local(input_path: str | os.PathLike[str], out: Path, options: ConformanceOptions,
               progress: ProgressCallback | None) -> ConformanceResult:
    try:
        if not options.streaming:
            trace = read_trace(input_path, format=options.format, limits=options.limits)
            result = write_artifacts(trace.events, out, max_retries=options.max_retries, strict=options.strict,
                                     disabled=options.disabled,
                                     input_summary=trace.summary(), progress=progress,
                                     total=len(trace.events),
                                     parallel=use_parallel(input_path, options.parallel)).validation
            return ConformanceResult(result.valid, result.report, out)
        try:
            return _streamed(input_path, out, options, progress, sort_on_disk=False)
        except OutOfOrder:
            return _streamed(input_path, out, options, progress, sort_on_disk=True)
    except InputError as error:
        report_input_error(error, out)
        raise


class WholeDocumentFeed:
    """The fed worker of one pass (:class:`~kvonce_pipeline.domains.kvonce.own_pass.parallel.FedProjection`), when there is one.

    Only a whole document on two cores gets one (streams have the pipe worker); it is started
    before the document is read. Pass :attr:`tap` and :attr:`detected` to ``open_trace``, then
    :meth:`handoff` the reader's list to ``write_artifacts``. Made with :func:`whole_document_feed`,
    which stops the worker if the pass fails.
    """

    def __init__(self, input_path: str | os.PathLike[str], out: Path, *, format: str, limits: Limits, parallel: bool,
                 progress: ProgressCallback | None = None) -> None:
        self.detected = detect_format(input_path, hint=format, limits=limits)
        self._progress = progress
        self._fed: FedProjection | None = None
        if parallel and self.detected[0] not in STREAMABLE:
            self._fed = FedProjection(out)
            self._fed.start()  # the worker's interpreter starts while the document is read

    @property
    def tap(self) -> Tap | None:
        """The decoder's tap; it also reports progress (``decode``), the fed run's longest stage."""
        fed, progress = self._fed, self._progress
        if fed is None or progress is None:
            return fed.tap if fed is not None else None

        def tap(start: int, events: list[Event]) -> None:
            fed.tap(start, events)
            if not fed.void:
                progress("decode", fed.sent, None)

        return tap

    def handoff(self, listed: list[Event] | None) -> FedProjection | None:
        """The worker, sealed, if it was fed exactly ``listed``; otherwise it is stopped and None
        (a stream, a document sorted or decoded again after the tap saw it)."""
        fed = self._fed
        if fed is not None and not (listed is not None and fed.seal(len(listed))):
            self.abort()
        return self._fed

    def abort(self) -> None:
        if self._fed is not None:
            self._fed.abort()
            self._fed = None


@contextmanager
def whole_document_feed(input_path: str | os.PathLike[str], out: Path, *, format: str, limits: Limits, parallel: bool,
                        progress: ProgressCallback | None = None) -> Iterator[WholeDocumentFeed]:
    feed = WholeDocumentFeed(input_path, out, format=format, limits=limits, parallel=parallel, progress=progress)
    try:
        yield feed
    except BaseException:
        feed.abort()
        raise


def _streamed(input_path: str | os.PathLike[str], out: Path, options: ConformanceOptions,
              progress: ProgressCallback | None, *, sort_on_disk: bool) -> ConformanceResult:
    parallel = use_parallel(input_path, options.parallel)
    with whole_document_feed(input_path, out, format=options.format, limits=options.limits,
                             parallel=parallel, progress=progress) as feed, \
            open_trace(input_path, format=options.format, limits=options.limits, spill_dir=out,
                       sort_on_disk=sort_on_disk, run_events=options.sort_run_events,
                       tap=feed.tap, detected=feed.detected) as trace:
        report_progress = None
        if progress is not None:
            def report_progress(stage: str, done: int, total: int | None) -> None:
                fraction = trace.fraction() if trace.fraction is not None else None
                estimate = int(done / fraction) if fraction else None
                progress(stage, done, total if total is not None else estimate)

        events: Iterable[Event] = trace.events
        if trace.listed is not None:  # held whole anyway: the list itself, which a forked child can share
            events, trace.count = trace.listed, len(trace.listed)
            if not events:
                next(trace.events, None)  # raises "no kvonce events", naming the spans seen
        result = write_artifacts(events, out, max_retries=options.max_retries, strict=options.strict,
                                 disabled=options.disabled,
                                 input_summary=trace.summary, progress=report_progress,
                                 parallel=parallel, fed=feed.handoff(trace.listed)).validation
        park(trace.listed)  # a million events take most of a second to free: not before exit
    return ConformanceResult(result.valid, result.report, out)


@contextmanager
def _ordered_events(input_path: str | os.PathLike[str], *, format: str = "auto", limits: Limits | None = None,
                    spill_dir: Path | None = None) -> Iterator[Iterator[Event]]:
    """Events in time order for a consumer that cannot start again (``kvonce convert`` to stdout).

    Streamed inputs always go through the on-disk sort here: it holds one run in memory, and
    an input already in order costs one sort of each run, which is linear for sorted data.
    """
    with open_trace(input_path, format=format, limits=limits, spill_dir=spill_dir, sort_on_disk=True) as trace:
        yield trace.events
