"""A real S3-compatible server for the tests: moto's, from PyPI, started on loopback once per test
module that asks for it and stopped after it (fixtures registered by the top-level conftest)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest

from kvonce_pipeline.devtools.local_s3 import local_s3_server

BUCKET = "kvonce-test"


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A real moto S3 server on 127.0.0.1 and the environment a user would set to reach it."""
    with local_s3_server() as endpoint:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": endpoint}
        s3 = s3_client(env)
        s3.mkdir(BUCKET)
        yield env


def s3_client(env: dict[str, str]):  # noqa: ANN202 - s3fs.S3FileSystem
    import s3fs

    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"], skip_instance_cache=True)


@pytest.fixture
def s3(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The jobs run in this process: reach the server as a user would (AWS_* and fsspec's S3 settings)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, s3_env[name])
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_env["FSSPEC_S3_ENDPOINT_URL"]})
    store = s3_client(s3_env)
    yield store


def objects_under(s3: Any, root: str) -> dict[str, dict[str, Any]]:
    """Every object under ``root`` (``bucket/prefix``), fresh from the server, by full path.

    Not ``s3.find(root)`` alone: when its listing comes back empty and an object appears before its
    fallback ``info`` call, s3fs returns ``root`` itself as a "directory", which is not an object."""
    s3.invalidate_cache()
    root = root.rstrip("/")
    return {name: info for name, info in s3.find(root, detail=True).items()
            if name.startswith(root + "/") and info.get("type") != "directory"}


@pytest.fixture
def s3_prefix(s3: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh prefix in the bucket for one test (``bucket/<module>-<test>``), removed afterwards."""
    path = f"{BUCKET}/{request.module.__name__.rsplit('.', 1)[-1]}-{request.node.name[:40]}"
    yield path
    if s3.exists(path):
        s3.rm(path, recursive=True)
