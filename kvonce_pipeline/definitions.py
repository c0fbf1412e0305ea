"""The Dagster ``Definitions``: what ``dagster dev`` and ``dagster job execute -m kvonce_pipeline`` load.

Two variants of one graph, built by the same factory: the unpartitioned CI graph (``kvonce_*``,
run by ``kvonce_conformance_job``) and the drop-folder graph (``drops/kvonce_*``, one dynamic
partition per dropped payload, launched by ``kvonce_drop_sensor``), plus the cross-payload store
``drops/kvonce_store``. Each graph is one multi-asset: its four assets are materialized together,
by one step doing the CLI's one pass (see :mod:`kvonce_pipeline.orchestration.assets`).
"""

from __future__ import annotations

import dagster as dg

from .orchestration import domain_assets
from .orchestration.assets import build_conformance_assets
from .orchestration.drop_assets import (drop_assets, kvonce_drop_job, kvonce_store, kvonce_store_job,
                                         kvonce_store_reset_job)
from .orchestration.resources import KvonceSettings
from .orchestration.sensors import kvonce_drop_sensor
from .orchestration.sharded import kvonce_sharded_job

conformance_assets = build_conformance_assets()

#: The CI path: ``dagster job execute -m kvonce_pipeline -j kvonce_conformance_job`` exits non-zero
#: when the payload violates KvOnce (the step fails with the verdict, ``kvonce_validation`` is not
#: materialized) or is unusable; ``python -m kvonce_pipeline.orchestration.run_verdict`` tells the two
#: apart afterwards (exit 1 and 2, as ``kvonce conformance``), which ``make run`` does.
kvonce_conformance_job = dg.define_asset_job(
    "kvonce_conformance_job",
    selection=dg.AssetSelection.assets(*conformance_assets),
    executor_def=dg.in_process_executor,
    description="Collect the payload, derive events and projection, and judge it against KvOnce.",
)

defs = dg.Definitions.merge(
    dg.Definitions(
        assets=[*conformance_assets, *drop_assets, kvonce_store],
        jobs=[kvonce_conformance_job, kvonce_drop_job, kvonce_store_job, kvonce_store_reset_job, kvonce_sharded_job],
        sensors=[kvonce_drop_sensor],
        resources={"kvonce": KvonceSettings.from_env()},
    ),
    domain_assets.defs,  # every generic domain's group, collected_otlp, trace_summary and their jobs
)
