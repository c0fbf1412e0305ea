"""Run settings as a Dagster resource, so they show (and can be changed) in the launchpad."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from .. import artifacts
from ..limits import Limits
from ..validation import DEFAULT_MAX_RETRIES


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class KvonceSettings(dg.ConfigurableResource):
    """Where the payload comes from, where reports go, and how strictly to judge.

    Defaults come from ``KVONCE_OTLP_PAYLOAD``, ``KVONCE_REPORTS_DIR``, ``KVONCE_STRICT`` and
    ``KVONCE_MAX_RETRIES`` when the code location loads (see :meth:`from_env`).
    """

    payload: str | None = None
    reports_dir: str | None = None
    strict: bool = False
    max_retries: int = DEFAULT_MAX_RETRIES
    input_format: str = "auto"

    @classmethod
    def from_env(cls) -> "KvonceSettings":
        raw_retries = os.environ.get("KVONCE_MAX_RETRIES", "").strip()
        return cls(
            payload=os.environ.get("KVONCE_OTLP_PAYLOAD") or None,
            reports_dir=os.environ.get("KVONCE_REPORTS_DIR") or None,
            strict=_env_bool("KVONCE_STRICT"),
            max_retries=int(raw_retries) if raw_retries else DEFAULT_MAX_RETRIES,
            input_format=os.environ.get("KVONCE_FORMAT") or "auto",
        )

    def reports_root(self) -> Path:
        return Path(self.reports_dir) if self.reports_dir else artifacts.reports_dir()

    def trace_dir(self) -> Path:
        return self.reports_root() / "trace"

    def limits(self) -> Limits:
        return Limits.from_env()

    def resolve_payload(self) -> Path:
        """``payload`` if set, else the bundled sample, else a run of the mock service."""
        if self.payload:
            return Path(self.payload).expanduser().resolve()
        if artifacts.BUNDLED_SAMPLE.is_file():
            return artifacts.BUNDLED_SAMPLE
        from ..mock_service import generate_payload

        return generate_payload(self.reports_root() / "mock")
