"""Artifact file names (a contract: CI scripts read them) and where they go."""

from __future__ import annotations

import os
from pathlib import Path

COLLECTED = "collected-kvonce-otlp.json"
EVENTS = "kvonce-events.ndjson"
PROJECTION = "kvonce-projection.json"
STATE_SEQUENCE = "projected/kvonce-state-sequence.json"
VALIDATION = "kvonce-validation.json"
SUMMARY = "kvonce-summary.md"

#: The project root: the folder holding ``kvonce_pipeline/`` (in a source checkout).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_SAMPLE = PROJECT_ROOT / "samples" / "trace" / "kvonce-otlp.json"


def reports_dir() -> Path:
    """``KVONCE_REPORTS_DIR`` or the project's ``hermetic-reports/``."""
    configured = os.environ.get("KVONCE_REPORTS_DIR")
    return Path(configured) if configured else PROJECT_ROOT / "hermetic-reports"


def trace_dir() -> Path:
    """Where the default (non-partitioned) run writes: ``<reports>/trace``."""
    return reports_dir() / "trace"


def drop_dir() -> Path:
    """The drop folder the collector writes and the sensor watches: ``KVONCE_DROP_DIR`` or ``drops/``."""
    configured = os.environ.get("KVONCE_DROP_DIR")
    return Path(configured) if configured else PROJECT_ROOT / "drops"
