"""``kvonce_sharded_job``: the conformance run in key shards on a distributed engine, as a Dagster job.

A thin op around :func:`kvonce_pipeline.domains.kvonce.own_pass.shards.run_sharded`, so the laptop and the cluster run the
same code: the run config says how many shards and where they run (``engine: dask`` with a
``scheduler`` address, or ``KVONCE_DASK_SCHEDULER``, or a local cluster started for the run;
``engine: local`` in this process). It reads the payload and writes the reports where
``kvonce_conformance_job`` does (the ``kvonce`` resource: ``<reports>/trace``), with the same bytes,
and fails the run the same way: a violation is :class:`~kvonce_pipeline.orchestration.conformance.assets.Violations`
(the verdict as the failure's message), an unusable input a failure with ``verdict: unusable``, so
``python -m kvonce_pipeline.orchestration.run_verdict --job kvonce_sharded_job`` gives the CLI's
exit codes.

URLs, as ``kvonce conformance --shards S`` takes them (``KvonceSettings`` stages and publishes, as for
``kvonce_conformance_job``): a payload URL is downloaded once into the run's private copy, which is
split (an object that cannot be read is an unusable input); a reports URL is a private local folder
whose files are published when the run ends, the report last, whatever the verdict, and the
metadata and failure messages name the published objects. The one refusal: a reports URL when the
shards run on a scheduler (``scheduler`` or ``KVONCE_DASK_SCHEDULER``), because the shard files are
written beside the reports and every worker must read them; a local cluster or ``engine: local``
shares this machine's staging folder.

Why an op job and not the asset graph: the four conformance assets are materialized by one step
that also collects the payload and runs the Pandera checks in process; the sharded run's point
is that no single process holds the whole trace's per-key state, so it records its artifacts as
the op's output metadata (path, sha256, size) and leaves the asset graph to the one-pass job.
"""

# (no "from __future__ import annotations": Dagster reads the op's annotations at definition time)

import hashlib
import os
from pathlib import Path
from typing import Any

import dagster as dg

from ...domains.kvonce import artifacts
from ...domains.kvonce.own_pass.conformance import ConformanceOptions
from ...domains.kvonce.own_pass.conformance import report_input_error
from ...engine.errors import ConfigError, InputError
from ...engine.storage import StagedInput
from ...domains.kvonce.own_pass.shards import ENGINES, MAX_SHARDS, SCHEDULER_ENV, EngineError, engine_for, run_sharded
from ..conformance.assets import PUBLISHED as ONE_PASS_PUBLISHED
from ..conformance.assets import Violations, publish_after
from ..resources import KvonceSettings

#: The artifacts the sharded run publishes (the one pass's, without the collected copy).
PUBLISHED = (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE, artifacts.VALIDATION,
             artifacts.SUMMARY)


class ShardedRunConfig(dg.Config):
    """How the run is split and where its shards run (the launchpad's form)."""

    shards: int = 2
    #: ``dask``: a dask.distributed cluster (``scheduler``, else ``KVONCE_DASK_SCHEDULER``, else a
    #: local cluster of ``shards`` worker processes for this run); ``local``: one after the other here.
    engine: str = "dask"
    scheduler: str | None = None


def _file(path: Path, kvonce: KvonceSettings) -> dict[str, Any]:
    """The artifact's name (its published URL when the reports go to one), sha256 and size."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": kvonce.published_name(path), "sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def _scheduler(config: ShardedRunConfig) -> str | None:
    """The scheduler the shards will run on, if any (``KVONCE_DASK_SCHEDULER`` counts only for dask)."""
    return config.scheduler or (os.environ.get(SCHEDULER_ENV) if config.engine == "dask" else None) or None


def _unusable(error: InputError) -> dg.Failure:
    return dg.Failure(description=f"unusable input: {error}",
                      metadata={"verdict": "unusable", "source": error.source, "where": error.where or "",
                                "message": error.message}, allow_retries=False)


@dg.op(description="Split the payload into key shards, check them on the engine, merge the reports.")
def kvonce_sharded_check(context: dg.OpExecutionContext, config: ShardedRunConfig,
                         kvonce: KvonceSettings) -> dg.Output[dict[str, Any]]:
    if config.engine not in ENGINES:
        raise dg.Failure(description=f"engine {config.engine!r} is not one of {', '.join(ENGINES)}")
    if not 1 <= config.shards <= MAX_SHARDS:
        raise dg.Failure(description=f"shards must be 1 to {MAX_SHARDS}, not {config.shards}")
    if config.scheduler and config.engine != "dask":
        raise dg.Failure(description="a scheduler address needs engine: dask")
    scheduler, reports_url = _scheduler(config), kvonce.reports_url()
    if scheduler and reports_url:
        raise dg.Failure(description=f"KVONCE_REPORTS_DIR is {reports_url}: when the shards run on a scheduler "
                                     f"({scheduler}) the reports must be a folder every dask worker sees (the shard "
                                     "files are written beside them), not a URL; run on engine: local or a local "
                                     "cluster, or give a shared folder", metadata={"verdict": "unusable"},
                         allow_retries=False)
    try:
        out_dir = kvonce.trace_dir()  # for a reports URL: this run's private staging folder
    except ConfigError as error:  # a reports URL whose backend is not installed
        raise dg.Failure(description=str(error), metadata={"verdict": "unusable"}, allow_retries=False) from None
    if reports_url is None:
        return _check(context, config, kvonce, out_dir)
    # Published whatever the verdict (the report last), as kvonce_conformance_job publishes
    # (with the collected-copy name, so a one-pass run's copy at that prefix is removed, as ``stale`` does here)
    return publish_after(context, kvonce, lambda: out_dir, ONE_PASS_PUBLISHED,
                         lambda: _check(context, config, kvonce, out_dir))


def _check(context: dg.OpExecutionContext, config: ShardedRunConfig, kvonce: KvonceSettings,
           out_dir: Path) -> dg.Output[dict[str, Any]]:
    try:
        payload = kvonce.resolve_payload()  # a payload URL: downloaded once, into this run's private copy
    except InputError as error:  # an object that cannot be read: an unusable input, reported like any
        report_input_error(error, out_dir)
        raise _unusable(error) from None
    label = kvonce.payload_label(payload)
    # a staged copy is read as itself and named as its URL (findings, input errors, the report's source)
    source: Path | StagedInput = StagedInput(label, payload) if label != str(payload) else payload
    options = ConformanceOptions(format=kvonce.input_format, strict=kvonce.strict, max_retries=kvonce.max_retries,
                                 limits=kvonce.limits())
    where = config.scheduler or (f"${SCHEDULER_ENV} or a local cluster" if config.engine == "dask" else "this process")
    context.log.info(f"checking {label} in {config.shards} key shard(s) on {config.engine} ({where})")
    try:
        with engine_for(config.engine, shards=config.shards, scheduler=config.scheduler) as engine:
            run = run_sharded(source, out_dir, options, shards=config.shards, engine=engine,
                              stale=(artifacts.COLLECTED,))
    except InputError as error:
        raise _unusable(error) from None
    except EngineError as error:
        raise dg.Failure(description=str(error)) from error
    timings = {"split_s": round(run.split.seconds, 3), "check_s": round(run.check_seconds, 3),
               "merge_s": round(run.merge_seconds, 3)}
    context.log.info(f"split {timings['split_s']} s, shards {timings['check_s']} s, merge {timings['merge_s']} s; "
                     f"events per shard {run.split.per_shard}")
    files = {name: _file(out_dir / name, kvonce) for name in PUBLISHED}
    metadata: dict[str, Any] = {
        "shards": config.shards, "engine": config.engine, "events_per_shard": str(run.split.per_shard),
        **timings, **{f"{name} sha256": entry["sha256"] for name, entry in files.items()},
        "reports": dg.MetadataValue.path(kvonce.published_name(out_dir)),
    }
    report = run.result.report
    if not report["valid"]:
        raise Violations(report, label, kvonce.published_name(out_dir / artifacts.SUMMARY), metadata,
                         kvonce.published_name(out_dir / artifacts.VALIDATION))
    return dg.Output({"valid": True, "files": files, **timings}, metadata=metadata)


@dg.job(description="The conformance run in key shards on a distributed engine (the same reports, byte "
                    "for byte, as kvonce_conformance_job's).", executor_def=dg.in_process_executor)
def kvonce_sharded_job() -> None:
    kvonce_sharded_check()
