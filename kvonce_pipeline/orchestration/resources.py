"""Run settings as a Dagster resource, so they show (and can be changed) in the launchpad."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from ..engine import artifacts
from ..domains.kvonce import artifacts as kvonce_artifacts
from ..engine.limits import Limits
from ..domains.kvonce.validation import DEFAULT_MAX_RETRIES


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class KvonceSettings(dg.ConfigurableResource):
    """Where the payload comes from, where reports go, and how strictly to judge.

    Defaults come from ``KVONCE_OTLP_PAYLOAD``, ``KVONCE_REPORTS_DIR``, ``KVONCE_STRICT``,
    ``KVONCE_MAX_RETRIES``, ``KVONCE_DROP_SETTLE_SECONDS`` and ``KVONCE_NDJSON_DOMAIN`` when the code
    location loads (see :meth:`from_env`); the drop folder and reports folder, when not set, follow the
    environment when used.
    """

    payload: str | None = None
    reports_dir: str | None = None
    strict: bool = False
    max_retries: int = DEFAULT_MAX_RETRIES
    input_format: str = "auto"
    #: The folder the drop sensor watches (``KVONCE_DROP_DIR``, read when used, else ``drops/``).
    drop_dir: str | None = None
    #: Seconds a dropped file's mtime must be old before it is read (non-atomic writers finish first).
    drop_settle_seconds: float = 2.0
    #: The domain of an NDJSON event log in ``trace_conformance_job`` and in a materialization from the UI
    #: (``KVONCE_NDJSON_DOMAIN``; ``kvonce conformance --domain``): an event log names no domain. Unset: the
    #: default domain (KvOnce). ``<name>_conformance_job`` reads it as its own domain's whatever this says;
    #: the drop folder ignores it (a dropped log says its domain by name: ``<stem>.<domain>.ndjson``).
    ndjson_domain: str | None = None

    @classmethod
    def from_env(cls) -> "KvonceSettings":
        raw_retries = os.environ.get("KVONCE_MAX_RETRIES", "").strip()
        return cls(
            payload=os.environ.get("KVONCE_OTLP_PAYLOAD") or None,
            reports_dir=os.environ.get("KVONCE_REPORTS_DIR") or None,
            strict=_env_bool("KVONCE_STRICT"),
            max_retries=int(raw_retries) if raw_retries else DEFAULT_MAX_RETRIES,
            input_format=os.environ.get("KVONCE_FORMAT") or "auto",
            drop_settle_seconds=float(os.environ.get("KVONCE_DROP_SETTLE_SECONDS", "").strip() or 2.0),
            ndjson_domain=os.environ.get("KVONCE_NDJSON_DOMAIN", "").strip() or None,
        )

    def reports_root(self) -> Path:
        return Path(self.reports_dir) if self.reports_dir else artifacts.reports_dir()

    def trace_dir(self) -> Path:
        return self.reports_root() / "trace"

    def drop_root(self) -> Path:
        return Path(self.drop_dir) if self.drop_dir else artifacts.drop_dir()

    def limits(self) -> Limits:
        return Limits.from_env()

    def resolve_payload(self) -> Path:
        """``payload`` if set, else the bundled sample, else a run of the mock service."""
        if self.payload:
            return Path(self.payload).expanduser().resolve()
        if kvonce_artifacts.BUNDLED_SAMPLE.is_file():
            return kvonce_artifacts.BUNDLED_SAMPLE
        from ..devtools.mock_service import generate_payload

        return generate_payload(self.reports_root() / "mock")
