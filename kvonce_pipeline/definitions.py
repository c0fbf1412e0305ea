"""The Dagster ``Definitions``: what ``dagster dev`` and ``dagster job execute -m kvonce_pipeline`` load."""

from __future__ import annotations

import dagster as dg

from .orchestration.assets import build_conformance_assets
from .orchestration.resources import KvonceSettings

conformance_assets = build_conformance_assets()

#: The CI path: ``dagster job execute -m kvonce_pipeline -j kvonce_conformance_job`` exits non-zero
#: when the payload violates KvOnce (the blocking ``kvonce_conformance`` check fails).
kvonce_conformance_job = dg.define_asset_job(
    "kvonce_conformance_job",
    selection=dg.AssetSelection.assets(*conformance_assets),
    executor_def=dg.in_process_executor,
    description="Collect the payload, derive events and projection, and judge it against KvOnce.",
)

defs = dg.Definitions(
    assets=conformance_assets,
    jobs=[kvonce_conformance_job],
    resources={"kvonce": KvonceSettings.from_env()},
)
