"""Shared fixtures. Tests run real code: real files, a real (ephemeral) Dagster instance, real
OpenTelemetry SDK encoders and real servers on 127.0.0.1."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = PROJECT_ROOT / "samples" / "trace"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's KVONCE_* settings or writes into the project's reports."""
    for name in list(os.environ):
        if name.startswith("KVONCE_") or name == "GITHUB_STEP_SUMMARY":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KVONCE_REPORTS_DIR", str(tmp_path / "reports"))


@pytest.fixture
def sample_ndjson() -> Path:
    return SAMPLES / "kvonce-sample.ndjson"


@pytest.fixture
def sample_otlp() -> Path:
    return SAMPLES / "kvonce-otlp.json"


@pytest.fixture
def reports_dir(tmp_path: Path) -> Path:
    return tmp_path / "reports"


def write_ndjson(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# The embedded PostgreSQL server for the production-instance tests (imported here to register them).
from .postgres import postgres_server, postgres_url  # noqa: E402,F401

# A third domain made from the template, installed per test (kvonce_pipeline_tests/toy_domain.py).
from .toy_domain import toy, toy_project  # noqa: E402,F401

# A real S3-compatible server (moto's) for the object-store tests (kvonce_pipeline_tests/s3_server.py).
from .s3_server import s3, s3_env, s3_prefix  # noqa: E402,F401
