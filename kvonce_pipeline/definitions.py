"""The Dagster ``Definitions``: what ``dagster dev`` and ``dagster job execute -m kvonce_pipeline`` load.

KvOnce's graph in two variants built by the same factory: the unpartitioned CI graph (``kvonce_*``,
run by ``kvonce_conformance_job``) and the drop-folder graph (``drops/kvonce_*``, one dynamic
partition per dropped payload), plus the cross-payload store ``drops/kvonce_store``. Every other
installed domain gets the same two variants from one factory over its definition (``<name>_*`` and
``drops/<name>_*``), fed by the domain-neutral ``collected_otlp`` / ``drops/collected_otlp``, with
``trace_summary`` over every domain of a payload. ``kvonce_drop_sensor`` launches, per dropped payload,
a run of the domains it carries.

Each area of ``orchestration/`` defines its own ``defs`` (assets, jobs, sensors) without
resources; they are merged here and the one ``kvonce`` resource is bound once, for all of them.
"""

from __future__ import annotations

import dagster as dg

from .orchestration.conformance import definitions as conformance
from .orchestration.drops import definitions as drops
from .orchestration.domains import definitions as domains
from .orchestration.resources import KvonceSettings
from .orchestration.sharded import definitions as sharded

defs = dg.Definitions.merge(
    conformance.defs,
    drops.defs,
    sharded.defs,
    domains.defs,  # every generic domain's group, collected_otlp, trace_summary and their jobs
    dg.Definitions(resources={"kvonce": KvonceSettings.from_env()}),
)
