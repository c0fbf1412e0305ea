"""Every generic domain as a Dagster asset group, fed by one domain-neutral collected payload.

What is built, from the installed domains' definitions alone (nothing here names a domain):

- ``collected_otlp`` (group ``trace``): the payload as collected, spec OTLP/JSON, in
  ``<reports>/trace/collected-otlp.json``; its metadata lists which installed domains' spans it carries;
- per generic domain ``<name>`` (a domain without its own pass), the group ``<name>``: the assets
  ``<name>_events``, ``<name>_projection`` and ``<name>_validation``, materialized together by one step
  (``<name>_conformance_pass``, the engine's one pass), each with a Pandera check built from the
  definition and, on the report, the blocking verdict check ``<name>_conformance``;
- ``trace_summary`` (group ``trace``): ``trace-summary.json``/``.md`` over every domain's report;
- the jobs ``<name>_conformance_job`` (one domain) and ``trace_conformance_job`` (every domain of the
  payload, KvOnce's CI graph included).

The same factory builds the drop folder's variant of each group (a :class:`Placement`: key prefix
``drops/``, the drop partitions, group ``<name>_drops``, artifacts in ``<reports>/trace/<partition
key>/<name>/``; see :mod:`kvonce_pipeline.orchestration.drops.domains`), so the two cannot drift apart.

The step bodies are the engine's (``read_domain_events``, ``check_domain``, ``write_trace_summary``): for
the same payload the domains' files and the trace summary are byte-identical to what ``kvonce
conformance`` writes (tested on a mixed KvOnce and template-domain payload).

Why a collected asset of its own rather than feeding the groups from KvOnce's
``collected_kvonce_otlp``: that asset is materialized by KvOnce's single step, and the step fails on a
KvOnce violation and on a payload without KvOnce spans. Dagster 1.13 then abandons every step
downstream of it (``ActiveExecution._update``: a step whose upstream steps include a failed one is
abandoned, whatever outputs were yielded before the failure). Observed: an asset depending on
``collected_kvonce_otlp``, in one in-process job with KvOnce's graph, on the bundled sample with one
``retry`` turned into a second ``success``: KvOnce's step recorded ``collected_kvonce_otlp`` and failed, the
other asset's step never ran. One domain's
verdict would hide every other's. KvOnce's collected copy also renders an NDJSON event log through
KvOnce's mapping only. The price of a collected asset of its own: a second copy of the payload when
KvOnce is checked too (measured on a 200k-event, 68 MB spec OTLP/JSON payload: ``collect_payload``'s
byte copy 0.9 s, the byte scan for the domains it carries 0.07 s) and one read of the collected file per
domain group (2.8 s for that payload; each group decodes only its own domain's spans, and a group
whose domain the scan did not find does not read it at all).

Each group is one step, as KvOnce's graph is: the pass writes all five files together. The multi-asset
is declared ``can_subset=True`` only because Dagster 1.13 makes a multi-asset's check outputs optional
only then (``check_outs_by_output_name``: ``is_required=not can_subset``), and an absent domain must
yield nothing; the step refuses a subset selection with a clear message.

A domain whose spans are not in the payload materializes nothing (its assets are ``skippable``), logs
why, and removes its stale artifacts of an earlier payload (as ``kvonce conformance`` does), so a
payload of one domain checked by ``trace_conformance_job`` is no failure for the others. In
``<name>_conformance_job`` the same payload is unusable input (``require_spans``), as
``kvonce conformance --domain NAME`` says.

A violation fails the group's step with the verdict as its message and without materializing
``<name>_validation`` (the report is still written), exactly like KvOnce's ``Violations``: the run
fails, ``dagster job execute`` exits 1, and ``python -m kvonce_pipeline.orchestration.run_verdict
--job <name>_conformance_job`` tells violations (1) from unusable input (2) by the failure's
``verdict`` metadata.

KvOnce in ``trace_conformance_job``: its CI multi-asset (the one ``kvonce_conformance_job`` runs) steps
aside, materializing nothing, for a payload that carries other domains' spans and no KvOnce spans, or
an NDJSON event log of another domain (``ndjson_domain``), and logs and records why; a payload of no
installed domain still fails there as unusable input, so nothing-checked never passes (see
:mod:`kvonce_pipeline.orchestration.domains.kvonce_part`, which also says why this shape). The run fails
when any domain's step fails: the worst verdict across the domains, which ``run_verdict --job
trace_conformance_job`` reports (3 over 2 over 1) and ``trace-summary.json``'s ``aggregate`` records.

An NDJSON event log names no domain: :func:`ndjson_domain` says whose it is (run config ``ndjson_domain``
of ``collected_otlp``, else the job's own domain, else ``KVONCE_NDJSON_DOMAIN``, else KvOnce), as
``kvonce conformance --domain`` does.

``trace_summary`` depends only on ``collected_otlp`` and runs last in ``trace_conformance_job`` by its
step priority (the job uses the in-process executor, which runs ready steps by priority). Why not a
dependency on every domain's report: a dependency on a step that failed (a violation) or did not
materialize (a domain absent from the payload) skips the summary in exactly the runs it matters in.
It reads the reports the domains' steps wrote (``<name>-validation.json``; KvOnce's is written before
its step fails), for the domains the collected payload carries.
"""


import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import orjson
import pandas as pd

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pandera.pandas as pa

from ...domains.kvonce import otlp_render
from ...domains.kvonce.otlp_render import render_event_log
from ...engine import collect, otlp_encodings
from ...engine.atomic import sha256_file
from ...engine.errors import ConfigError, InputError, KvonceError, OutputError
from ...engine.limits import Limits
from ...engine import storage
from ...engine import domain_decode, domain_pass, domain_render, registry
from ...engine.domain import Domain, DomainEvent
from ...engine.domain_decode import payload_mentions, read_domain_events
from ...engine.domain_pass import DomainOptions, DomainResult, check_domain, domain_input_error, time_order
from ...engine.payload import TRACE_SUMMARY, TRACE_SUMMARY_MD, domain_folder, write_trace_summary
from ...engine.decode.reader import InputFormat, detect_format
from ...domains.kvonce.schemas import ISO_MS, ISO_MS_FORM, NON_EMPTY, TEXT, check_frame, iso_ms, matches_form
from ..conformance.assets import ASSET_NAMES as KVONCE_ASSET_NAMES
from ..conformance.assets import _code_version, _schema_check, publish_after, published_step
from ..conformance.assets import verdict_message as kvonce_verdict_message
from ..resources import KvonceSettings

COLLECTED_FILE = "collected-otlp.json"
COLLECTED_KEY = dg.AssetKey("collected_otlp")
SUMMARY_KEY = dg.AssetKey("trace_summary")
#: The group of the domain-neutral assets (the collected payload and the trace summary).
TRACE_GROUP = "trace"
TRACE_JOB = "trace_conformance_job"
#: Findings listed in a failed run's message (the summary lists more, the report all of them).
VERDICT_FINDINGS = 10

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,), "object": (dict,),
    "array": (list,),
}


def asset_names(domain: Domain) -> tuple[str, str, str]:
    """The group's asset names: ``<name>_events``, ``<name>_projection``, ``<name>_validation``."""
    return f"{domain.name}_events", f"{domain.name}_projection", f"{domain.name}_validation"


def job_name(domain: Domain) -> str:
    return f"{domain.name}_conformance_job"


def step_name(domain: Domain) -> str:
    return f"{domain.name}_conformance_pass"


# --- configuration ---------------------------------------------------------------------------------


class CollectConfig(dg.Config):
    """How ``collected_otlp`` reads a payload that does not say its domain."""

    #: the domain an NDJSON event log holds (``kvonce conformance --domain``); unset: the job's domain in
    #: ``<name>_conformance_job``, else the ``kvonce`` resource's ``ndjson_domain`` (``KVONCE_NDJSON_DOMAIN``),
    #: else the default domain (KvOnce). KvOnce's step in ``trace_conformance_job`` reads it too.
    ndjson_domain: str | None = None


class DomainCheckConfig(dg.Config):
    """How one domain's group judges the payload (the launchpad shows these per group)."""

    #: a payload without this domain's spans is unusable input rather than nothing to check; unset: true in
    #: ``<name>_conformance_job``, false in ``trace_conformance_job`` and for a materialization from the UI
    require_spans: bool | None = None
    #: the domain's options by name (``kvonce conformance --option NAME=VALUE``)
    options: dict[str, str] = {}
    #: rule ids not reported (``kvonce conformance --disable``)
    disable: list[str] = []


# --- the collected payload -------------------------------------------------------------------------


def mentioned_domains(path: Path, limits: Limits, domains: Mapping[str, Domain] | None = None, *,
                      on_read: Callable[[int], None] | None = None) -> list[str]:
    """The installed domains (or ``domains``) whose ``<prefix>type`` attribute name occurs in ``path``, in
    registry order: a byte scan (gzip read through) that ends once every name has been seen
    (``on_read``: as for :func:`~kvonce_pipeline.engine.domain_decode.payload_mentions`).

    A name found only inside a value costs a group run that finds no event (it then materializes
    nothing); a domain's spans are never missed, as every format stores attribute names as bytes."""
    installed = registry.installed() if domains is None else domains
    needles = {(domain.definition.prefix + "type").encode(): name for name, domain in installed.items()}
    found = payload_mentions(path, list(needles), limits, on_read=on_read)
    return [name for needle, name in needles.items() if needle in found]


def unusable_failure(error: InputError) -> dg.Failure:
    """The step fails with the input's error (file, line or span, what is wrong), as KvOnce's does."""
    return dg.Failure(description=f"unusable input: {error}",
                      metadata={"verdict": "unusable", "source": error.source, "where": error.where or "",
                                "message": error.message}, allow_retries=False)


@contextmanager
def _what_to_read(record: dict[str, Any], collected: Path, settings: KvonceSettings) -> Iterator[Path]:
    """The collected copy, except for an NDJSON event log that is still the file that was collected:
    the log itself is read then, so findings name its lines and every event reads exactly as the
    CLI reads it (the copy is a rendering as spans, which cannot say everything a line can: an event
    without a type, a string field that looks like JSON).

    A log at a URL (a drop folder in a bucket, or ``KVONCE_OTLP_PAYLOAD``) is not on this machine:
    it is downloaded into a private copy for the read (the payload URL's copy is the run's own),
    removed on leaving. Its sha256 decides, as for a local file: a log replaced since it was
    collected, or gone, leaves the collected copy to be read."""
    source = record.get("source_path")
    if record.get("source_format") != "ndjson" or not isinstance(source, str) or not source:
        yield collected
        return
    with ExitStack() as staged:
        try:
            if not storage.is_remote(source):
                local = Path(source)
            elif source == settings.payload:
                local = settings.resolve_payload()
            else:
                local = Path(os.fspath(staged.enter_context(storage.staged_input(source, settings.limits()))))
            same = sha256_file(local) == record.get("source_sha256")
        except (OSError, KvonceError):
            same = False
        yield local if same else collected


def collect_as_otlp(source: Path, destination: Path, settings: KvonceSettings,
                    ndjson_domain: str) -> collect.Collected:
    """``collect_payload``; an NDJSON log of a generic domain is rendered through that domain's mapping
    instead (``collect_payload`` knows only KvOnce's), so reading the copy gives the same events."""
    limits = settings.limits()
    detected, compressed = detect_format(source, hint=settings.input_format, limits=limits)
    if detected is not InputFormat.NDJSON or ndjson_domain == registry.DEFAULT_DOMAIN:
        return collect.collect_payload(source, destination, format=settings.input_format, limits=limits,
                                       render_log=render_event_log)
    domain = registry.get(ndjson_domain)
    if domain.runner is not None:
        raise ConfigError(f"domain {ndjson_domain!r} reads its own NDJSON logs; collect them with its own job")
    read = read_domain_events(source, [domain], format="ndjson", limits=limits)
    domain_render.write_trace(domain, read.events[domain.name], destination, "otlp-json")
    return collect.Collected(source, destination, detected, compressed, True, sha256_file(destination),
                             destination.stat().st_size)


@dg.asset(
    key=COLLECTED_KEY,
    group_name=TRACE_GROUP,
    code_version=_code_version(collect, otlp_render, otlp_encodings, domain_render, domain_decode),
    kinds={"python", "json"},
    description="The payload as collected, always as spec OTLP/JSON (collected-otlp.json), for every domain's "
                "group; its metadata lists the installed domains whose spans it carries.",
)
def collected_otlp(context: dg.AssetExecutionContext, config: CollectConfig,
                   kvonce: KvonceSettings) -> dg.MaterializeResult:
    try:
        destination = kvonce.trace_dir() / COLLECTED_FILE
    except ConfigError as error:
        raise dg.Failure(description=str(error), metadata={"verdict": "unusable"}, allow_retries=False) from None
    if kvonce.reports_url() is None:
        return _collected_otlp(context, config, kvonce, destination)
    return publish_after(context, kvonce, lambda: destination.parent, [COLLECTED_FILE],
                         lambda: _collected_otlp(context, config, kvonce, destination))


def _collected_otlp(context: dg.AssetExecutionContext, config: CollectConfig, kvonce: KvonceSettings,
                    destination: Path) -> dg.MaterializeResult:
    try:
        source = kvonce.resolve_payload()
        context.log.info(f"collecting {kvonce.payload_label(source)}")
        collected = collect_as_otlp(source, destination, kvonce, ndjson_domain(context, kvonce, config.ndjson_domain))
        domains = mentioned_domains(collected.path, kvonce.limits())
        source_sha = collected.sha256 if not collected.converted else sha256_file(source)
    except InputError as error:
        raise unusable_failure(kvonce.input_error(error)) from None
    except ConfigError as error:
        raise dg.Failure(description=str(error), metadata={"verdict": "unusable"}, allow_retries=False) from None
    context.log.info(f"{kvonce.payload_label(source)} carries the spans of: {', '.join(domains) or 'no installed domain'}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(kvonce.published_name(collected.path)),
            "sha256": collected.sha256,
            "bytes": collected.size,
            "source_path": dg.MetadataValue.path(kvonce.payload_label(source)),
            "source_sha256": source_sha,
            "source_bytes": source.stat().st_size,
            "source_format": collected.format.value,
            "source_compressed": collected.compressed,
            "converted": collected.converted,
            "domains": dg.MetadataValue.json(domains),
        },
        data_version=dg.DataVersion(collected.sha256),
    )


def _own_job_domain(context: dg.AssetExecutionContext) -> str | None:
    """The domain whose own job this run is (``<name>_conformance_job``), if it is one.

    Why from the job's name rather than job-level default config: a run config given by the user (the
    launchpad, ``-c``) replaces a job's default config whole, so it would silently drop the default."""
    for name, domain in registry.installed().items():
        if domain.runner is None and context.job_name == job_name(domain):
            return name
    return None


def _job_domain(context: dg.AssetExecutionContext) -> str:
    """The domain whose own job this run is, else the default domain."""
    return _own_job_domain(context) or registry.DEFAULT_DOMAIN


def configured_ndjson_domain(context: dg.AssetExecutionContext) -> str | None:
    """``ndjson_domain`` as this run's config gives it to ``collected_otlp`` (any step of the run can read
    it: KvOnce's step in ``trace_conformance_job`` must know what the log is without waiting for that step)."""
    value: Any = context.run.run_config or {}
    for name in ("ops", COLLECTED_KEY.path[-1], "config", "ndjson_domain"):
        value = value.get(name) if isinstance(value, dict) else None
    return value if isinstance(value, str) and value else None


def ndjson_domain(context: dg.AssetExecutionContext, settings: KvonceSettings, configured: str | None = None) -> str:
    """The domain an NDJSON event log of this run holds, as ``kvonce conformance --domain`` says it: the
    run config's ``ndjson_domain`` (``configured``), else the domain whose own job this is, else the
    resource's ``ndjson_domain`` (``KVONCE_NDJSON_DOMAIN``), else the default domain (KvOnce, as the CLI)."""
    return configured or _own_job_domain(context) or settings.ndjson_domain or registry.DEFAULT_DOMAIN


def _collected_record(context: dg.AssetExecutionContext, key: dg.AssetKey = COLLECTED_KEY) -> dict[str, Any]:
    """The latest materialization's metadata of the collected asset ``key`` (of this run's partition when
    the run has one; empty if none is recorded)."""
    if context.has_partition_key:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[context.partition_key]), limit=1).records
        event = records[0].event_log_entry.asset_materialization if records else None
    else:
        entry = context.instance.get_latest_materialization_event(key)
        event = None if entry is None else entry.asset_materialization
    if event is None:
        return {}
    return {name: getattr(value, "value", value) for name, value in event.metadata.items()}


# --- the Pandera schemas, from the definition ------------------------------------------------------


def _text(values: Sequence[Any]) -> pd.Series:
    """A ``string`` column when every value is text or missing; ``object`` otherwise (the dtype check fails)."""
    array = np.array(list(values), dtype=object)
    try:
        return pd.Series(pd.arrays.StringArray(array))
    except ValueError:
        return pd.Series(array, dtype="object")


def _form(form: str, error: str) -> pa.Check:
    return pa.Check(lambda series: matches_form(series, form), error=error, ignore_na=False)


def _json_typed(allowed: tuple[type, ...], error: str) -> pa.Check:
    """Missing, or exactly one of ``allowed`` (a bool is no number, as the engine judges it)."""
    return pa.Check(lambda series: pd.Series([v is None or type(v) in allowed for v in series],
                                             index=series.index, dtype=bool), error=error, ignore_na=False)


def events_schema(domain: Domain, disabled: frozenset[str] = frozenset()) -> pa.DataFrameSchema:
    """The events table of ``<name>-events.ndjson``: each declared field of its JSON types, ISO
    timestamps in time order, and every event of an undeclared type, or lacking a field its type
    requires, reported as a finding (unless that rule is disabled)."""
    definition = domain.definition
    declared = list(definition.type_names)
    columns: dict[str, pa.Column] = {
        "timeUnixNano": pa.Column("Int64", pa.Check.ge(0), nullable=True),
        "timestamp": pa.Column(TEXT, _form(ISO_MS_FORM, ISO_MS), nullable=True),
        "type": pa.Column(TEXT, nullable=True),
        "key": pa.Column(TEXT, nullable=True),
        "actor": pa.Column(TEXT, NON_EMPTY),
        "reportedType": pa.Column(bool),
        "reportedMissing": pa.Column(bool),
    }
    for spec in definition.fields:
        allowed = tuple(kind for name in spec.json for kind in _JSON_TYPES[name])
        columns[f"field:{spec.name}"] = pa.Column(
            "object", _json_typed(allowed, f"JSON type {' or '.join(spec.json)}"), nullable=True)
    checks = [
        pa.Check(lambda df: bool(df["timeUnixNano"].ffill().fillna(0).is_monotonic_increasing),
                 element_wise=False, error="events are not in time order"),
        pa.Check(lambda df: bool((df["timestamp"].isna() == df["timeUnixNano"].isna()).all()),
                 element_wise=False, error="timestamp and timeUnixNano disagree on presence"),
    ]
    unknown_ok = "unknown-event-type" in disabled  # an undeclared type is then not reported
    missing_ok = "missing-required-field" in disabled  # nor a missing type or field

    def type_reported(df: pd.DataFrame) -> pd.Series:
        ok = df["type"].isin(declared).fillna(False).astype(bool) | df["reportedType"]
        if unknown_ok:
            ok |= df["type"].notna()
        if missing_ok:
            ok |= df["type"].isna()
        return ok

    checks.append(pa.Check(type_reported, error=f"a type not among {', '.join(declared)} that no finding reports"))
    if not missing_ok:
        for event_type in definition.types:
            for name in event_type.required:
                checks.append(pa.Check(
                    lambda df, kind=event_type.name, name=name: ~(df["type"] == kind).fillna(False).astype(bool)
                    | df[f"field:{name}"].notna() | df["reportedMissing"],
                    error=f"a {event_type.name} event without {name!r} that no finding reports"))
    return pa.DataFrameSchema(columns, checks=checks, name=f"{domain.name}_events")


def events_frame(domain: Domain, events: list[DomainEvent], report: dict[str, Any]) -> pd.DataFrame:
    """One row per event in the pass's order, each declared field a column, and which events a
    finding names (by ``eventIndex``) for a missing field or an unknown type."""
    missing: set[int] = set()
    unknown: set[int] = set()
    for issue in report.get("issues", []):
        if issue["type"] == "missing-required-field":
            missing.add(issue["eventIndex"])
        elif issue["type"] == "unknown-event-type":
            unknown.add(issue["eventIndex"])
    times = pd.array([e.time_unix_nano for e in events], dtype="Int64")
    indexes = range(len(events))
    frame: dict[str, Any] = {
        "timeUnixNano": times,
        "timestamp": iso_ms(times) if len(events) else _text([]),
        "type": _text([e.type for e in events]),
        "key": _text([e.key for e in events]),
        "actor": _text([e.actor for e in events]),
        "reportedType": pd.Series([i in unknown or i in missing for i in indexes], dtype=bool),
        "reportedMissing": pd.Series([i in missing for i in indexes], dtype=bool),
    }
    for spec in domain.definition.fields:
        frame[f"field:{spec.name}"] = pd.Series([e.fields.get(spec.name) for e in events], dtype="object")
    return pd.DataFrame(frame)


def projection_schema(domain: Domain, stats: dict[str, Any]) -> pa.DataFrameSchema:
    """The projection's ``stats.byType`` table: one row per declared type and ``unknown``, counts that
    add up to the events, and the other stats consistent with them."""
    declared = [*domain.definition.type_names, "unknown"]
    events = stats.get("events", -1)

    def scalars(df: pd.DataFrame) -> bool:
        first, last = stats.get("firstTimestamp"), stats.get("lastTimestamp")
        return (0 <= stats.get("keys", -1) <= events
                and len(stats.get("traceIds", [])) <= stats.get("traceIdCount", -1) <= max(events, 0)
                and (first is None) == (last is None) and (first is None or first <= last))

    return pa.DataFrameSchema(
        {"count": pa.Column("int64", pa.Check.ge(0))},
        index=pa.Index(TEXT, pa.Check.isin(declared), unique=True, name="type"),
        checks=[
            pa.Check(lambda df: sorted(df.index) == sorted(declared), element_wise=False,
                     error=f"byType must list exactly {', '.join(declared)}"),
            pa.Check(lambda df: int(df["count"].sum()) == events, element_wise=False,
                     error="stats.byType does not add up to stats.events"),
            pa.Check(scalars, element_wise=False,
                     error="stats.keys, traceIdCount or first/lastTimestamp inconsistent with stats.events"),
        ],
        name=f"{domain.name}_projection",
    )


def projection_frame(stats: dict[str, Any]) -> pd.DataFrame:
    by_type = stats.get("byType", {})
    return pd.DataFrame({"count": np.array(list(by_type.values()), dtype=np.int64)},
                        index=pd.Index(pd.array(list(by_type), dtype=TEXT), name="type"))


def validation_schema(domain: Domain, report: dict[str, Any]) -> pa.DataFrameSchema:
    """The report's findings: the domain's rule ids, severities (all ``error`` in strict mode),
    event indexes in range, and ``valid`` and the counts agreeing with them."""
    summary = report.get("summary", {})
    events = summary.get("events", 0)
    valid = bool(report.get("valid"))
    severities = ["error"] if report.get("strict") else ["error", "warning"]
    return pa.DataFrameSchema(
        {
            "type": pa.Column(TEXT, pa.Check.isin(sorted(rule.id for rule in domain.rules()))),
            "key": pa.Column(TEXT, nullable=True),
            "severity": pa.Column(TEXT, pa.Check.isin(severities)),
            "message": pa.Column(TEXT, NON_EMPTY),
            "eventIndex": pa.Column("int64", pa.Check.in_range(0, max(events - 1, 0))),
        },
        checks=[
            pa.Check(lambda df: valid == (not (df["severity"] == "error").any()), element_wise=False,
                     error="'valid' disagrees with the error findings"),
            pa.Check(lambda df: int((df["severity"] == "error").sum()) == summary.get("errors")
                     and len(df) == summary.get("errors", 0) + summary.get("warnings", 0), element_wise=False,
                     error="summary.errors/warnings disagree with the findings"),
        ],
        name=f"{domain.name}_validation",
    )


def issues_frame(report: dict[str, Any]) -> pd.DataFrame:
    issues = report.get("issues", [])
    return pd.DataFrame({
        "type": _text([i.get("type") for i in issues]),
        "key": _text([i.get("key") for i in issues]),
        "severity": _text([i.get("severity") for i in issues]),
        "message": _text([i.get("message") for i in issues]),
        "eventIndex": pd.Series([i.get("eventIndex", -1) for i in issues], dtype="int64"),
    })


# --- one domain's group ----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 120 else text[:119] + "…"


def verdict_message(result: DomainResult, payload: str, shown: Callable[[Path], str] = str) -> str:
    """``N <label> violations in <payload>:`` and a table of the first findings (as KvOnce's run says);
    ``shown`` names a file (its published URL when the reports go to one)."""
    return kvonce_verdict_message(result.report, payload, shown(result.out_dir / result.names.summary),
                                  shown(result.out_dir / result.names.validation), result.domain.definition.label)


def _file(path: Path, settings: KvonceSettings) -> dict[str, Any]:
    """Where the file is (its published URL when the reports go to one), its sha256 and size."""
    return {"path": dg.MetadataValue.path(settings.published_name(path)), "sha256": sha256_file(path),
            "bytes": path.stat().st_size}


def publish_order(domain: Domain) -> tuple[str, ...]:
    """A domain's artifacts in the order a reports URL gets them: the validation report last."""
    names = domain.artifact_names()
    return (*(name for name in names.all() if name != names.validation), names.validation)


def _domain_code_version(domain: Domain) -> str:
    """The engine's pass and reader, the domain's ``domain.toml`` and its machine's module."""
    files = [domain.folder / "domain.toml"]
    try:
        machine_file = inspect.getsourcefile(domain.machine) if domain.machine is not None else None
    except TypeError:
        machine_file = None
    if machine_file:
        files.append(Path(machine_file))
    return _code_version(domain_pass, domain_decode, files=files)


def _remove_stale(domain: Domain, folder: Path) -> list[str]:
    """An earlier payload's artifacts of this domain (our names, our folder): they describe another input."""
    removed = []
    for name in domain.artifact_names().all():
        try:
            (folder / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(f"cannot remove {folder / name}: {exc.strerror or exc}") from exc
    try:
        folder.rmdir()
    except OSError:
        pass
    return removed


def _trace_dir(context: dg.AssetExecutionContext, settings: KvonceSettings) -> Path:
    return settings.trace_dir()


@dataclass(frozen=True)
class Placement:
    """Where a variant of the domain groups lives: its asset key prefix, partitions, group names and
    the folder of its collected payload (each domain's artifacts go to ``<that folder>/<name>/``).

    The default is the unpartitioned CI variant; the drop folder's
    (:mod:`kvonce_pipeline.orchestration.drops.domains`) puts the same groups under ``drops/`` on the
    drop partitions, in ``<reports>/trace/<partition key>/``. One factory for both, so the two
    variants cannot drift apart (as KvOnce's two graphs come from one factory)."""

    key_prefix: tuple[str, ...] = ()
    partitions_def: dg.PartitionsDefinition | None = None
    #: appended to a domain's name for its group (``_drops``: the UI shows both variants apart)
    group_suffix: str = ""
    #: the folder of this run's ``collected-otlp.json``
    folder_of: Callable[[dg.AssetExecutionContext, KvonceSettings], Path] = _trace_dir
    #: its files go to the reports URL when ``KVONCE_REPORTS_DIR`` is one (both variants: docs/storage.md)
    publishes: bool = True

    def key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([*self.key_prefix, name])

    @property
    def collected_key(self) -> dg.AssetKey:
        return self.key(COLLECTED_KEY.path[-1])

    def op_name(self, name: str) -> str:
        return "__".join([*self.key_prefix, name])


CI = Placement()


def build_domain_assets(domain: Domain, placement: Placement = CI) -> dg.AssetsDefinition:
    """The group ``<name>`` of a generic domain: three assets, four checks, one step (see the module)."""
    if domain.runner is not None:
        raise ValueError(f"domain {domain.name!r} brings its own pass; its Dagster graph is its own")
    definition = domain.definition
    events_name, projection_name, validation_name = asset_names(domain)
    keys = {name: placement.key(name) for name in (events_name, projection_name, validation_name)}
    version = _domain_code_version(domain)
    names = domain.artifact_names()
    label = definition.label

    def spec(name: str, deps: Sequence[dg.AssetKey], kind: str, description: str) -> dg.AssetSpec:
        return dg.AssetSpec(keys[name], deps=deps, code_version=version, description=description,
                            kinds={"python", kind}, group_name=domain.name + placement.group_suffix,
                            skippable=True)

    specs = [
        spec(events_name, [placement.collected_key], "ndjson", f"The {label} events, in time order ({names.events})."),
        spec(projection_name, [keys[events_name]], "json",
             f"{label} per-key state and stats ({names.projection}, {names.state_sequence})."),
        spec(validation_name, [keys[events_name], keys[projection_name]], "json",
             f"The {label} verdict and findings ({names.validation}, {names.summary})."),
    ]
    # Partitioned like their assets in the drop variant: one verdict per payload (see KvOnce's
    # ``_check_specs``; the preview warning of Dagster 1.13 says nothing a user can act on).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        check_specs = [
            dg.AssetCheckSpec(name, asset=keys[asset], blocking=True, description=description,
                              partitions_def=placement.partitions_def)
            for name, asset, description in (
                ("events_schema", events_name, "Pandera: declared fields of their JSON types, ISO timestamps in "
                 "time order, undeclared types and missing required fields reported"),
                ("projection_schema", projection_name,
                 "Pandera: stats.byType lists the declared types and adds up to the events"),
                ("validation_schema", validation_name,
                 f"Pandera: {label} rule ids and severities, event indexes in range"),
                (f"{domain.name}_conformance", validation_name,
                 f"The verdict: fails (ERROR) when the trace violates {label}"),
            )
        ]

    @dg.multi_asset(
        name=placement.op_name(step_name(domain)),
        specs=specs,
        partitions_def=placement.partitions_def,
        check_specs=check_specs,
        # True only because Dagster 1.13 makes a multi-asset's check outputs optional only then (a group
        # whose domain is absent from the payload yields nothing at all); subsets are refused in the step
        can_subset=True,
        description=f"One pass over the collected payload's {label} events (as `kvonce conformance --domain "
                    f"{domain.name}` does) writes events, state sequence, projection and report.",
    )
    def conformance_pass(context: dg.AssetExecutionContext, config: DomainCheckConfig,
                         kvonce: KvonceSettings) -> Iterator[Any]:
        if set(context.selected_asset_keys) != set(keys.values()):
            # one pass writes every file of the group: recording only some of them would leave the
            # others' records out of date with the files on disk
            raise dg.Failure(description=f"the {domain.name} group is materialized as a whole: select all of "
                                         f"{', '.join(keys)}", allow_retries=False)
        try:
            if kvonce.reports_url() is None or not placement.publishes:
                yield from _step(context, config, kvonce, domain, keys, placement)
            else:
                yield from published_step(context, kvonce, _step(context, config, kvonce, domain, keys, placement),
                                          lambda: domain_folder(placement.folder_of(context, kvonce), domain),
                                          publish_order(domain))
        except ConfigError as error:  # a reports URL: no backend installed, or a drop run
            raise dg.Failure(description=str(error), metadata={"verdict": "unusable"},
                             allow_retries=False) from None

    return conformance_pass


def _step(context: dg.AssetExecutionContext, config: DomainCheckConfig, settings: KvonceSettings,
          domain: Domain, keys: dict[str, dg.AssetKey], placement: Placement,
          ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    definition = domain.definition
    events_key, projection_key, validation_key = keys.values()
    trace_dir = placement.folder_of(context, settings)
    folder = domain_folder(trace_dir, domain)
    collected = trace_dir / COLLECTED_FILE
    record = _collected_record(context, placement.collected_key)
    source = str(record.get("source_path") or collected)
    try:
        options = DomainOptions(strict=settings.strict, disabled=frozenset(config.disable),
                                options=dict(config.options))
        domain.options(options.options)  # a wrong option is the run's error, before reading anything
    except ConfigError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None

    def unusable(error: InputError) -> dg.Failure:
        error = settings.input_error(error)
        if error.source == str(collected) and source != str(collected):
            error = InputError(source, f"{error.message} (read from its collected copy "
                                       f"{settings.published_name(collected)})", where=error.where)
        domain_input_error(domain, error, folder)
        return unusable_failure(error)

    require_spans = config.require_spans if config.require_spans is not None else _job_domain(context) == domain.name

    def absent(why: str) -> Iterator[Any]:
        if require_spans:
            raise unusable(InputError(source, f"no {definition.label} events ({why})"))
        removed = _remove_stale(domain, folder)
        context.log.info(f"nothing to check for {definition.label}: {why} in {source}; nothing materialized"
                         + (f" (removed an earlier payload's {', '.join(removed)})" if removed else ""))
        return iter(())

    try:
        if placement.publishes:
            settings.restore(trace_dir, [COLLECTED_FILE])  # collected_otlp ran in another process
    except OutputError as error:
        raise dg.Failure(description=str(error), metadata={"verdict": "storage"}, allow_retries=False) from None
    if not collected.is_file():
        raise unusable(InputError(settings.published_name(collected), "no collected payload: materialize "
                                                  f"{placement.collected_key.to_user_string()} first"))
    mentioned = record.get("domains")
    if isinstance(mentioned, list) and domain.name not in mentioned and not require_spans:
        # the collected step's byte scan: no decode for a domain that is not there (required, the read
        # runs anyway, so that a broken payload fails with what is wrong with it)
        yield from absent(f"no span carries {definition.prefix}type")
        return
    with _what_to_read(record, collected, settings) as what:
        try:
            read = read_domain_events(what, [domain], limits=settings.limits())
        except InputError as error:
            raise unusable(error if what == collected else error.naming(str(what), source)) from None
    events = read.events[domain.name]
    if not events:
        yield from absent(f"no span carries {definition.prefix}type")
        return
    summary = read.summary(domain.name)
    summary["source"] = source
    if record.get("source_format"):
        summary["format"] = record["source_format"]
        summary["compressed"] = bool(record.get("source_compressed"))
    context.log.info(f"checking {len(events)} {definition.label} events of {source}")
    try:
        result = check_domain(domain, events, folder, options=options, input_summary=summary)
    except InputError as error:  # e.g. a disabled rule the domain does not have
        raise dg.Failure(description=str(error), allow_retries=False) from None
    report = result.report
    ordered = time_order(events)  # the pass's order (a stable sort): the table rows match the file's lines
    events_outcome = check_frame(events_schema(domain, options.disabled), events_frame(domain, ordered, report))
    del ordered, events
    read.events[domain.name] = []
    projection = orjson.loads((folder / result.names.projection).read_bytes())
    stats = projection["stats"]
    projection_outcome = check_frame(projection_schema(domain, stats), projection_frame(stats))
    validation_outcome = check_frame(validation_schema(domain, report), issues_frame(report))

    events_file = _file(folder / result.names.events, settings)
    yield dg.MaterializeResult(
        asset_key=events_key,
        metadata={**events_file, "dagster/row_count": stats["events"], "spans": summary.get("spans"),
                  "skipped_spans": summary.get("skippedSpans"),
                  "warnings": dg.MetadataValue.json(summary.get("warnings", []))},
        data_version=dg.DataVersion(events_file["sha256"]),
        check_results=[_schema_check("events_schema", events_key, events_outcome)],
    )
    projection_file = _file(folder / result.names.projection, settings)
    states = folder / result.names.state_sequence
    yield dg.MaterializeResult(
        asset_key=projection_key,
        metadata={**projection_file, "state_sequence_path": dg.MetadataValue.path(settings.published_name(states)),
                  "state_sequence_sha256": sha256_file(states), "dagster/row_count": stats["keys"],
                  "events": stats["events"], "stats": dg.MetadataValue.json(stats)},
        data_version=dg.DataVersion(projection_file["sha256"]),
        check_results=[_schema_check("projection_schema", projection_key, projection_outcome)],
    )
    counts = report["summary"]
    findings = "\n".join(f"- {i['severity']} `{i['type']}` key `{i['key']}` event {i['eventIndex']}: {i['message']}"
                         for i in report["issues"][:20]) or "none"
    checks = [
        _schema_check("validation_schema", validation_key, validation_outcome),
        dg.AssetCheckResult(
            check_name=f"{domain.name}_conformance", asset_key=validation_key, passed=result.valid,
            severity=dg.AssetCheckSeverity.ERROR,
            description="valid" if result.valid else f"{counts['errors']} {definition.label} violation(s)",
            metadata={"errors": counts["errors"], "warnings": counts["warnings"],
                      "by_rule": dg.MetadataValue.json(counts["byRule"]), "findings": dg.MetadataValue.md(findings)}),
    ]
    validation_file = _file(folder / result.names.validation, settings)
    summary_path = folder / result.names.summary
    metadata = {**validation_file, "summary_path": dg.MetadataValue.path(settings.published_name(summary_path)),
                "summary_sha256": sha256_file(summary_path), "valid": result.valid, "strict": report["strict"],
                "errors": counts["errors"], "warnings": counts["warnings"],
                "dagster/row_count": len(report["issues"]),
                "summary": dg.MetadataValue.md(summary_path.read_text(encoding="utf-8"))}
    if not result.valid:
        # As KvOnce's Violations: the report is written, but the asset is not materialized, so the UI
        # shows it failed; the step's failure message is the verdict.
        yield from checks
        raise dg.Failure(description=verdict_message(result, source, settings.published_name), metadata={"verdict": "violations", **metadata},
                         allow_retries=False)
    yield dg.MaterializeResult(asset_key=validation_key, metadata=metadata,
                               data_version=dg.DataVersion(validation_file["sha256"]), check_results=checks)


# --- the trace summary -----------------------------------------------------------------------------


_TRACE_ID = re.compile(rb'"traceId":"([^"\\]*)"')


def _trace_ids(events_file: Path) -> tuple[list[str], int]:
    """Distinct trace ids of an events file in order (a byte scan; for domains whose projection does not
    list them)."""
    try:
        blob = events_file.read_bytes()
    except FileNotFoundError:
        return [], 0
    seen = dict.fromkeys(match.group(1) for match in _TRACE_ID.finditer(blob))
    listed = [item.decode("utf-8", "replace") for item in list(seen)[:domain_pass.TRACE_IDS_LISTED]]
    return listed, len(seen)


def _lists_trace_ids(projection: Path) -> bool:
    """The projection's stats count the trace ids (else :func:`result_from_files` reads the events file)."""
    try:
        return "traceIdCount" in orjson.loads(projection.read_bytes()).get("stats", {})
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return False


def result_from_files(domain: Domain, folder: Path) -> DomainResult | None:
    """A domain's result as its step left it on disk (None: no report)."""
    names = domain.artifact_names()
    try:
        report = orjson.loads((folder / names.validation).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise OutputError(f"cannot read {folder / names.validation}: {exc}") from exc
    error = None
    if "inputError" in report:
        raw = report["inputError"]
        error = InputError(str(raw.get("source")), str(raw.get("message")), where=raw.get("where"))
        return DomainResult(domain, folder, report, names, [], 0, error)
    stats: dict[str, Any] = {}
    try:
        stats = orjson.loads((folder / names.projection).read_bytes()).get("stats", {})
    except (OSError, orjson.JSONDecodeError):
        pass
    if "traceIdCount" in stats:
        return DomainResult(domain, folder, report, names, list(stats.get("traceIds", [])), stats["traceIdCount"])
    return DomainResult(domain, folder, report, names, *_trace_ids(folder / names.events))


def build_trace_summary(placement: Placement = CI) -> dg.AssetsDefinition:
    """``trace_summary`` of a placement: in the drop variant, ``drops/trace_summary`` per partition,
    in ``<reports>/trace/<partition key>/``."""

    @dg.asset(
        key=placement.key(SUMMARY_KEY.path[-1]),
        group_name=TRACE_GROUP + placement.group_suffix,
        deps=[placement.collected_key],
        partitions_def=placement.partitions_def,
        code_version=_code_version(sys.modules[write_trace_summary.__module__]),
        kinds={"python", "json"},
        op_tags={"dagster/priority": "-100"},
        description="trace-summary.json and trace-summary.md over the reports of every domain the collected "
                    "payload carries (as `kvonce conformance` writes them); runs last in its job.",
    )
    def trace_summary(context: dg.AssetExecutionContext, kvonce: KvonceSettings) -> dg.MaterializeResult:
        try:
            if kvonce.reports_url() is None or not placement.publishes:
                return _trace_summary(context, kvonce, placement)
            return publish_after(context, kvonce, lambda: placement.folder_of(context, kvonce),
                                 [TRACE_SUMMARY_MD, TRACE_SUMMARY], lambda: _trace_summary(context, kvonce, placement))
        except ConfigError as error:
            raise dg.Failure(description=str(error), metadata={"verdict": "unusable"}, allow_retries=False) from None

    return trace_summary


def _trace_summary(context: dg.AssetExecutionContext, kvonce: KvonceSettings,
                   placement: Placement) -> dg.MaterializeResult:
    trace_dir = placement.folder_of(context, kvonce)
    record = _collected_record(context, placement.collected_key)
    mentioned = record.get("domains")
    source = str(record.get("source_path") or trace_dir / COLLECTED_FILE)
    installed = registry.installed()
    carried = [d for name, d in installed.items() if not isinstance(mentioned, list) or name in mentioned]
    try:
        for domain in installed.values() if placement.publishes else ():  # their steps ran in other processes
            names = domain.artifact_names()
            folder = domain_folder(trace_dir, domain)
            if kvonce.restore(folder, [names.validation, names.projection]) and not _lists_trace_ids(folder / names.projection):
                kvonce.restore(folder, [names.events])  # read for its trace ids only then
    except OutputError as error:
        raise dg.Failure(description=str(error), metadata={"verdict": "storage"}, allow_retries=False) from None
    results = [r for d in carried if (r := result_from_files(d, domain_folder(trace_dir, d))) is not None]
    if any(r.error is None for r in results):  # as the CLI: an own pass that found no events is left out
        results = [r for r in results if r.error is None or r.domain.runner is None]
    if not results:  # no domain's spans at all: the default domain's report says so, as in the CLI
        default = installed.get(registry.DEFAULT_DOMAIN)
        found = None if default is None else result_from_files(default, domain_folder(trace_dir, default))
        results = [found] if found is not None else []
    try:
        document = write_trace_summary(trace_dir, results, source)
    except KvonceError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    aggregate = document["aggregate"]
    context.log.info(f"trace summary: {aggregate['status']} over {aggregate['domains']} domain(s)")
    path = trace_dir / TRACE_SUMMARY
    table = "\n".join(f"| {d['label']} | {d['status']} | {d['issues']} |" for d in document["domains"])
    return dg.MaterializeResult(
        metadata={**_file(path, kvonce), "markdown_path": dg.MetadataValue.path(kvonce.published_name(trace_dir / TRACE_SUMMARY_MD)),
                  "status": aggregate["status"], "exit_code": aggregate["exitCode"],
                  "domains": dg.MetadataValue.md("| domain | status | issues |\n|---|---|---|\n" + table),
                  "dagster/row_count": aggregate["domains"]},
        data_version=dg.DataVersion(sha256_file(path)),
    )


trace_summary = build_trace_summary()


# --- the definitions -------------------------------------------------------------------------------


def build_domain_definitions(domains: Sequence[Domain] | None = None) -> dg.Definitions:
    """The collected payload, one group per generic domain (default: every installed one), the trace
    summary and the jobs. No resources: the ``kvonce`` resource comes from the top-level definitions,
    whose KvOnce CI graph ``trace_conformance_job`` selects too (by its asset keys)."""
    generic = [d for d in (registry.installed().values() if domains is None else domains) if d.runner is None]
    groups = {domain.name: build_domain_assets(domain) for domain in generic}
    jobs = [
        dg.define_asset_job(
            job_name(domain),
            selection=dg.AssetSelection.assets(COLLECTED_KEY, *groups[domain.name].keys),
            executor_def=dg.in_process_executor,
            description=f"Collect the payload and judge it against {domain.definition.label}; a payload "
                        f"without {domain.definition.label} spans is unusable input.",
        )
        for domain in generic
    ]
    kvonce = dg.AssetSelection.assets(*(dg.AssetKey(name) for name in KVONCE_ASSET_NAMES))
    jobs.append(dg.define_asset_job(
        TRACE_JOB,
        selection=dg.AssetSelection.assets(COLLECTED_KEY, SUMMARY_KEY, *(k for g in groups.values() for k in g.keys))
        | kvonce,
        executor_def=dg.in_process_executor,
        description="Check every domain the payload carries (KvOnce's graph and every domain's group), then "
                    "write trace-summary.json.",
    ))
    return dg.Definitions(assets=[collected_otlp, *groups.values(), trace_summary], jobs=jobs)


