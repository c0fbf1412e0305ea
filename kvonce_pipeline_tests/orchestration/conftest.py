"""Fixtures shared by the orchestration tests: the jobs against a real S3 server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fsspec
import pytest

from ..engine.test_storage import _s3, s3_env  # noqa: F401 - s3_env: a moto server per test module


@pytest.fixture
def s3(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:  # noqa: F811
    """The jobs run in this process: reach the server as a user would (AWS_* and fsspec's S3 settings)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, s3_env[name])
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_env["FSSPEC_S3_ENDPOINT_URL"]})
    store = _s3(s3_env)
    yield store
