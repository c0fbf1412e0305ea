"""Every generic domain's group on the drop folder's partitions, and which groups a drop needs.

``drops/collected_otlp -> drops/<name>_events -> drops/<name>_projection -> drops/<name>_validation``
(group ``<name>_drops``, one per installed generic domain) is the CI variant's group (the same
factory, :func:`~kvonce_pipeline.orchestration.domains.assets.build_domain_assets`) on the same dynamic
partitions as KvOnce's drop graph (``drop_partitions``: one per dropped payload), with partitioned
checks (one verdict per payload). A domain's artifacts for a drop go to
``<reports>/trace/<partition key>/<name>/``, beside KvOnce's in ``<reports>/trace/<partition key>/``.

``drops/trace_summary`` (group ``trace_drops``, last in its run) writes the drop's
``trace-summary.json``/``.md`` over the reports of the domains it carries, KvOnce's included, in the
partition's folder: the same bytes as ``kvonce conformance`` for the dropped file (tested for an
Inventory drop; a KvOnce report in a drop folder is reconciled with the store, so it can differ).

``drops/collected_otlp`` (group ``trace_drops``) finds the partition's payload by content
(:func:`~kvonce_pipeline.engine.drops.locate_payload`, the run tags only give hints) through a private
copy of its own, ``.otlp-source-payload``: KvOnce's drop step removes its own copy when it finishes,
and the two steps of one run must not depend on which runs first. The copy is read once (hashed and
copied in the same read), collected as spec OTLP/JSON into ``collected-otlp.json`` and removed.

Why these groups do not hang off KvOnce's ``drops/collected_kvonce_otlp``: KvOnce's step fails on a
violation and on a payload without KvOnce spans, and Dagster abandons every step downstream of a
failed one (see :mod:`kvonce_pipeline.orchestration.domains.assets`). A mixed drop's Inventory verdict
must not depend on its KvOnce verdict.

Which groups run for a drop is the sensor's choice (:func:`selection_for`, after
:func:`~kvonce_pipeline.orchestration.domains.assets.mentioned_domains`): the
same byte scan ``kvonce conformance`` uses (``payload_mentions`` on each installed domain's
``<prefix>type``), run once per new file, stopping as soon as every domain's attribute name was
seen. A drop that names no generic domain is routed exactly as before the domains existed
(``kvonce_drop_job``: same run, tags, artifacts, store and envelope), which also keeps an unreadable
or NDJSON payload's clear KvOnce error. Every other drop runs ``trace_drop_job`` limited to the
groups it carries (plus KvOnce's drop graph when it carries KvOnce spans), so an Inventory-only
drop no longer launches a KvOnce run that can only fail with "no kvonce events".

An NDJSON event log names no domain, so the scan finds none in it: a log of another domain is
dropped under a name that says whose it is, ``<stem>.<domain>.ndjson`` (``.gz`` allowed; see
:func:`~kvonce_pipeline.engine.drops.domain_in_name`), and :func:`ndjson_drop_domain` routes it to that
domain's drop group; ``drops/collected_otlp`` reads it through that domain's mapping. Every other
NDJSON drop is KvOnce's, exactly as before (a log named ``<stem>.kvonce.ndjson`` too). Why a name and
not sniffing the events' types against each domain's: a KvOnce log with a typo'd type, or a type two
domains share, would be routed by a guess; the name is the user's word, and a wrong one shows in the
run's tags (``kvonce/domains``) and fails that domain's run with its findings.

The scan's cost, per new file, on top of the sensor's hash of it: a KvOnce-only payload (no other
domain's name to find, so the whole file is read) of 100 MB OTLP/JSON (``kvonce generate --events
200000 --keys 20000 --format otlp-json``), from the page cache, medians of 5: hash 0.08 s, scan 0.07 s;
the same file gzipped (12.6 MB, ``gzip -1``): scan 0.24 s, as it reads the inflated bytes. A payload
that names every installed domain near its start costs one 8 MiB read.

The tick's hashing budget bounds the files' bytes, not their inflated size, and a gzip file's scan
reads its inflated bytes (about 2.4 s per GB on an idle machine here, 4.3 s on a busy one): a full
2 GiB hashing budget of 8:1 files would scan some 40 s of the sensor's 60 s. So the scans of one tick
have a budget of their own (:class:`ScanBudget`, ``MAX_SCANNED_BYTES_PER_TICK`` = 2 GiB inflated, in
8 MiB reads) beyond the tick's first file, which is always read to its end so that every tick makes
progress: once the budget is spent, the file being scanned and every new file after it wait for the
next tick (not registered, not remembered as handled; the next tick hashes them again, which costs
0.08 s per 100 MB, and scans them first). One file alone is bounded only by the input limits
(``KVONCE_MAX_DROP_FILE_BYTES`` on disk, ``KVONCE_MAX_COMPRESSION_RATIO`` and
``KVONCE_MAX_DECOMPRESSED_BYTES`` inflated): a 256 MiB gzip file of a 30:1 trace scans about 7.5 GiB.
Measured with ``benchmarks/drop_tick_scan.py --files 100`` (a full tick: 100 gzip files of a KvOnce
trace, 10.1 MiB each, 95.7 MiB inflated, 9.5:1; the real sensor function on an ephemeral instance):
without the scan budget one tick of 22.9 s read 9.4 GiB inflated; with it the slowest of 5 ticks took
5.4 s (2.0 GiB read), all five 24.0 s (the files left over are hashed again and the scan that ran out
is read again from its start: 5 % more work in all, for a bounded tick).
"""


import hashlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from ...engine import drops, registry
from ...engine.decode.reader import InputFormat, detect_format
from ...engine.domain import Domain
from ...engine.errors import ConfigError, InputError
from ...engine.limits import Limits
from ..domains import assets as domain_assets
from ..conformance.assets import publish_after
from ..domains.assets import (COLLECTED_FILE, Placement, build_domain_assets, build_trace_summary, collect_as_otlp,
                              mentioned_domains, unusable_failure)
from ..resources import KvonceSettings
from .assets import PREFIX, TAG_BYTES, TAG_NAME, TAG_SHA, drop_assets, drop_output, drop_partitions

#: The group of ``drops/collected_otlp`` (the CI variant's is ``trace``).
TRACE_DROPS_GROUP = "trace_drops"
#: In the partition's folder while ``drops/collected_otlp`` runs (KvOnce's step has its own copy).
PRIVATE_COPY = ".otlp-source-payload"
#: Run tag of a ``trace_drop_job`` run: the domains the sensor found in the drop, comma-separated.
TAG_DOMAINS = "kvonce/domains"
TRACE_DROP_JOB = "trace_drop_job"


def _drop_folder(context: dg.AssetExecutionContext, settings: KvonceSettings) -> Path:
    return drop_output(context, settings)


#: publishes: for a reports URL each step's files go to ``<url>/trace/<partition>/`` (the report last)
PLACEMENT = Placement(key_prefix=(PREFIX,), partitions_def=drop_partitions, group_suffix="_drops",
                      folder_of=_drop_folder, publishes=True)
DROP_COLLECTED_KEY = PLACEMENT.collected_key


def _generic(domains: dict[str, Domain] | None = None) -> list[Domain]:
    return [d for d in (registry.installed() if domains is None else domains).values() if d.runner is None]


def ndjson_drop_domain(path: Path, name: str, limits: Limits, hint: str = "auto") -> str | None:
    """The generic domain a dropped NDJSON event log is named for (``<stem>.<domain>.ndjson``); None for
    any other drop (an OTLP payload names its domains itself; an NDJSON log named for no domain, or for
    KvOnce, is KvOnce's as before). Raises :class:`InputError` when the file cannot be read."""
    named = drops.domain_in_name(name, registry.installed())
    if named is None or named == registry.DEFAULT_DOMAIN:
        return None
    detected, _ = detect_format(path, hint=hint, limits=limits)
    return named if detected is InputFormat.NDJSON else None


class OverBudget(Exception):
    """This tick's scan budget ran out inside a file: the file waits for the next tick."""


@dataclass
class ScanBudget:
    """The inflated bytes the sensor's domain scans may still read in this tick (see the module).

    The first file scanned in a tick is read to its end whatever it costs (its input limits bound it),
    so that every tick makes progress; the files after it only while the budget lasts."""

    remaining: int
    first: bool = True
    #: inflated bytes read by this tick's scans (the log's and the benchmark's figure)
    read: int = 0


def mentioned_within(path: Path, limits: Limits, budget: ScanBudget,
                     domains: dict[str, Domain] | None = None) -> list[str]:
    """:func:`~kvonce_pipeline.orchestration.domains.assets.mentioned_domains`, counting the inflated bytes
    it reads against ``budget``; raises :class:`OverBudget` when they pass it (not in the tick's first file)."""
    unbounded, budget.first = budget.first, False

    def count(size: int) -> None:
        budget.read += size
        budget.remaining -= size
        if budget.remaining < 0 and not unbounded:
            raise OverBudget(path)

    return mentioned_domains(path, limits, domains, on_read=count)


def _source_of(context: dg.AssetExecutionContext, settings: KvonceSettings) -> drops.DropFile:
    tags = context.run.tags
    size = tags.get(TAG_BYTES, "")
    return drops.locate_payload(settings.drop_root(), drop_output(context, settings).name, name=tags.get(TAG_NAME),
                                sha256=tags.get(TAG_SHA), size=int(size) if size.isdigit() else None,
                                limits=settings.limits(), copy_to=drop_output(context, settings) / PRIVATE_COPY)


@dg.asset(
    key=DROP_COLLECTED_KEY,
    group_name=TRACE_DROPS_GROUP,
    partitions_def=drop_partitions,
    code_version=hashlib.sha256(b"".join(inspect.getsource(m).encode() for m in (
        drops, domain_assets, sys.modules[__name__]))).hexdigest()[:12],
    kinds={"python", "json"},
    description="A dropped payload (one partition per payload), found by content and collected as spec OTLP/JSON "
                "(<reports>/trace/<partition>/collected-otlp.json) for every domain's drop group; its metadata "
                "lists the installed domains whose spans it carries.",
)
def drop_collected_otlp(context: dg.AssetExecutionContext, kvonce: KvonceSettings) -> dg.MaterializeResult:
    folder = drop_output(context, kvonce)
    if kvonce.reports_url() is None:
        return _drop_collected_otlp(context, kvonce, folder)
    return publish_after(context, kvonce, lambda: folder, [COLLECTED_FILE],
                         lambda: _drop_collected_otlp(context, kvonce, folder))


def _drop_collected_otlp(context: dg.AssetExecutionContext, kvonce: KvonceSettings,
                         folder: Path) -> dg.MaterializeResult:
    copy = folder / PRIVATE_COPY
    found: drops.DropFile | None = None
    try:
        found = _source_of(context, kvonce)
        named = drops.domain_in_name(found.name, registry.installed())  # only an NDJSON log's mapping uses it
        collected = collect_as_otlp(copy, folder / COLLECTED_FILE, kvonce, named or registry.DEFAULT_DOMAIN)
        carried = mentioned_domains(collected.path, kvonce.limits())
    except InputError as error:
        if found is not None and error.source == str(copy):  # the user knows their file, not our copy
            error = InputError(found.location, error.message, where=error.where)
        raise unusable_failure(error) from None
    except ConfigError as error:
        raise dg.Failure(description=str(error), metadata={"verdict": "unusable"}, allow_retries=False) from None
    finally:
        copy.unlink(missing_ok=True)
    context.log.info(f"{found.location} carries the spans of: {', '.join(carried) or 'no installed domain'}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(kvonce.published_name(collected.path)),
            "sha256": collected.sha256,
            "bytes": collected.size,
            "partition": context.partition_key,
            "source_file": found.label,
            "source_path": dg.MetadataValue.path(found.location),
            "source_sha256": found.sha256,
            "source_bytes": found.size,
            "source_arrived_at": found.arrived_at,
            "source_format": collected.format.value,
            "source_compressed": collected.compressed,
            "converted": collected.converted,
            "run_id": context.run_id,
            "domains": dg.MetadataValue.json(carried),
        },
        data_version=dg.DataVersion(collected.sha256),
    )


def build_drop_groups(domains: dict[str, Domain] | None = None) -> dict[str, dg.AssetsDefinition]:
    """One partitioned group per generic domain (default: every installed one), by domain name."""
    return {domain.name: build_domain_assets(domain, PLACEMENT) for domain in _generic(domains)}


drop_groups = build_drop_groups()
#: ``drops/trace_summary``: ``trace-summary.json``/``.md`` of the drop, over the reports of the domains it
#: carries (KvOnce's included), in the partition's folder; in every ``trace_drop_job`` run, last.
drop_trace_summary = build_trace_summary(PLACEMENT)
DROP_SUMMARY_KEY = drop_trace_summary.key


@dataclass(frozen=True)
class DropSelection:
    """What one drop's ``trace_drop_job`` run materializes and checks."""

    assets: list[dg.AssetKey]
    #: given explicitly so the run's checks do not depend on how a launcher fills in a missing selection
    checks: list[dg.AssetCheckKey]


def selection_for(carried: list[str], groups: dict[str, dg.AssetsDefinition] | None = None,
                  ) -> DropSelection | None:
    """The drop run's assets and checks for a payload carrying the domains ``carried``; None: KvOnce's
    drop job as before (no generic domain with a drop group among them)."""
    groups = drop_groups if groups is None else groups
    chosen = [groups[name] for name in carried if name in groups]
    if not chosen:
        return None
    if registry.DEFAULT_DOMAIN in carried:
        chosen += drop_assets
    return DropSelection([DROP_COLLECTED_KEY, *(key for assets in chosen for key in assets.keys), DROP_SUMMARY_KEY],
                         [key for assets in chosen for key in assets.check_keys])


trace_drop_job = dg.define_asset_job(
    TRACE_DROP_JOB,
    selection=dg.AssetSelection.assets(DROP_COLLECTED_KEY, DROP_SUMMARY_KEY,
                                       *(k for g in drop_groups.values() for k in g.keys),
                                       *(k for a in drop_assets for k in a.keys)),
    partitions_def=drop_partitions,
    executor_def=dg.in_process_executor,
    description="One dropped payload (a dynamic partition), every domain it carries: the sensor launches it "
                "limited to those domains' drop groups (and KvOnce's drop graph when it carries KvOnce spans).",
)
