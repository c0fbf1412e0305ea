"""The conformance graph: collected payload -> events -> projection -> validation.

Built by a factory so the same graph exists twice: unpartitioned for the CI job and the UI, and
(with a key prefix and dynamic partitions) once per dropped payload. Each asset writes its own
artifact through the core and returns its path, sha256 and counts as metadata, with the sha256 as
its data version, so lineage and staleness show in the UI. Schema checks run inside the asset on
the data already in memory; they are blocking, as is the verdict.
"""

import gc
import hashlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import orjson

from .. import artifacts, collect, events, mapping, ndjson, otlp_json, otlp_proto, projection, reader
from .. import schemas, stages, validation
from ..errors import InputError
from ..progress import log_progress
from .resources import KvonceSettings

PayloadLocator = Callable[[dg.AssetExecutionContext, KvonceSettings], Path]
OutputLocator = Callable[[dg.AssetExecutionContext, KvonceSettings], Path]


def _code_version(*modules: Any) -> str:
    """A hash of the code that shapes an artifact: changes to it mark the asset stale, nothing else does."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:12]


_DECODE = (reader, events, mapping, ndjson, otlp_json, otlp_proto)
CODE_VERSIONS = {
    "collected_kvonce_otlp": _code_version(collect, *_DECODE),
    "kvonce_events": _code_version(stages, *_DECODE),
    "kvonce_projection": _code_version(projection, stages, ndjson, events),
    "kvonce_validation": _code_version(validation, stages, ndjson, events),
}


class ConformanceHooks:
    """What a variant of the graph adds to the stages; this base class adds nothing (the CI job).

    The drop-folder variant (:mod:`kvonce_pipeline.orchestration.drop_assets`) uses it to put the
    source's lineage on every materialization, to judge a payload against the cumulative store and
    to write the partition's envelope, without a second copy of the stage code.
    """

    def code_version(self, asset_name: str, base: str) -> str:
        """The asset's code version; a variant that runs more code folds that code in."""
        return base

    def lineage(self, context: dg.AssetExecutionContext, settings: KvonceSettings) -> dict[str, Any]:
        """Metadata put on every materialization of the graph (source file, run, code version)."""
        return {}

    def judge(self, context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path,
              stream: Iterable[events.Event], *, input_summary: dict[str, Any],
              projection_stats: dict[str, Any] | None) -> stages.ValidationResult:
        """Validate the events and write the report files (the default: the payload on its own)."""
        return stages.write_validation(stream, out_dir, max_retries=settings.max_retries, strict=settings.strict,
                                       input_summary=input_summary, projection_stats=projection_stats)

    def check_collected(self, source: Path, spans: int, kvonce_spans: int) -> InputError | None:
        """An input error to fail with once the payload is collected (the default: leave it to the checks)."""
        return None

    def validated(self, context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path,
                  result: stages.ValidationResult) -> dict[str, Any]:
        """Called once the report is written; returns extra metadata for the validation asset."""
        return {}

    def explain(self, context: dg.AssetExecutionContext, settings: KvonceSettings,
                error: InputError) -> InputError:
        """The error as the user should read it (the default: as raised)."""
        return error

    def unusable(self, context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path,
                 error: InputError) -> None:
        """Called after an unusable input's report is written, before the step fails."""


NO_HOOKS = ConformanceHooks()


def default_payload(context: dg.AssetExecutionContext, settings: KvonceSettings) -> Path:
    return settings.resolve_payload()


def default_output(context: dg.AssetExecutionContext, settings: KvonceSettings) -> Path:
    return settings.trace_dir()


def _file_metadata(written: stages.Written) -> dict[str, Any]:
    return {"path": dg.MetadataValue.path(str(written.path)), "sha256": written.sha256, "bytes": written.size}


def _schema_check(name: str, asset_key: dg.AssetKey, outcome: schemas.SchemaOutcome) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {"rows": outcome.rows, "failure_cases": outcome.failure_count}
    if outcome.failure_markdown:
        metadata["failures"] = dg.MetadataValue.md(outcome.failure_markdown)
    return dg.AssetCheckResult(check_name=name, asset_key=asset_key, passed=outcome.passed,
                               severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)


def _latest_metadata(context: dg.AssetExecutionContext, key: dg.AssetKey) -> dict[str, Any]:
    """Metadata of the upstream materialization for this partition (how stages pass small facts)."""
    partition = context.partition_key if context.has_partition_key else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records:
        return {}
    materialization = records[0].asset_materialization
    return {name: value.value for name, value in (materialization.metadata if materialization else {}).items()}


def _input_failure(error: InputError, out_dir: Path, hooks: ConformanceHooks = NO_HOOKS,
                   context: dg.AssetExecutionContext | None = None,
                   settings: KvonceSettings | None = None) -> dg.Failure:
    if context is not None and settings is not None:
        error = hooks.explain(context, settings, error)
    stages.write_input_error(error, out_dir)
    if context is not None and settings is not None:
        hooks.unusable(context, settings, out_dir, error)
    return dg.Failure(description=f"unusable input: {error}",
                      metadata={"source": error.source, "where": error.where or "", "message": error.message})


def build_conformance_assets(
    *,
    key_prefix: Sequence[str] = (),
    partitions_def: dg.PartitionsDefinition | None = None,
    group_name: str = "kvonce",
    payload_for: PayloadLocator = default_payload,
    output_for: OutputLocator = default_output,
    hooks: ConformanceHooks = NO_HOOKS,
) -> list[dg.AssetsDefinition]:
    """The four stage assets under ``key_prefix``; ``hooks`` adds a variant's extra behaviour."""
    prefix = list(key_prefix)
    keys = {name: dg.AssetKey([*prefix, name]) for name in CODE_VERSIONS}
    versions = {name: hooks.code_version(name, base) for name, base in CODE_VERSIONS.items()}
    common = {"partitions_def": partitions_def, "group_name": group_name}

    @dg.asset(
        key=keys["collected_kvonce_otlp"],
        code_version=versions["collected_kvonce_otlp"],
        check_specs=[dg.AssetCheckSpec("collected_schema", asset=keys["collected_kvonce_otlp"], blocking=True,
                                       description="Pandera: span ids are hex, times are integers, "
                                                   "at least one kvonce span")],
        description="The payload as collected, always as spec OTLP/JSON (collected-kvonce-otlp.json).",
        kinds={"python", "json"},
        **common,
    )
    def collected_kvonce_otlp(context: dg.AssetExecutionContext, kvonce: KvonceSettings) -> dg.MaterializeResult:
        out_dir = output_for(context, kvonce)
        try:
            source = payload_for(context, kvonce)
            context.log.info(f"collecting {source}")
            source_sha = stages_sha(source)
            result = collect.collect_payload(source, out_dir / artifacts.COLLECTED, format=kvonce.input_format,
                                             limits=kvonce.limits())
        except InputError as error:
            raise _input_failure(error, out_dir, hooks, context, kvonce) from None
        gc.disable()
        try:
            request = orjson.loads(result.path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise _input_failure(InputError(str(source), f"not valid JSON ({exc})"), out_dir, hooks, context,
                                 kvonce) from None
        finally:
            gc.enable()
        spans = schemas.spans_frame(request)
        del request
        unusable = hooks.check_collected(source, len(spans), int(spans["isKvonce"].sum()))
        if unusable is not None:
            raise _input_failure(unusable, out_dir, hooks, context, kvonce)
        outcome = schemas.check_frame(schemas.collected_schema, spans)
        return dg.MaterializeResult(
            metadata={
                **hooks.lineage(context, kvonce),
                "path": dg.MetadataValue.path(str(result.path)),
                "sha256": result.sha256,
                "bytes": result.size,
                "source_path": dg.MetadataValue.path(str(source)),
                "source_sha256": source_sha,
                "source_bytes": source.stat().st_size,
                "source_format": result.format.value,
                "source_compressed": result.compressed,
                "converted": result.converted,
                "spans": len(spans),
                "kvonce_spans": int(spans["isKvonce"].sum()),
            },
            data_version=dg.DataVersion(result.sha256),
            check_results=[_schema_check("collected_schema", keys["collected_kvonce_otlp"], outcome)],
        )

    @dg.asset(
        key=keys["kvonce_events"],
        deps=[collected_kvonce_otlp],
        code_version=versions["kvonce_events"],
        check_specs=[dg.AssetCheckSpec("events_schema", asset=keys["kvonce_events"], blocking=True,
                                       description="Pandera: ISO timestamps, time order, trace id and actor set")],
        description="The KvOnce events, in time order (kvonce-events.ndjson).",
        kinds={"python", "ndjson"},
        **common,
    )
    def kvonce_events(context: dg.AssetExecutionContext, kvonce: KvonceSettings) -> dg.MaterializeResult:
        out_dir = output_for(context, kvonce)
        columns = stages.EventColumns()
        try:
            # one streamed pass in time order (sorted on disk if it must be): no list of events
            with reader.open_trace(out_dir / artifacts.COLLECTED, limits=kvonce.limits(), spill_dir=out_dir,
                                   sort_on_disk=True) as trace:
                written = stages.write_events(columns.tap(trace.events), out_dir / artifacts.EVENTS,
                                              progress=log_progress(context.log))
        except InputError as error:
            raise _input_failure(error, out_dir, hooks, context, kvonce) from None
        outcome = schemas.check_frame(schemas.events_schema, columns.frame())
        summary = trace.summary()
        return dg.MaterializeResult(
            metadata={
                **hooks.lineage(context, kvonce),
                **_file_metadata(written),
                "dagster/row_count": trace.count,
                "spans": summary["spans"],
                "skipped_spans": summary["skippedSpans"],
                "reordered": summary["reordered"],
                "warnings": dg.MetadataValue.json(summary["warnings"]),
            },
            data_version=dg.DataVersion(written.sha256),
            check_results=[_schema_check("events_schema", keys["kvonce_events"], outcome)],
        )

    @dg.asset(
        key=keys["kvonce_projection"],
        deps=[kvonce_events],
        code_version=versions["kvonce_projection"],
        check_specs=[dg.AssetCheckSpec("projection_schema", asset=keys["kvonce_projection"], blocking=True,
                                       description="Pandera: per-key counts non-negative and consistent with stats")],
        description="Per-key aggregates and the state sequence (kvonce-projection.json, "
                    "projected/kvonce-state-sequence.json).",
        kinds={"python", "json"},
        **common,
    )
    def kvonce_projection(context: dg.AssetExecutionContext, kvonce: KvonceSettings) -> dg.MaterializeResult:
        out_dir = output_for(context, kvonce)
        result = stages.write_projection(stages.read_events_ndjson(out_dir / artifacts.EVENTS, kvonce.limits()),
                                         out_dir, progress=log_progress(context.log))
        stats = result.projection["stats"]
        outcome = schemas.check_frame(schemas.projection_schema(stats), schemas.per_key_frame(result.projection))
        return dg.MaterializeResult(
            metadata={
                **hooks.lineage(context, kvonce),
                **_file_metadata(result.projection_file),
                "state_sequence_path": dg.MetadataValue.path(str(result.state_sequence_file.path)),
                "state_sequence_sha256": result.state_sequence_file.sha256,
                "dagster/row_count": stats["uniqueKeys"],
                "events": stats["totalEvents"],
                "stats": dg.MetadataValue.json(stats),
            },
            data_version=dg.DataVersion(result.projection_file.sha256),
            check_results=[_schema_check("projection_schema", keys["kvonce_projection"], outcome)],
        )

    @dg.asset(
        key=keys["kvonce_validation"],
        deps=[kvonce_events, kvonce_projection],
        code_version=versions["kvonce_validation"],
        check_specs=[
            dg.AssetCheckSpec("validation_schema", asset=keys["kvonce_validation"], blocking=True,
                              description="Pandera: known rule ids and severities, indexes in range"),
            dg.AssetCheckSpec("kvonce_conformance", asset=keys["kvonce_validation"], blocking=True,
                              description="The verdict: fails (ERROR) when the trace violates KvOnce"),
        ],
        description="The verdict and findings (kvonce-validation.json, kvonce-summary.md).",
        kinds={"python", "json"},
        **common,
    )
    def kvonce_validation(context: dg.AssetExecutionContext, kvonce: KvonceSettings) -> dg.MaterializeResult:
        out_dir = output_for(context, kvonce)
        collected_meta = _latest_metadata(context, keys["collected_kvonce_otlp"])
        events_meta = _latest_metadata(context, keys["kvonce_events"])
        projection_meta = _latest_metadata(context, keys["kvonce_projection"])
        input_summary = {
            "source": collected_meta.get("source_path"),
            "format": collected_meta.get("source_format"),
            "compressed": collected_meta.get("source_compressed"),
            "events": events_meta.get("dagster/row_count"),
            "spans": events_meta.get("spans"),
            "skippedSpans": events_meta.get("skipped_spans"),
            "reordered": events_meta.get("reordered"),
            "warnings": events_meta.get("warnings") or [],
        }
        result = hooks.judge(
            context, kvonce, out_dir,
            stages.with_progress(stages.read_events_ndjson(out_dir / artifacts.EVENTS, kvonce.limits()),
                                 log_progress(context.log), "validation"),
            input_summary=input_summary,
            projection_stats=projection_meta.get("stats"),
        )
        extra = hooks.validated(context, kvonce, out_dir, result)
        report = result.report
        summary = report["summary"]
        outcome = schemas.check_frame(schemas.validation_schema(report), schemas.issues_frame(report))
        findings = "\n".join(f"- {i['severity']} `{i['type']}` key `{i['key']}` event {i['eventIndex']}: {i['message']}"
                             for i in report["issues"][:20]) or "none"
        verdict = dg.AssetCheckResult(
            check_name="kvonce_conformance",
            asset_key=keys["kvonce_validation"],
            passed=report["valid"],
            severity=dg.AssetCheckSeverity.ERROR,
            description="valid" if report["valid"] else f"{summary['errors']} KvOnce violation(s)",
            metadata={"errors": summary["errors"], "warnings": summary["warnings"],
                      "by_rule": dg.MetadataValue.json(summary["byRule"]),
                      "findings": dg.MetadataValue.md(findings)},
        )
        return dg.MaterializeResult(
            metadata={
                **hooks.lineage(context, kvonce),
                **extra,
                **_file_metadata(result.validation_file),
                "summary_path": dg.MetadataValue.path(str(result.summary_file.path)),
                "summary_sha256": result.summary_file.sha256,
                "valid": report["valid"],
                "strict": report["strict"],
                "errors": summary["errors"],
                "warnings": summary["warnings"],
                "dagster/row_count": len(report["issues"]),
                "summary": dg.MetadataValue.md(result.summary_file.path.read_text()),
            },
            data_version=dg.DataVersion(result.validation_file.sha256),
            check_results=[_schema_check("validation_schema", keys["kvonce_validation"], outcome), verdict],
        )

    return [collected_kvonce_otlp, kvonce_events, kvonce_projection, kvonce_validation]


def stages_sha(path: Path) -> str:
    from ..atomic import sha256_file

    try:
        return sha256_file(path)
    except FileNotFoundError:
        raise InputError(str(path), "no such file") from None
    except IsADirectoryError:
        raise InputError(str(path), "is a directory, not a trace file") from None
    except OSError as exc:
        raise InputError(str(path), f"cannot read: {exc.strerror or exc}") from None
