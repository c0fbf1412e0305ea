"""KvOnce's part of ``trace_conformance_job``: skipped, not failed, for a payload of other domains only.

``trace_conformance_job`` checks every domain a payload carries and fails on the worst verdict across
them. KvOnce is checked there by its CI graph (the very multi-asset ``kvonce_conformance_job`` runs,
``collected_kvonce_otlp -> kvonce_events -> kvonce_projection -> kvonce_validation``), which fails on a
payload without KvOnce events ("no kvonce events"), as ``kvonce_conformance_job`` must. In
``trace_conformance_job`` that failure was wrong for an Inventory-only payload: the CLI leaves KvOnce
out of such a payload. So, in that job only, the step first asks :meth:`TraceJobHooks.absent` whether
the payload is another domain's, and if so materializes nothing: the run's log says why, and each of
the four assets gets an observation (metadata ``skipped``: the reason) in its history, so the asset
page shows why this run left it alone.

When KvOnce steps aside (in ``trace_conformance_job`` only):

- an OTLP payload (any encoding, gzip or not) in which the byte scan of ``collected_otlp``
  (:func:`~kvonce_pipeline.orchestration.domains.assets.mentioned_domains`) finds no
  ``kvonce.event.type`` but another installed domain's ``<prefix>type``;
- an NDJSON event log whose domain (an event log names none) is not KvOnce: ``ndjson_domain`` in the
  run config of ``collected_otlp``, else the ``kvonce`` resource's ``ndjson_domain``
  (``KVONCE_NDJSON_DOMAIN``), as :func:`~kvonce_pipeline.orchestration.domains.assets.ndjson_domain`
  decides for ``collected_otlp`` (both steps read the same settings, neither waits for the other).

A payload that carries no installed domain at all is KvOnce's to report, as in the CLI: the step runs
and fails as unusable input ("no kvonce events"), so the run cannot pass on a payload nothing was
checked in. Like a generic domain's group, a skipped KvOnce removes the KvOnce artifacts an earlier
payload left in ``<reports>/trace/`` (our names in our folder; never the input), as ``kvonce
conformance`` does, so ``trace-summary.json`` and the folder describe this payload only.

Why this shape, rather than a variant of KvOnce's graph with optional outputs used only in this job:
an asset key has one definition per code location, so a variant would need keys of its own (a second
``kvonce_events`` under another name, with its own history, checks and staleness), and the UI would show
KvOnce twice, each copy knowing half of the runs. Deciding inside the one multi-asset keeps one KvOnce
lineage whatever job materialized it. Its price: the multi-asset's outputs must be optional, and Dagster
1.13 makes a multi-asset's check outputs optional only when it is subsettable (``can_subset=True``);
its step refuses a partial selection with a clear message instead of Dagster's launch-time error. In
``kvonce_conformance_job`` nothing changes: same assets, checks, failures and bytes (the hook answers
None outside ``trace_conformance_job``). The drop graph keeps ``can_subset=False``: the sensor already
runs KvOnce's drop graph only for a drop that carries KvOnce.

The cost in ``trace_conformance_job``: one more byte scan of the payload (0.07 s per 100 MB of
OTLP/JSON; it stops at the first ``kvonce.event.type``, in the first span of a KvOnce payload).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ...engine import registry
from ...engine.decode.reader import InputFormat, detect_format
from ...engine.payload import remove_domain_artifacts
from ...engine.errors import ConfigError, InputError
from ..conformance.assets import ConformanceHooks
from ..resources import KvonceSettings
from .assets import TRACE_JOB, configured_ndjson_domain, mentioned_domains, ndjson_domain


class TraceJobHooks(ConformanceHooks):
    """The CI graph's hooks: nothing added, except stepping aside in ``trace_conformance_job``."""

    may_skip = True

    def absent(self, context: dg.AssetExecutionContext, settings: KvonceSettings, source: Path,
               out_dir: Path) -> str | None:
        if context.job_name != TRACE_JOB:
            return None
        why = self._other_domains(context, settings, source)
        if why is None:
            return None
        removed = remove_domain_artifacts(out_dir, registry.get(registry.DEFAULT_DOMAIN), source)
        return why + (f" (removed an earlier payload's {', '.join(removed)})" if removed else "")

    @staticmethod
    def _other_domains(context: dg.AssetExecutionContext, settings: KvonceSettings, source: Path) -> str | None:
        limits = settings.limits()
        try:
            detected, _ = detect_format(source, hint=settings.input_format, limits=limits)
        except InputError:
            return None  # the pass says what is wrong with it, as in kvonce_conformance_job
        if detected is InputFormat.NDJSON:
            domain = ndjson_domain(context, settings, configured_ndjson_domain(context))
            if domain == registry.DEFAULT_DOMAIN:
                return None
            try:
                registry.get(domain)
            except ConfigError as error:  # collected_otlp fails with the same message
                raise dg.Failure(description=str(error), metadata={"verdict": "unusable"},
                                 allow_retries=False) from None
            return f"{settings.payload_label(source)} is an NDJSON event log of {domain} (ndjson_domain)"
        try:
            carried = mentioned_domains(source, limits)
        except InputError:
            return None
        if registry.DEFAULT_DOMAIN in carried or not carried:
            return None  # KvOnce's, or nobody's: KvOnce's pass reports "no kvonce events" as it always has
        prefix = registry.get(registry.DEFAULT_DOMAIN).definition.prefix
        return f"no span of {settings.payload_label(source)} carries {prefix}type; it carries {', '.join(carried)}"


trace_job_hooks = TraceJobHooks()
