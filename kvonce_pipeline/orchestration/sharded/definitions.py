"""Key shards' definitions: ``kvonce_sharded_job``."""

from __future__ import annotations

import dagster as dg

from .job import kvonce_sharded_job

#: No resources here: ``kvonce_pipeline.definitions`` binds ``kvonce`` once for every area.
defs = dg.Definitions(jobs=[kvonce_sharded_job])
