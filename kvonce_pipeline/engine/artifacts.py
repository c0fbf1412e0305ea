"""Where artifacts go: the reports folder, the CLI's and the drop folder (each domain names its files)."""

from __future__ import annotations

import os
from pathlib import Path

#: The project root: the folder holding ``kvonce_pipeline/`` (in a source checkout).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def reports_dir() -> Path:
    """``KVONCE_REPORTS_DIR`` or the project's ``hermetic-reports/``."""
    configured = os.environ.get("KVONCE_REPORTS_DIR")
    return Path(configured) if configured else PROJECT_ROOT / "hermetic-reports"


def trace_dir() -> Path:
    """Where the default (non-partitioned) run writes: ``<reports>/trace``."""
    return reports_dir() / "trace"


def cli_trace_dir() -> Path:
    """Where ``kvonce conformance`` writes without ``--output-dir``: ``<reports>/cli/trace``.

    Apart from the Dagster job's ``<reports>/trace`` on purpose: the job records each artifact's
    path and sha256 in its materializations, and a CLI run over the same folder would leave the UI
    pointing at other bytes.
    """
    return reports_dir() / "cli" / "trace"


def drop_location() -> Path | str:
    """The drop folder the sensor watches: ``KVONCE_DROP_DIR`` or ``drops/``; a URL (``s3://bucket/drops``)
    is kept as text (a Path would fold its ``//``): the sensor and the drop runs read it through fsspec."""
    from .drops import drop_root_of

    configured = os.environ.get("KVONCE_DROP_DIR", "").strip()
    return drop_root_of(configured) if configured else PROJECT_ROOT / "drops"


def drop_dir() -> Path:
    """The drop folder as a local (or shared POSIX) folder: ``KVONCE_DROP_DIR`` or ``drops/``, for what
    writes files into it. The collector and the mock service handle a URL before they ask (they upload
    to it); here a URL is a :class:`ConfigError` (see :func:`drop_location` for the readers)."""
    location = drop_location()
    if isinstance(location, str):
        from .errors import ConfigError

        raise ConfigError(f"KVONCE_DROP_DIR is {location}: a URL, where a local folder is needed (the "
                          "collector uploads to a URL from its --spool-dir, kvonce mock uploads its payload)")
    return location
