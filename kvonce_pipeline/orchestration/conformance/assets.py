"""The conformance graph: collected payload -> events -> projection -> validation, in one step.

Built by a factory so the same graph exists twice: unpartitioned for the CI job and the UI, and
(with a key prefix and dynamic partitions) once per dropped payload.

The four assets are one ``@multi_asset`` (not subsettable: the CI graph is, only so that its outputs may
be absent in ``trace_conformance_job``, and refuses a partial selection itself; see
:attr:`ConformanceHooks.may_skip`): one Dagster step that does what
``kvonce conformance`` does, one pass over the decoded events writing the events, the state
sequence, the projection and the report (:func:`kvonce_pipeline.domains.kvonce.own_pass.stages.write_artifacts`), after
collecting the payload. Four steps used to read the data four times (a second whole parse of the
collected document for its span table, and the events file twice more): 96 s against the CLI's
23 s on the 1M-event trace of issue #5. The specs keep the four asset keys, their dependencies
(the UI still draws the chain), their code versions and their metadata; each materialization
carries its artifact's path, sha256 and counts, with the sha256 as its data version.

Pandera checks stay blocking: a failed check fails the step (and the run, and ``dagster job
execute``) after all four materializations are recorded. A violation fails the step too, but
with the verdict as its message and without materializing ``kvonce_validation``, so that the
asset (in the drop graph, the payload's partition) shows failed in the UI (:class:`Violations`).
The checks' tables are built from what the pass already has (the decoded event list) or by cheap
typed decoding. When the input is large
enough for the pass to be parallel, the work that needs only files runs in low-priority worker
processes beside it (:mod:`kvonce_pipeline.orchestration.conformance.schema_worker`): the collected copy of
a spec OTLP/JSON payload (the pass reads the source meanwhile: the same bytes), the span table
check, and the per-key check once the projection is written. Small inputs do it all in process.

A payload URL and a reports URL (``KVONCE_OTLP_PAYLOAD=s3://...``, ``KVONCE_REPORTS_DIR=s3://...``) are
the resource's to stage (:class:`~kvonce_pipeline.orchestration.resources.KvonceSettings`): the step reads
the run's private copy and writes into the run's private folder exactly as on disk, then
:func:`published_step` publishes its files, the report last, before its events are recorded (each
materialization names the object it describes), whatever the verdict. See docs/storage.md.
"""


import hashlib
import inspect
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar

import dagster as dg
import orjson

from ...domains.kvonce import events, mapping, projection, schemas, validation
from ...domains.kvonce import otlp_render
from ...domains.kvonce.otlp_render import render_event_log
from ...engine import collect, json_values, otlp_encodings, timestamps
from ...domains.kvonce import artifacts
from ...domains.kvonce.own_pass import conformance, stages
from ...engine.decode import ndjson, otlp_json, otlp_proto, reader, spans
from ...domains.kvonce import event_log, span_mapping
from ...domains.kvonce import reader as kvonce_reader
from ...domains.kvonce import summary as kvonce_summary
from ...domains.kvonce.own_pass import parallel as projection_worker
from ...engine.errors import ConfigError, InputError, OutputError
from ...engine.progress import log_progress
from ...engine.summary import where_of
from ..resources import KvonceSettings
from .schema_worker import SchemaWorker, SchemaWorkerError

PayloadLocator = Callable[[dg.AssetExecutionContext, KvonceSettings], Path]
OutputLocator = Callable[[dg.AssetExecutionContext, KvonceSettings], Path]

COLLECTED, EVENTS, PROJECTION, VALIDATION = ASSET_NAMES = (
    "collected_kvonce_otlp", "kvonce_events", "kvonce_projection", "kvonce_validation")
#: The op (step) that materializes all four, without and with a key prefix (``drops__...``).
STEP_NAME = "kvonce_conformance_pass"


def _code_version(*modules: ModuleType, files: Sequence[Path] = ()) -> str:
    """A hash of the code that shapes an artifact: changes to it mark the asset stale, nothing else does."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


_DECODE = (reader, kvonce_reader, events, event_log, mapping, span_mapping, ndjson, otlp_json, otlp_proto, spans,
           timestamps, json_values)
#: Further OTLP/JSON decoders ``reader`` may use (``otlp_json_*.py``), found on disk so that the
#: versions do not depend on what happens to be imported.
_DECODE_FILES = sorted(Path(otlp_json.__file__).parent.glob("otlp_json_*.py"))
CODE_VERSIONS = {
    COLLECTED: _code_version(collect, otlp_render, otlp_encodings, *_DECODE, files=_DECODE_FILES),
    EVENTS: _code_version(stages, *_DECODE, files=_DECODE_FILES),
    PROJECTION: _code_version(projection, projection_worker, stages, event_log, events),
    VALIDATION: _code_version(validation, stages, event_log, events, kvonce_summary),
}


class EventObserver(Protocol):
    """Sees every event of the pass, in order, as the writers do (e.g. ``store.FactsBuilder``)."""

    def observe(self, index: int, event: events.Event) -> None: ...


class ConformanceHooks:
    """What a variant of the graph adds to the stages; this base class adds nothing.

    The drop-folder variant (:mod:`kvonce_pipeline.orchestration.drops.assets`) uses it to put the
    source's lineage on every materialization, to judge a payload against the cumulative store and
    to write the partition's envelope, without a second copy of the stage code. The CI graph's
    (:mod:`kvonce_pipeline.orchestration.domains.kvonce_part`) steps aside in ``trace_conformance_job``
    for a payload of other domains only.
    """

    #: The step may materialize nothing (:meth:`absent`): its outputs are then optional, which Dagster
    #: 1.13 allows for a multi-asset's checks only when it is subsettable (the step refuses a subset).
    may_skip: bool = False
    #: The step's files go to the reports URL when ``KVONCE_REPORTS_DIR`` is one (:func:`published_step`).
    publishes: bool = True

    def published(self) -> Sequence[str]:
        """The step's files in publish order, the report last (the drop variant adds its own)."""
        return PUBLISHED

    def absent(self, context: dg.AssetExecutionContext, settings: KvonceSettings, source: Path,
               out_dir: Path) -> str | None:
        """Why this run has no KvOnce part in ``source`` (the step then materializes nothing), or None:
        check it (the default; only a hooks class with :attr:`may_skip` may say otherwise)."""
        return None

    def code_version(self, asset_name: str, base: str) -> str:
        """The asset's code version; a variant that runs more code folds that code in."""
        return base

    def lineage(self, context: dg.AssetExecutionContext, settings: KvonceSettings,
                asset_name: str) -> dict[str, Any]:
        """Metadata put on every materialization of the graph (source file, run, code version)."""
        return {}

    def observer(self, context: dg.AssetExecutionContext, settings: KvonceSettings) -> EventObserver | None:
        """Something to show every event of the pass to, for :meth:`judge` (the default: nothing)."""
        return None

    def judge(self, context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path,
              result: stages.ValidationResult, observed: EventObserver | None, *,
              projection_stats: dict[str, Any]) -> stages.ValidationResult:
        """The final report, given the pass's own (already written) and what :meth:`observer` saw.

        The default keeps the pass's report: the payload judged on its own.
        """
        return result

    def check_collected(self, source: Path, spans: int, kvonce_spans: int) -> InputError | None:
        """An input error to fail with once the payload is collected (the default: leave it to the checks)."""
        return None

    def validated(self, context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path,
                  result: stages.ValidationResult, known: dict[str, tuple[str, int]]) -> dict[str, Any]:
        """Called once the report is written, with ``(sha256, bytes)`` of every artifact written;
        returns extra metadata for the validation asset."""
        return {}

    def payload_name(self, context: dg.AssetExecutionContext, settings: KvonceSettings, source: Path) -> str:
        """How a failed run's message names the payload (the default: the path the step read, or the URL
        whose private copy it read)."""
        return settings.payload_label(source)

    def explain(self, context: dg.AssetExecutionContext, settings: KvonceSettings,
                error: InputError) -> InputError:
        """The error as the user should read it (the default: as raised)."""
        return error

    def release(self, context: dg.AssetExecutionContext, settings: KvonceSettings) -> None:
        """The step is over, however it ended: drop what was held for it (the default: nothing)."""

    def unusable(self, context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path,
                 error: InputError) -> None:
        """Called after an unusable input's report is written, before the step fails."""


NO_HOOKS = ConformanceHooks()


def default_payload(context: dg.AssetExecutionContext, settings: KvonceSettings) -> Path:
    return settings.resolve_payload()


def default_output(context: dg.AssetExecutionContext, settings: KvonceSettings) -> Path:
    return settings.trace_dir()


def _file_metadata(written: stages.Written, settings: KvonceSettings) -> dict[str, Any]:
    """Where the artifact is (its published URL when the reports go to one), its sha256 and size."""
    return {"path": dg.MetadataValue.path(settings.published_name(written.path)), "sha256": written.sha256,
            "bytes": written.size}


def _schema_check(name: str, asset_key: dg.AssetKey, outcome: schemas.SchemaOutcome) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {"rows": outcome.rows, "failure_cases": outcome.failure_count}
    if outcome.failure_markdown:
        metadata["failures"] = dg.MetadataValue.md(outcome.failure_markdown)
    return dg.AssetCheckResult(check_name=name, asset_key=asset_key, passed=outcome.passed,
                               severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)


def _input_failure(error: InputError, out_dir: Path, hooks: ConformanceHooks = NO_HOOKS,
                   context: dg.AssetExecutionContext | None = None,
                   settings: KvonceSettings | None = None, source: Path | None = None) -> dg.Failure:
    if context is not None and settings is not None:
        error = hooks.explain(context, settings, settings.input_error(error))
    collected = str(out_dir / artifacts.COLLECTED)
    if source is not None and error.source == collected and str(source) != collected:
        # The pass read our collected copy (a byte copy, or a rewrite that keeps resources, scopes
        # and spans in order): name the file the user gave, and the copy the place is counted in.
        named = settings.payload_label(source) if settings is not None else str(source)
        shown = settings.published_name(collected) if settings is not None else collected
        error = InputError(named, f"{error.message} (read from its collected copy {shown})", where=error.where)
    stages.write_input_error(error, out_dir)
    if context is not None and settings is not None:
        hooks.unusable(context, settings, out_dir, error)
    return dg.Failure(description=f"unusable input: {error}",
                      metadata={"verdict": "unusable", "source": error.source, "where": error.where or "",
                                "message": error.message})


def _observed(stream: Iterable[events.Event], observer: EventObserver) -> Iterator[events.Event]:
    """``stream`` unchanged, each event shown to ``observer`` on the way into the writers."""
    observe = observer.observe
    for index, event in enumerate(stream):
        observe(index, event)
        yield event


class _SchemaChecks:
    """The collected and per-key Pandera checks: in the schema worker when one runs, else here.

    A worker that fails (it should not) costs only time: the check is then run in this process,
    so a check result never depends on the worker.
    """

    def __init__(self, collected: Path, worker: SchemaWorker | None) -> None:
        self._path = collected
        self._worker = worker
        self._collected: schemas.CollectedOutcome | None = None
        self._projection: tuple[Path, dict[str, Any]] | None = None

    def collected(self) -> schemas.CollectedOutcome:
        """Raises ``orjson.JSONDecodeError`` when the collected file is not JSON."""
        if self._collected is None:
            if self._worker is not None:
                try:
                    self._collected = self._worker.collected()
                except SchemaWorkerError:
                    self._stop_worker()
            if self._collected is None:
                self._collected = schemas.check_collected_file(self._path)
        return self._collected

    def request_projection(self, path: Path, stats: dict[str, Any]) -> None:
        self._projection = (path, stats)
        if self._worker is not None:
            try:
                self._worker.request_projection(path, stats)
            except SchemaWorkerError:
                self._stop_worker()

    def projection(self) -> schemas.SchemaOutcome:
        assert self._projection is not None
        if self._worker is not None:
            try:
                return self._worker.projection()
            except SchemaWorkerError:
                self._stop_worker()
        return schemas.check_projection_file(*self._projection)

    def retarget(self, collected: Path) -> None:
        """Check ``collected`` instead, in this process (the worker was reading the source, and the
        copy turned out to be a rewrite of it)."""
        self._stop_worker()
        self._path = collected
        self._collected = None

    def close(self) -> None:
        self._stop_worker()

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


class _Clock:
    """Wall time per phase of the step, logged once at the end: where a slow run spent its time."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), time.process_time())
        self.laps: list[tuple[str, float, float]] = []

    def lap(self, name: str) -> None:
        now = (time.monotonic(), time.process_time())
        self.laps.append((name, now[0] - self._last[0], now[1] - self._last[1]))
        self._last = now

    def __str__(self) -> str:
        """``phase wall s (cpu s)``: the CPU time is this process's, all its threads."""
        return ", ".join(f"{name} {wall:.1f}s ({cpu:.1f}s cpu)" for name, wall, cpu in self.laps)


@dataclass(frozen=True)
class _Pass:
    """What the one pass produced, for the four materializations."""

    collected: collect.Collected
    trace_summary: dict[str, Any]
    artifacts: stages.ArtifactsResult
    validation: stages.ValidationResult
    events_outcome: schemas.SchemaOutcome
    projection_outcome: schemas.SchemaOutcome


def _check_specs(keys: dict[str, dg.AssetKey],
                 partitions_def: dg.PartitionsDefinition | None) -> list[dg.AssetCheckSpec]:
    """The five blocking checks; in a partitioned graph each check is partitioned like its asset.

    An unpartitioned check on a partitioned asset records evaluations without a partition, so
    the UI shows whichever payload ran last as the check's status (a violating payload turned
    green when a valid one came after it). A partitioned check keeps one status per partition:
    the Checks tab colours each payload, and the asset's check summary is red while any
    partition's verdict is. Dagster 1.13 marks ``partitions_def`` on a check spec as a preview;
    its warning says nothing a user can act on, so it is not shown on every code load.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(name, asset=keys[asset], blocking=True, description=description,
                              partitions_def=partitions_def)
            for name, asset, description in (
                ("collected_schema", COLLECTED,
                 "Pandera: span ids are hex, times are integers, at least one kvonce span"),
                ("events_schema", EVENTS, "Pandera: ISO timestamps, time order, trace id and actor set"),
                ("projection_schema", PROJECTION, "Pandera: per-key counts non-negative and consistent with stats"),
                ("validation_schema", VALIDATION, "Pandera: known rule ids and severities, indexes in range"),
                ("kvonce_conformance", VALIDATION, "The verdict: fails (ERROR) when the trace violates KvOnce"),
            )
        ]


def build_conformance_assets(
    *,
    key_prefix: Sequence[str] = (),
    partitions_def: dg.PartitionsDefinition | None = None,
    group_name: str = "kvonce",
    payload_for: PayloadLocator = default_payload,
    output_for: OutputLocator = default_output,
    hooks: ConformanceHooks = NO_HOOKS,
    parallel: bool | None = None,
) -> list[dg.AssetsDefinition]:
    """The four stage assets under ``key_prefix``, as one multi-asset; ``hooks`` adds a variant's behaviour.

    ``parallel`` is the pass's projection worker and, with it, the schema worker: None decides by
    input size and cores as the CLI does (:func:`kvonce_pipeline.domains.kvonce.own_pass.conformance.use_parallel`); the
    artifacts and check results are the same either way.
    """
    prefix = list(key_prefix)
    keys = {name: dg.AssetKey([*prefix, name]) for name in ASSET_NAMES}
    versions = {name: hooks.code_version(name, base) for name, base in CODE_VERSIONS.items()}

    def spec(name: str, deps: Sequence[str], kind: str, description: str) -> dg.AssetSpec:
        return dg.AssetSpec(keys[name], deps=[keys[d] for d in deps], code_version=versions[name],
                            description=description, kinds={"python", kind}, group_name=group_name,
                            skippable=hooks.may_skip)

    specs = [
        spec(COLLECTED, [], "json",
             "The payload as collected, always as spec OTLP/JSON (collected-kvonce-otlp.json)."),
        spec(EVENTS, [COLLECTED], "ndjson", "The KvOnce events, in time order (kvonce-events.ndjson)."),
        spec(PROJECTION, [EVENTS], "json",
             "Per-key aggregates and the state sequence (kvonce-projection.json, "
             "projected/kvonce-state-sequence.json)."),
        spec(VALIDATION, [EVENTS, PROJECTION], "json",
             "The verdict and findings (kvonce-validation.json, kvonce-summary.md)."),
    ]
    check_specs = _check_specs(keys, partitions_def)

    @dg.multi_asset(
        name="__".join([*prefix, STEP_NAME]),
        specs=specs,
        check_specs=check_specs,
        can_subset=hooks.may_skip,
        partitions_def=partitions_def,
        description="Collect the payload, then one pass over its events writes events, projection, state "
                    "sequence and report (as `kvonce conformance` does); materializes all four assets.",
    )
    def conformance_pass(context: dg.AssetExecutionContext, kvonce: KvonceSettings) -> Iterator[Any]:
        if hooks.may_skip and set(context.selected_asset_keys) != set(keys.values()):
            # subsettable only so that its outputs may be absent: one pass writes every file
            raise dg.Failure(description="the KvOnce graph is materialized as a whole: select all of "
                                         f"{', '.join(k.to_user_string() for k in keys.values())}",
                             allow_retries=False)
        yield from _run(context, kvonce, keys=keys, hooks=hooks, payload_for=payload_for, output_for=output_for,
                        parallel=parallel)

    return [conformance_pass]


#: What the step publishes to a reports URL, in order: the collected copy, then the CLI's artifacts with
#: the validation report last (the commit point, see docs/storage.md).
PUBLISHED = (artifacts.COLLECTED, *artifacts.PUBLISH_ORDER)


def _run(context: dg.AssetExecutionContext, settings: KvonceSettings, *, keys: dict[str, dg.AssetKey],
         hooks: ConformanceHooks, payload_for: PayloadLocator, output_for: OutputLocator,
         parallel: bool | None) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult | dg.AssetObservation]:
    try:
        step = _step(context, settings, keys=keys, hooks=hooks, payload_for=payload_for,
                     output_for=output_for, parallel=parallel)
        if settings.reports_url() is None or not hooks.publishes:
            yield from step
        else:
            yield from published_step(context, settings, step,
                                      lambda: output_for(context, settings), hooks.published())
    except ConfigError as error:  # a reports URL whose backend is not installed
        raise dg.Failure(description=str(error), metadata={"verdict": "unusable"}, allow_retries=False) from None
    finally:
        hooks.release(context, settings)


def published_step(context: dg.AssetExecutionContext, settings: KvonceSettings, step: Iterator[Any],
                   folder: Callable[[], Path], names: Sequence[str]) -> Iterator[Any]:
    """``step``'s events, held back until its files in ``folder()`` are published to the reports URL.

    Why held back: a materialization records its file's URL, so it is recorded only once the object is
    there. Published whatever the step's end: a violation or an unusable input still publishes its
    report, then fails as it would have; a store that refuses a write fails the step (exit 2 in
    ``run_verdict``, as ``kvonce conformance`` exits for a store's error), naming the object.
    """
    held: list[Any] = []
    try:
        publish_after(context, settings, folder, names, lambda: held.extend(step))
    except dg.Failure:
        yield from held
        raise
    yield from held


R = TypeVar("R")


def publish_after(context: dg.AssetExecutionContext | dg.OpExecutionContext, settings: KvonceSettings,
                  folder: Callable[[], Path],
                  names: Sequence[str], run: Callable[[], R]) -> R:
    """``run()``, then its files ``names`` in ``folder()`` published to the reports URL (see
    :func:`published_step`), also when ``run`` failed (``dg.Failure``: a verdict or an unusable input)."""
    failure: dg.Failure | None = None
    try:
        result = run()
    except dg.Failure as error:
        failure = error
    try:
        url = settings.publish(folder(), tuple(names))
    except OutputError as error:
        raise dg.Failure(description=f"reports not published: {error}" +
                         (f" (the step had failed: {failure.description})" if failure is not None else ""),
                         metadata={"verdict": "storage"}, allow_retries=False) from failure
    context.log.info(f"published {', '.join(names)} to {url}")
    if failure is not None:
        raise failure
    return result


def _step(context: dg.AssetExecutionContext, settings: KvonceSettings, *, keys: dict[str, dg.AssetKey],
          hooks: ConformanceHooks, payload_for: PayloadLocator, output_for: OutputLocator,
          parallel: bool | None) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult | dg.AssetObservation]:
    """The step: collect, one pass, the checks, then the four materializations in graph order."""
    out_dir = output_for(context, settings)
    clock = _Clock()
    try:
        source = payload_for(context, settings)
        absent = hooks.absent(context, settings, source, out_dir)
        if absent is not None:
            context.log.info(f"nothing to check for KvOnce: {absent}; nothing materialized")
            for key in keys.values():  # each asset's history says why this run left it alone
                yield dg.AssetObservation(asset_key=key, metadata={"skipped": absent,
                                                                       "source": hooks.payload_name(context, settings, source)})
            return
        context.log.info(f"collecting {hooks.payload_name(context, settings, source)}")
        use_parallel = conformance.use_parallel(source, parallel)
        collecting = _Collecting(source, out_dir / artifacts.COLLECTED, settings, use_worker=use_parallel)
    except InputError as error:
        raise _input_failure(error, out_dir, hooks, context, settings) from None
    checks = _SchemaChecks(collecting.read_path, SchemaWorker.check(collecting.read_path) if use_parallel else None)
    try:
        try:
            done = _one_pass(context, settings, out_dir, source, collecting, checks, hooks, use_parallel, clock)
        except InputError as error:
            # What the four steps did: a payload that cannot be collected fails with that; else the
            # collected copy is recorded (with its check) before the failure, and a payload the
            # collected check rejects fails with that check's reason.
            try:
                collected = collecting.result()
            except InputError as collect_error:
                raise _input_failure(collect_error, out_dir, hooks, context, settings, source) from None
            finally:
                collecting.close()
            spans = _collected_or_none(checks)
            unusable = None if spans is None else hooks.check_collected(source, spans.spans, spans.kvonce_spans)
            if spans is not None and unusable is None:
                yield _collected_result(context, settings, keys, hooks, source, collected, spans)
            raise _input_failure(unusable or error, out_dir, hooks, context, settings, source) from None
        collected = done.collected
        try:
            spans = checks.collected()
        except orjson.JSONDecodeError as exc:  # the pass read it, so this is not expected
            raise _input_failure(InputError(str(source), f"not valid JSON ({exc})"), out_dir, hooks, context,
                                 settings) from None
        clock.lap("collected check (wait)")
    finally:
        checks.close()
        collecting.close()
    context.log.info(f"step timings: {clock}")
    unusable = hooks.check_collected(source, spans.spans, spans.kvonce_spans)
    if unusable is not None:
        raise _input_failure(unusable, out_dir, hooks, context, settings, source)
    yield _collected_result(context, settings, keys, hooks, source, collected, spans)
    yield from _stage_results(context, settings, keys, hooks, out_dir, collected, done)


class _Collecting:
    """``collect.collect_payload``, in a worker process while the pass reads the source, when safe.

    A spec OTLP/JSON payload is copied byte for byte, so its source has the copy's events; and
    the copy of hundreds of megabytes (scanned for names to normalize, hashed, fsynced: about 3 s
    of CPU and more of disk on the 1M trace) needs nothing from the pass. So when the pass is
    parallel (a large input) and the payload is an uncompressed OTLP/JSON document, a worker
    makes the copy at low priority while this process decodes the source and writes the
    artifacts; :func:`_one_pass` then takes the copy, and if it is a rewrite after all (a lenient
    document put in spec form) it runs again on the copy: the events always come from what the
    copy holds. Any other payload is collected first, here, and the pass reads the copy.
    """

    def __init__(self, source: Path, destination: Path, settings: KvonceSettings, use_worker: bool) -> None:
        self.source = source
        self._destination = destination
        self._settings = settings
        self._result: collect.Collected | None = None
        self._error: InputError | OutputError | None = None
        self._worker: SchemaWorker | None = None
        detected, compressed = reader.detect_format(source, hint=settings.input_format, limits=settings.limits())
        #: as ``collect_payload`` detects them (the same call), known before the copy is done
        self.format, self.compressed = detected, compressed
        self.in_background = use_worker and detected is reader.InputFormat.OTLP_JSON and not compressed
        if self.in_background:
            self._worker = SchemaWorker.collect(source, destination, settings.input_format)
            self.read_path, self.read_hint = source, settings.input_format
        else:
            self._result = self._copy()
            self.read_path, self.read_hint = self._result.path, "auto"

    def _copy(self) -> collect.Collected:
        return collect.collect_payload(self.source, self._destination, format=self._settings.input_format,
                                       limits=self._settings.limits(), render_log=render_event_log)

    def result(self) -> collect.Collected:
        """The copy (waits for it); raises what collecting raised (``InputError`` for an unusable payload)."""
        if self._error is not None:
            raise self._error
        if self._result is None:
            assert self._worker is not None
            try:
                try:
                    self._result = self._worker.copy()
                except SchemaWorkerError:  # only time is lost: collect here
                    self.close()
                    self._result = self._copy()
            except (InputError, OutputError) as error:
                self._error = error
                raise
            finally:
                self.close()
        return self._result

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


def _collected_or_none(checks: _SchemaChecks) -> schemas.CollectedOutcome | None:
    try:
        return checks.collected()
    except (orjson.JSONDecodeError, OSError):
        return None


@dataclass
class _Read:
    """One pass over one file: what it wrote and what the checks read from it."""

    trace_summary: dict[str, Any]
    written: stages.ArtifactsResult
    observer: EventObserver | None
    listed: list[events.Event] | None
    columns: stages.EventColumns | None


def _write_pass(context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path, path: Path, hint: str,
                collecting: _Collecting, hooks: ConformanceHooks, use_parallel: bool, clock: _Clock) -> _Read:
    """Decode ``path`` and write every artifact, as the CLI does (:func:`conformance.run_conformance`).

    The events reach ``write_artifacts`` as the CLI hands them over: the reader's list when the
    document was held whole (always, for a collected payload: a single OTLP/JSON document), with
    the worker that was fed them while they were decoded (or a forked projection child that
    shares the list, when the feed was void). The ``events_schema`` columns and the variant's observer
    then read that list; from a stream they are taps on the way into the writers instead.
    """
    observer = hooks.observer(context, settings)
    columns: stages.EventColumns | None = None
    limits = settings.limits()
    with conformance.whole_document_feed(path, out_dir, format=hint, limits=limits, parallel=use_parallel) as feed, \
            kvonce_reader.open_trace(path, format=hint, limits=limits, spill_dir=out_dir, sort_on_disk=True,
                              tap=feed.tap, detected=feed.detected) as trace:
        clock.lap("decode")
        progress = log_progress(context.log)  # its rates count from here, where the writing starts

        def report_progress(stage: str, done: int, total: int | None) -> None:
            """As the CLI reports it, to the run's log at most every ten seconds."""
            fraction = trace.fraction() if trace.fraction is not None else None
            progress(stage, done, total if total is not None else int(done / fraction) if fraction else None)

        def input_summary() -> dict[str, Any]:
            """As the four steps recorded it: the source as given, its format, the events as read."""
            read = trace.summary()
            return {"source": hooks.payload_name(context, settings, collecting.source),
                    "format": collecting.format.value,
                    "compressed": collecting.compressed,
                    "events": read["events"], "spans": read["spans"], "skippedSpans": read["skippedSpans"],
                    "reordered": read["reordered"], "warnings": read["warnings"]}

        listed = trace.listed
        stream: Iterable[events.Event]
        if listed is not None:  # as conformance._streamed: the list itself
            trace.count = len(listed)
            if not listed:
                next(trace.events, None)  # raises "no kvonce events", naming the spans seen
            if observer is not None:
                for index, event in enumerate(listed):
                    observer.observe(index, event)
            stream = listed
        else:
            columns = stages.EventColumns()
            stream = columns.tap(trace.events)
            if observer is not None:
                stream = _observed(stream, observer)
        context.log.info(f"decoded {path}; writing the artifacts")
        written = stages.write_artifacts(stream, out_dir, max_retries=settings.max_retries, strict=settings.strict,
                                         input_summary=input_summary, progress=report_progress,
                                         parallel=use_parallel, fed=feed.handoff(listed))
    clock.lap("pass")
    return _Read(trace.summary(), written, observer, listed, columns)


def _one_pass(context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path, source: Path,
              collecting: _Collecting, checks: _SchemaChecks, hooks: ConformanceHooks,
              use_parallel: bool, clock: _Clock) -> _Pass:
    """The CLI's pass over the collected payload, then the checks that need what it wrote.

    The pass reads the source while a worker copies it, when that copy is a byte copy (see
    :class:`_Collecting`); the copy is awaited after the events check (the step has nothing
    else to do by then). The copy's own error, if collecting fails, comes first, as it did when
    collecting came first, and a copy that is a rewrite is read again by a second pass.
    """
    path, hint = collecting.read_path, collecting.read_hint
    while True:
        try:
            read = _write_pass(context, settings, out_dir, path, hint, collecting, hooks, use_parallel, clock)
        except InputError:
            collected = collecting.result()  # raises the copy's error first
            if path == collected.path or not collected.converted:
                raise
        else:
            written = read.written
            stats = written.projection.projection["stats"]
            in_memory = "perKey" in written.projection.projection
            if not in_memory:  # the worker checks the per-key table while this process checks the events
                checks.request_projection(written.projection.projection_file.path, stats)
            events_outcome = _events_outcome(read)
            clock.lap("events check")
            collected = collecting.result()
            clock.lap("copy (wait)")
            if path == collected.path or not collected.converted:
                break
        path, hint = collected.path, "auto"  # a rewrite, not a copy: its events are the ones to judge
        checks.retarget(collected.path)
    if in_memory:
        with stages.gc_paused():
            projection_outcome = schemas.check_frame(schemas.projection_schema(stats),
                                                     schemas.per_key_frame(written.projection.projection))
    else:
        projection_outcome = checks.projection()
    clock.lap("projection check (wait)")
    judged = hooks.judge(context, settings, out_dir, written.validation, read.observer, projection_stats=stats)
    return _Pass(collected, read.trace_summary, written, judged, events_outcome, projection_outcome)


def _events_outcome(read: _Read) -> schemas.SchemaOutcome:
    """The ``events_schema`` check of the pass's events (their columns; the list is let go after)."""
    with stages.gc_paused():
        if read.listed is not None:
            listed = read.listed
            frame = schemas.event_columns_frame([e.time_unix_nano for e in listed], [e.type for e in listed],
                                                [e.key for e in listed], [e.trace_id for e in listed],
                                                [e.actor for e in listed])
            del listed
        else:
            assert read.columns is not None
            columns = read.columns
            frame = schemas.event_columns_frame(columns.times, columns.types, columns.keys, columns.trace_ids,
                                                columns.actors)
        read.listed = read.columns = None
        return schemas.check_frame(schemas.events_schema, frame)


def _collected_result(context: dg.AssetExecutionContext, settings: KvonceSettings, keys: dict[str, dg.AssetKey],
                      hooks: ConformanceHooks, source: Path, collected: collect.Collected,
                      spans: schemas.CollectedOutcome) -> dg.MaterializeResult:
    # a spec OTLP/JSON payload is copied byte for byte: its sha256 is the copy's
    source_sha = collected.sha256 if not collected.converted else stages_sha(source)
    return dg.MaterializeResult(
        asset_key=keys[COLLECTED],
        metadata={
            **hooks.lineage(context, settings, COLLECTED),
            "path": dg.MetadataValue.path(settings.published_name(collected.path)),
            "sha256": collected.sha256,
            "bytes": collected.size,
            "source_path": dg.MetadataValue.path(hooks.payload_name(context, settings, source)),
            "source_sha256": source_sha,
            "source_bytes": source.stat().st_size,
            "source_format": collected.format.value,
            "source_compressed": collected.compressed,
            "converted": collected.converted,
            "spans": spans.spans,
            "kvonce_spans": spans.kvonce_spans,
        },
        data_version=dg.DataVersion(collected.sha256),
        check_results=[_schema_check("collected_schema", keys[COLLECTED], spans.outcome)],
    )


def _stage_results(context: dg.AssetExecutionContext, settings: KvonceSettings, keys: dict[str, dg.AssetKey],
                   hooks: ConformanceHooks, out_dir: Path, collected: collect.Collected,
                   done: _Pass) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The events, projection and validation materializations, with their checks."""
    summary = done.trace_summary
    events_file = done.artifacts.events_file
    yield dg.MaterializeResult(
        asset_key=keys[EVENTS],
        metadata={
            **hooks.lineage(context, settings, EVENTS),
            **_file_metadata(events_file, settings),
            "dagster/row_count": summary["events"],
            "spans": summary["spans"],
            "skipped_spans": summary["skippedSpans"],
            "reordered": summary["reordered"],
            "warnings": dg.MetadataValue.json(summary["warnings"]),
        },
        data_version=dg.DataVersion(events_file.sha256),
        check_results=[_schema_check("events_schema", keys[EVENTS], done.events_outcome)],
    )

    projected = done.artifacts.projection
    stats = projected.projection["stats"]
    yield dg.MaterializeResult(
        asset_key=keys[PROJECTION],
        metadata={
            **hooks.lineage(context, settings, PROJECTION),
            **_file_metadata(projected.projection_file, settings),
            "state_sequence_path": dg.MetadataValue.path(settings.published_name(projected.state_sequence_file.path)),
            "state_sequence_sha256": projected.state_sequence_file.sha256,
            "dagster/row_count": stats["uniqueKeys"],
            "events": stats["totalEvents"],
            "stats": dg.MetadataValue.json(stats),
        },
        data_version=dg.DataVersion(projected.projection_file.sha256),
        check_results=[_schema_check("projection_schema", keys[PROJECTION], done.projection_outcome)],
    )

    result = done.validation
    known = {
        artifacts.COLLECTED: (collected.sha256, collected.size),
        artifacts.EVENTS: (events_file.sha256, events_file.size),
        artifacts.PROJECTION: (projected.projection_file.sha256, projected.projection_file.size),
        artifacts.STATE_SEQUENCE: (projected.state_sequence_file.sha256, projected.state_sequence_file.size),
        artifacts.VALIDATION: (result.validation_file.sha256, result.validation_file.size),
        artifacts.SUMMARY: (result.summary_file.sha256, result.summary_file.size),
    }
    extra = hooks.validated(context, settings, out_dir, result, known)
    report = result.report
    counts = report["summary"]
    outcome = schemas.check_frame(schemas.validation_schema(report), schemas.issues_frame(report))
    findings = "\n".join(f"- {i['severity']} `{i['type']}` key `{i['key']}` event {i['eventIndex']}: {i['message']}"
                         for i in report["issues"][:20]) or "none"
    verdict = dg.AssetCheckResult(
        check_name="kvonce_conformance",
        asset_key=keys[VALIDATION],
        passed=report["valid"],
        severity=dg.AssetCheckSeverity.ERROR,
        description="valid" if report["valid"] else f"{counts['errors']} KvOnce violation(s)",
        metadata={"errors": counts["errors"], "warnings": counts["warnings"],
                  "by_rule": dg.MetadataValue.json(counts["byRule"]),
                  "findings": dg.MetadataValue.md(findings)},
    )
    checks = [_schema_check("validation_schema", keys[VALIDATION], outcome), verdict]
    metadata = {
        **hooks.lineage(context, settings, VALIDATION),
        **extra,
        **_file_metadata(result.validation_file, settings),
        "summary_path": dg.MetadataValue.path(settings.published_name(result.summary_file.path)),
        "summary_sha256": result.summary_file.sha256,
        "valid": report["valid"],
        "strict": report["strict"],
        "errors": counts["errors"],
        "warnings": counts["warnings"],
        "dagster/row_count": len(report["issues"]),
        "summary": dg.MetadataValue.md(result.summary_file.path.read_text()),
    }
    if not report["valid"]:
        # The verdict is the failed materialization of this asset (partition), not a report
        # recorded as materialized with a red check beside it: see :class:`Violations`.
        yield from checks
        payload = hooks.payload_name(context, settings, collected.source)
        raise Violations(report, payload, settings.published_name(result.summary_file.path), metadata,
                         settings.published_name(result.validation_file.path))
    yield dg.MaterializeResult(
        asset_key=keys[VALIDATION],
        metadata=metadata,
        data_version=dg.DataVersion(result.validation_file.sha256),
        check_results=checks,
    )


#: Findings listed in a failed run's message (the summary lists more, the report all of them).
VERDICT_FINDINGS = 10


def _cell(value: Any) -> str:
    """One Markdown table cell: no pipe, no newline, at most 120 characters."""
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 120 else text[:119] + "…"


def verdict_message(report: dict[str, Any], payload: str, summary_path: Path | str,
                    validation_path: Path | str | None = None, label: str = "") -> str:
    """``N violations in <payload>:`` and a table of the first findings: what a failed run says first
    (``label``: the domain's, for every domain but KvOnce, ``N Inventory violations in ...``).

    It is the message of the step's failure, so it is what the run page, ``dagster job execute``
    and ``make run`` show, rather than the framework's "blocking asset check failed" and its stack.
    """
    errors = report["summary"]["errors"]
    issues = report["issues"]
    what = f"{label} violation" if label else "violation"
    lines = [f"{errors} {what}{'' if errors == 1 else 's'} in {payload}:", "",
             "| severity | rule | key | event | where | trace / span | message |", "|---|---|---|---|---|---|---|"]
    for issue in issues[:VERDICT_FINDINGS]:
        ids = f"{issue['traceId']} / {issue.get('spanId', '')}" if issue.get("traceId") else ""
        lines.append(f"| {issue['severity']} | {issue['type']} | {_cell(issue.get('key'))} | "
                     f"{issue.get('eventIndex', '')} | {_cell(where_of(issue))} | {ids} | {_cell(issue['message'])} |")
    if len(issues) > VERDICT_FINDINGS:
        lines += ["", f"... and {len(issues) - VERDICT_FINDINGS} more findings in {summary_path} "
                      f"(all of them in {validation_path or Path(summary_path).with_name(artifacts.VALIDATION)})"]
    return "\n".join(lines)


class Violations(dg.Failure):
    """The payload violates KvOnce: the step fails with the verdict, and the report is not materialized.

    Why not materialize the report and let the blocking ``kvonce_conformance`` check fail the
    step, as a check is meant to? Because Dagster 1.13's UI colours a partition only by its
    materialization: the partitions bar in the lineage, the Partitions tab ("Failed (N)") and
    the catalog count a partition as failed when the run that planned its materialization
    failed without recording one (``build_failed_and_in_progress_partition_subset``). Checks are
    shown beside it (a partitioned check has its own per-partition bar in the Checks tab), not in
    it. So a violating payload whose report was materialized stayed green on its partition. The
    report and summary are still written (the envelope and metadata below name them, with
    their sha256), and the run's failure message is the verdict itself, with the first findings.
    """

    def __init__(self, report: dict[str, Any], payload: str, summary_path: Path | str,
                 metadata: dict[str, Any], validation_path: Path | str | None = None) -> None:
        self.report = report
        super().__init__(description=verdict_message(report, payload, summary_path, validation_path),
                         metadata={"verdict": "violations", **metadata}, allow_retries=False)


def stages_sha(path: Path) -> str:
    from ...engine.atomic import sha256_file

    try:
        return sha256_file(path)
    except FileNotFoundError:
        raise InputError(str(path), "no such file") from None
    except IsADirectoryError:
        raise InputError(str(path), "is a directory, not a trace file") from None
    except OSError as exc:
        raise InputError(str(path), f"cannot read: {exc.strerror or exc}") from None
