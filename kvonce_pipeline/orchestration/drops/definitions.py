"""The drop folder's definitions: KvOnce's partitioned graph, the cross-payload store, every generic
domain's partitioned group with ``drops/collected_otlp``, their jobs and the sensor."""

from __future__ import annotations

import dagster as dg

from .assets import drop_assets, kvonce_drop_job, kvonce_store, kvonce_store_job, kvonce_store_reset_job
from .domains import drop_collected_otlp, drop_groups, drop_trace_summary, trace_drop_job
from .sensors import kvonce_drop_sensor

#: No resources here: ``kvonce_pipeline.definitions`` binds ``kvonce`` once for every area.
defs = dg.Definitions(
    assets=[*drop_assets, kvonce_store, drop_collected_otlp, *drop_groups.values(), drop_trace_summary],
    jobs=[kvonce_drop_job, kvonce_store_job, kvonce_store_reset_job, trace_drop_job],
    sensors=[kvonce_drop_sensor],
)
