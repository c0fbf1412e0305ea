"""The domains area's definitions: one asset group per installed generic domain (made by
:func:`~kvonce_pipeline.orchestration.domains.assets.build_domain_assets` from its definition),
``collected_otlp``, ``trace_summary``, ``<name>_conformance_job`` and ``trace_conformance_job``."""

from __future__ import annotations

from .assets import build_domain_definitions

defs = build_domain_definitions()
