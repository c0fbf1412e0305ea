"""The drop-folder variant of the conformance graph, and the cumulative store over it.

``drops/collected_kvonce_otlp -> drops/kvonce_events -> drops/kvonce_projection ->
drops/kvonce_validation`` is the same graph as the CI job's (built by the same factory: one step,
``drops__kvonce_conformance_pass``, that materializes all four), with one dynamic partition per
dropped payload (``<stem>-<12 hex of sha256>``, see
:mod:`kvonce_pipeline.engine.drops`). Artifacts go to ``<reports>/trace/<partition key>/`` under the
default run's file names. ``drops/kvonce_store`` folds every processed payload into the
cross-payload store (:mod:`kvonce_pipeline.domains.kvonce.store`). The other domains' groups on the
same partitions are in :mod:`kvonce_pipeline.orchestration.drops.domains`; a drop's run holds
KvOnce's graph only when the drop carries KvOnce spans (or no other domain's).

With ``KVONCE_REPORTS_DIR`` a URL, each step writes the partition folder in the run's private staging
folder and publishes it to ``<url>/trace/<partition key>/`` (its report last, whatever the verdict);
the key facts of earlier payloads, their events for span ids and the store are read from and written
to the URL (docs/storage.md, "The drop jobs and the cross-payload store").

Lineage: every materialization carries the source file, its sha256, size and arrival time, the run
id and the asset's code version; each partition folder gets ``kvonce-envelope.json``. The judge
against the store needs the payload's key facts: :class:`DropHooks` gathers them while the step's
one pass goes over the events (its observer), so no stage reads the events a second time.
"""


import hashlib
import inspect
import sys
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import dagster as dg
import orjson

from ...engine import drops, storage
from ...domains.kvonce import artifacts
from ...domains.kvonce import envelope
from ...domains.kvonce import store
from ...engine.atomic import write_bytes_atomic
from ...engine.errors import ConfigError, InputError, OutputError
from ...domains.kvonce.own_pass.stages import ValidationResult, write_report_files
from ..conformance.assets import (CODE_VERSIONS, PUBLISHED, ConformanceHooks, EventObserver,
                                  build_conformance_assets)
from ..resources import KvonceSettings

PREFIX = "drops"
PARTITIONS_NAME = "kvonce_drops"
drop_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)

#: Run tags the sensor sets: the payload's name (a hint, re-checked against the content), its
#: sha256, size and arrival time. The payload is always found again by content.
TAG_NAME = "kvonce/source_name"
TAG_SHA = "kvonce/source_sha256"
TAG_BYTES = "kvonce/source_bytes"
TAG_ARRIVED = "kvonce/source_arrived_at"
#: The payload's store scope (its drop subfolder, or ``default``): a deployment's run coordinator
#: can limit runs per value of this tag, so one scope's store is never judged by two runs at once.
TAG_SCOPE = "kvonce/store-scope"
#: Carried by every run of the store jobs (which refold every scope): a deployment limits it to one
#: run at a time, so two folds never race to write one scope's store.
TAG_STORE_FOLD = "kvonce/store-fold"

_EXTRA_CODE = hashlib.sha256(b"".join(inspect.getsource(m).encode() for m in (drops, store, envelope)))
_EXTRA_CODE.update(inspect.getsource(sys.modules[ConformanceHooks.__module__]).encode())


def _key(context: dg.AssetExecutionContext) -> str:
    key = context.partition_key
    if not drops.is_partition_key(key):
        raise dg.Failure(description=f"partition {key!r} is not a drop partition key (<stem>-<12 hex>); "
                                     "refusing to use it as a folder name")
    return key


def drop_trace_dir(settings: KvonceSettings) -> Path:
    """``<reports>/trace`` where this run writes: the local folder, or for a reports URL this run's private
    staging folder, whose partition folder is published to ``<url>/trace/<partition>/`` when the step ends
    (the report last, see docs/storage.md). What other runs published is read from
    :meth:`KvonceSettings.trace_location` (the URL), never from the staging."""
    try:
        return settings.trace_dir()
    except ConfigError as error:  # a reports URL whose backend is not installed
        raise dg.Failure(description=str(error), metadata={"verdict": "unusable"}, allow_retries=False) from None


def drop_output(context: dg.AssetExecutionContext, settings: KvonceSettings) -> Path:
    """``<reports>/trace/<partition key>``; the key was checked to be one safe path component."""
    return drop_trace_dir(settings) / _key(context)


#: In the partition's folder while its run lasts: the payload's bytes as read (and hashed) once.
PRIVATE_COPY = ".kvonce-source-payload"


def _private_copy(context: dg.AssetExecutionContext, settings: KvonceSettings) -> Path:
    return drop_output(context, settings) / PRIVATE_COPY


class DropHooks(ConformanceHooks):
    """Locates a partition's payload, stamps lineage, judges against the store, writes the envelope."""

    #: for a reports URL: the stages' files, the key facts and the envelope, then the report (the commit point)
    PUBLISHED = (*PUBLISHED[:-1], store.KEYFACTS, envelope.ENVELOPE, PUBLISHED[-1])

    def published(self) -> Sequence[str]:
        return self.PUBLISHED

    def __init__(self) -> None:
        self._sources: dict[tuple[str, str], drops.DropFile] = {}

    def code_version(self, asset_name: str, base: str) -> str:
        digest = _EXTRA_CODE.copy()
        digest.update(base.encode())
        return digest.hexdigest()[:12]

    def source(self, context: dg.AssetExecutionContext, settings: KvonceSettings) -> drops.DropFile:
        """The payload for this run's partition, by content (run tags only give hints). Cached per run."""
        key = _key(context)
        cached = self._sources.get((context.run_id, key))
        if cached is not None:
            return cached
        tags = context.run.tags
        size = tags.get(TAG_BYTES, "")
        found = drops.locate_payload(settings.drop_root(), key, name=tags.get(TAG_NAME), sha256=tags.get(TAG_SHA),
                                     size=int(size) if size.isdigit() else None, limits=settings.limits(),
                                     copy_to=_private_copy(context, settings))
        if len(self._sources) > 64:
            self._sources.clear()
        self._sources[(context.run_id, key)] = found
        return found

    def payload(self, context: dg.AssetExecutionContext, settings: KvonceSettings) -> Path:
        """The private copy made while the payload was located and hashed (one read of the user's
        file): the step reads exactly the bytes whose sha256 it records."""
        found = self.source(context, settings)
        return found.copy or found.path

    def release(self, context: dg.AssetExecutionContext, settings: KvonceSettings) -> None:
        self._sources.pop((context.run_id, _key(context)), None)
        try:
            _private_copy(context, settings).unlink()
        except FileNotFoundError:
            pass

    def _source_fields(self, context: dg.AssetExecutionContext, settings: KvonceSettings) -> dict[str, Any]:
        """Source facts from the run tags (set by the sensor) or, for a run launched by hand, the file."""
        tags = context.run.tags
        if TAG_SHA in tags and TAG_NAME in tags:
            scope = drops.scope_of(_key(context))
            return {"name": tags[TAG_NAME], "path": drops.payload_location(settings.drop_root(), scope, tags[TAG_NAME])
                    if drops.is_bare_name(tags[TAG_NAME]) else None,
                    "sha256": tags[TAG_SHA], "bytes": int(tags.get(TAG_BYTES, "0") or 0),
                    "arrivedAt": tags.get(TAG_ARRIVED)}
        try:
            found = self.source(context, settings)
        except InputError:
            return {"name": None, "path": None, "sha256": None, "bytes": None, "arrivedAt": None}
        return {"name": found.name, "path": found.location, "sha256": found.sha256, "bytes": found.size,
                "arrivedAt": found.arrived_at}

    def payload_name(self, context: dg.AssetExecutionContext, settings: KvonceSettings, source: Path) -> str:
        """The dropped file as the user put it in the drop folder (the step found it by content)."""
        fields = self._source_fields(context, settings)
        return str(fields["path"] or fields["name"] or source)

    def check_collected(self, source: Path, spans: int, kvonce_spans: int) -> InputError | None:
        """A dropped payload without kvonce spans is unusable, and its error must name the file."""
        if kvonce_spans:
            return None
        detail = f" ({spans} spans, none with kvonce.event.type and kvonce.event.key)" if spans else ""
        return InputError(str(source), f"no kvonce events{detail}")

    def lineage(self, context: dg.AssetExecutionContext, settings: KvonceSettings,
                asset_name: str) -> dict[str, Any]:
        source = self._source_fields(context, settings)
        out: dict[str, Any] = {
            "partition": context.partition_key,
            "source_file": source["name"] or "",
            "source_sha256": source["sha256"] or "",
            "source_bytes": source["bytes"] or 0,
            "source_arrived_at": source["arrivedAt"] or "",
            "run_id": context.run_id,
            "code_version": self.code_version(asset_name, CODE_VERSIONS[asset_name])
            if asset_name in CODE_VERSIONS else "",
        }
        if source["path"]:
            out["source_path"] = dg.MetadataValue.path(source["path"])
        return out

    def observer(self, context: dg.AssetExecutionContext, settings: KvonceSettings) -> store.FactsBuilder:
        """The payload's key facts, gathered during the step's one pass over its events."""
        return store.FactsBuilder()

    def judge(self, context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path,
              result: ValidationResult, observed: EventObserver | None, *,
              projection_stats: dict[str, Any]) -> ValidationResult:
        """Reconcile the payload's own report with the payloads already in the store, and rewrite it.

        The pass wrote the report of the payload on its own; this replaces it (and the summary)
        with the reconciled one, and writes the key facts later payloads are reconciled against.
        """
        if not isinstance(observed, store.FactsBuilder):
            raise TypeError("the drop variant's judge needs the key facts its observer gathered")
        own = observed.to_json()
        key = _key(context)
        prior, own_order = prior_facts(context.instance, settings, drops.scope_of(key), exclude=key)
        published = settings.trace_location()  # the other payloads' events: where their runs published them
        report = store.reconcile_report(result.report, key, own, prior, own_order,
                                        folder_of=lambda partition: out_dir if partition == key
                                        else store.location(published, partition))
        write_bytes_atomic(out_dir / store.KEYFACTS, orjson.dumps(own))
        validation_file, summary_file = write_report_files(report, out_dir, projection_stats)
        return ValidationResult(report, validation_file, summary_file)

    def _envelope(self, context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path, *,
                  status: str, valid: bool | None, known: dict[str, tuple[str, int]],
                  error: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
        code_versions = {name: self.code_version(name, base) for name, base in CODE_VERSIONS.items()}
        doc = envelope.build_envelope(
            out_dir, partition_key=_key(context), source=self._source_fields(context, settings), status=status,
            valid=valid, correlation_fields=envelope.correlation(context.run_id, code_versions), known=known,
            error=error)
        return envelope.write_envelope(out_dir, doc), doc

    def validated(self, context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path,
                  result: ValidationResult, known: dict[str, tuple[str, int]]) -> dict[str, Any]:
        path, doc = self._envelope(context, settings, out_dir, status="checked", valid=result.valid, known=known)
        return {"envelope_path": dg.MetadataValue.path(str(path)),
                "envelope": dg.MetadataValue.json(doc),
                "cross_payload": dg.MetadataValue.json(result.report.get("crossPayload", {}))}

    def explain(self, context: dg.AssetExecutionContext, settings: KvonceSettings,
                error: InputError) -> InputError:
        """Name the dropped file, not our collected copy of it: the user knows only the former.

        The events stage reads ``collected-kvonce-otlp.json``; its span coordinates (``span r0/s1/p2``)
        are the dropped file's, as the copy keeps resources, scopes and spans in order.
        """
        collected = drop_output(context, settings) / artifacts.COLLECTED
        if error.source == str(_private_copy(context, settings)):  # read from our copy: name theirs
            source = self._source_fields(context, settings)
            return InputError(str(source["path"] or source["name"] or error.source), error.message, where=error.where)
        if error.source != str(collected):
            return error
        source = self._source_fields(context, settings)
        name = source["path"] or source["name"] or error.source
        return InputError(str(name), f"{error.message} (read from its collected copy "
                                     f"{settings.published_name(collected)})", where=error.where)

    def unusable(self, context: dg.AssetExecutionContext, settings: KvonceSettings, out_dir: Path,
                 error: InputError) -> None:
        """The payload cannot be read: record it (envelope status ``unusable``); the file stays as it is."""
        self._envelope(context, settings, out_dir, status="unusable", valid=False, known={}, error=error.to_json())
        context.log.error(f"unusable payload for partition {context.partition_key}: {error}")


def prior_facts(instance: dg.DagsterInstance, settings: KvonceSettings, scope: str,
                exclude: str | None = None, registered: Sequence[str] | None = None,
                ) -> tuple[list[store.PayloadFacts], int | None]:
    """Key facts of ``scope``'s registered drop partitions that have them and that its last reset
    did not take out, in registration (arrival) order.

    Returns the facts (without ``exclude``) and ``exclude``'s own arrival order, if registered.
    ``registered``: the instance's partition keys, when the caller already fetched them.
    Read where the runs published them (:meth:`KvonceSettings.trace_location`): for a reports URL, one
    ``GET`` per partition of the scope, sent concurrently (and one for the scope's reset record), nothing
    listed.
    """
    trace = settings.trace_location()
    excluded = _storage_step(store.excluded_partitions, trace, scope)
    own_order: int | None = None
    keys = instance.get_dynamic_partitions(PARTITIONS_NAME) if registered is None else registered
    wanted: dict[str, int] = {}
    for order, key in enumerate(keys):
        if key == exclude:
            own_order = order
            continue
        if not drops.is_partition_key(key) or drops.scope_of(key) != scope or key in excluded:
            continue
        wanted[key] = order
    facts = _storage_step(store.read_facts, trace, list(wanted))
    out = [store.PayloadFacts(key, order, facts[key]) for key, order in wanted.items() if key in facts]
    return out, own_order


R = TypeVar("R")


def _storage_step(call: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """``call(...)`` on the reports location: a store that cannot be read or written fails the step as
    storage (exit 2), a reports URL whose backend is not installed as unusable, never as a verdict."""
    try:
        return call(*args, **kwargs)
    except OutputError as error:
        raise dg.Failure(description=str(error), metadata={"verdict": "storage"}, allow_retries=False) from None
    except ConfigError as error:
        raise dg.Failure(description=str(error), metadata={"verdict": "unusable"}, allow_retries=False) from None


drop_hooks = DropHooks()
drop_assets = build_conformance_assets(
    key_prefix=[PREFIX],
    partitions_def=drop_partitions,
    group_name="kvonce_drops",
    payload_for=drop_hooks.payload,
    output_for=drop_output,
    hooks=drop_hooks,
)
DROP_VALIDATION_KEY = dg.AssetKey([PREFIX, "kvonce_validation"])
#: Materialized for every payload that was judged, valid or not (its key facts are written by then):
#: the store's trigger. The validation asset is not, since a violation is its failed materialization.
DROP_JUDGED_KEY = dg.AssetKey([PREFIX, "kvonce_projection"])
STORE_KEY = dg.AssetKey([PREFIX, "kvonce_store"])
STORE_CODE_VERSION = hashlib.sha256(inspect.getsource(store).encode()).hexdigest()[:12]


class StoreConfig(dg.Config):
    """Run config of the store's materialization: ``reset_scope`` starts that scope afresh first."""

    reset_scope: str | None = None


def _scopes(registered: Sequence[str]) -> list[str]:
    """Every scope with a registered drop partition, ``default`` first."""
    found = {drops.scope_of(key) for key in registered if drops.is_partition_key(key)}
    return sorted(found, key=lambda scope: (scope != drops.DEFAULT_SCOPE, scope))


@dg.asset(
    key=STORE_KEY,
    deps=[DROP_VALIDATION_KEY],
    code_version=STORE_CODE_VERSION,
    group_name="kvonce_drops",
    kinds={"python", "json"},
    check_specs=[dg.AssetCheckSpec("cross_payload_conformance", asset=STORE_KEY,
                                   description="No key written twice, no retry bound broken, across the payloads "
                                               "of one scope (in event-time order); findings name both partitions")],
    description="The KvOnce store across the dropped payloads of each scope (a drop subfolder; the drop folder "
                "itself is 'default'), folded in event-time order (kvonce-store/[<scope>/]kvonce-store.json, .md).",
)
def kvonce_store(context: dg.AssetExecutionContext, kvonce: KvonceSettings, config: StoreConfig) -> dg.MaterializeResult:
    """Every scope refolded from its payloads' key facts; see :func:`_publish_scope` for a reports URL."""
    trace = kvonce.trace_location()
    reset = None
    if config.reset_scope is not None:
        if not drops.is_scope_name(config.reset_scope):
            raise dg.Failure(description=f"reset_scope {config.reset_scope!r} is not a scope name "
                                         "(letters, digits, '_' and '-', at most 40)")
        reset = _storage_step(store.reset_scope, trace, config.reset_scope, max_retries=kvonce.max_retries,
                              strict=kvonce.strict)
        context.log.info(f"scope {config.reset_scope} reset: {len(reset['excluded'])} payload(s) no longer folded")
    registered = context.instance.get_dynamic_partitions(PARTITIONS_NAME)  # once, for every scope
    scopes = _scopes(registered)
    if config.reset_scope is not None and config.reset_scope not in scopes:
        scopes.append(config.reset_scope)
    per_scope: dict[str, dict[str, Any]] = {}
    texts: list[str] = []
    shas: list[str] = []
    rows: list[str] = []
    for scope in scopes or [drops.DEFAULT_SCOPE]:
        folder = store.store_dir(trace, scope)
        # the version of the scope's report this fold replaces (a reports URL: its publish is conditional on it)
        version = _storage_step(storage.version_of, storage.join(folder, store.STORE_REPORT)) \
            if isinstance(folder, str) else None
        payloads, _ = prior_facts(context.instance, kvonce, scope, registered=registered)
        report = store.fold(payloads, max_retries=kvonce.max_retries, strict=kvonce.strict).report()
        _storage_step(store.attach_span_ids, [ref for f in report["findings"] for ref in (f["first"], f["second"])],
                      lambda partition: store.location(trace, partition))
        if isinstance(folder, str):
            shas.append(_publish_scope(context, folder, report, scope, version))
        else:
            shas.append(store.write_store_files(folder, report, scope))
        summary = report["summary"]
        per_scope[scope] = {"valid": report["valid"], "payloads": summary["payloads"], "keys": summary["keys"],
                            "errors": summary["errors"], "warnings": summary["warnings"],
                            "path": str(store.location(folder, store.STORE_REPORT))}
        texts.append(f"### scope `{scope}`\n\n" + store.render_store_summary(report))
        rows += [f"- `{scope}` {f['severity']} `{f['type']}` key `{f['key']}`: {f['first']['partition']} "
                 f"#{f['first']['eventIndex']} then {f['second']['partition']} #{f['second']['eventIndex']}"
                 for f in report["findings"]]
    errors = sum(s["errors"] for s in per_scope.values())
    invalid = [scope for scope, s in per_scope.items() if not s["valid"]]
    combined = hashlib.sha256("".join(shas).encode()).hexdigest()
    metadata: dict[str, Any] = {
        "path": dg.MetadataValue.path(str(store.location(store.store_dir(trace, drops.DEFAULT_SCOPE),
                                                         store.STORE_REPORT))),
        "sha256": combined, "scopes": dg.MetadataValue.json(per_scope),
        "payloads": sum(s["payloads"] for s in per_scope.values()),
        "dagster/row_count": sum(s["keys"] for s in per_scope.values()),
        "summary": dg.MetadataValue.md("\n".join(texts))}
    if reset is not None:
        metadata["reset"] = dg.MetadataValue.json(reset)
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(combined),
        check_results=[dg.AssetCheckResult(
            check_name="cross_payload_conformance", asset_key=STORE_KEY, passed=not invalid,
            severity=dg.AssetCheckSeverity.ERROR,
            description="no cross-payload violation" if not invalid
            else f"{errors} cross-payload violation(s) in scope(s) {', '.join(invalid)}",
            metadata={"errors": errors, "by_scope": dg.MetadataValue.json(per_scope),
                      "findings": dg.MetadataValue.md("\n".join(rows[:20]) or "none")})],
    )


def _publish_scope(context: dg.AssetExecutionContext, folder: str, report: dict[str, Any], scope: str,
                   version: str | None) -> str:
    """The scope's store files published to ``folder`` (a URL), the report last and only over the version
    this run read before it folded (a conditional write on S3): a store run that lost a race to another
    store run fails naming the object, rather than replacing a fold it never saw.

    The queue's ``kvonce/store-fold`` limit (deploy/dagster.yaml: one store run at a time) is what
    keeps two folds apart; this condition is the check that it did, and the guard where no such
    limit is configured."""
    try:
        sha = store.publish_store_files(folder, report, scope, expect=version)
    except storage.PublishConflict as error:
        raise dg.Failure(description=f"scope {scope}: the store was not published: {error}. Another store run "
                                     "wrote it meanwhile (a deployment's queue limits the tag kvonce/store-fold to "
                                     "one run to prevent that); materialize the store again to refold.",
                         metadata={"verdict": "storage"}, allow_retries=False) from None
    except OutputError as error:
        raise dg.Failure(description=f"scope {scope}: the store was not published: {error}",
                         metadata={"verdict": "storage"}, allow_retries=False) from None
    context.log.info(f"published {store.STORE_SUMMARY} and {store.STORE_REPORT} to {folder}")
    return sha


kvonce_drop_job = dg.define_asset_job(
    "kvonce_drop_job",
    selection=dg.AssetSelection.assets(*drop_assets),
    partitions_def=drop_partitions,
    executor_def=dg.in_process_executor,
    description="One dropped payload (a dynamic partition): collect, derive, judge, with lineage.",
)
kvonce_store_job = dg.define_asset_job(
    "kvonce_store_job",
    selection=dg.AssetSelection.assets(kvonce_store),
    executor_def=dg.in_process_executor,
    tags={TAG_STORE_FOLD: "all"},
    description="Fold every processed payload into its scope's cross-payload store.",
)
#: Launch with run config ``ops: {drops__kvonce_store: {config: {reset_scope: <scope>}}}`` (the
#: Launchpad shows it): the same as ``kvonce store reset --scope``, then the store refolded.
kvonce_store_reset_job = dg.define_asset_job(
    "kvonce_store_reset_job",
    selection=dg.AssetSelection.assets(kvonce_store),
    executor_def=dg.in_process_executor,
    config={"ops": {"drops__kvonce_store": {"config": {"reset_scope": "default"}}}},
    tags={TAG_STORE_FOLD: "all"},
    description="Start one scope's cross-payload store afresh (run config reset_scope; default: 'default'), "
                "then refold every scope. Earlier payloads keep their reports.",
)
