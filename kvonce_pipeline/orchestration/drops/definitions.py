"""The drop folder's definitions: the partitioned graph, the cross-payload store, their jobs and the sensor."""

from __future__ import annotations

import dagster as dg

from .assets import drop_assets, kvonce_drop_job, kvonce_store, kvonce_store_job, kvonce_store_reset_job
from .sensors import kvonce_drop_sensor

#: No resources here: ``kvonce_pipeline.definitions`` binds ``kvonce`` once for every area.
defs = dg.Definitions(
    assets=[*drop_assets, kvonce_store],
    jobs=[kvonce_drop_job, kvonce_store_job, kvonce_store_reset_job],
    sensors=[kvonce_drop_sensor],
)
