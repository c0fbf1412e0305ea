"""A real PostgreSQL server for the tests of the production instance (``deploy/dagster.yaml``).

``pgserver`` (a wheel from the registry, installed by ``make test``) carries PostgreSQL's own
binaries: the session starts one server in a temporary folder, on a unix socket (no port to clash
with), and stops it at the end; each test gets a database of its own.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT

DEPLOY_CONFIG = PROJECT_ROOT / "deploy" / "dagster.yaml"
_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    pgserver = pytest.importorskip("pgserver", reason="pgserver (the embedded PostgreSQL wheel) is not installed")
    server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: object) -> str:
    """A fresh database's SQLAlchemy URL (psycopg2, over the server's socket folder)."""
    name = f"kvonce_test_{next(_databases)}"
    postgres_server.psql(f"CREATE DATABASE {name};")  # type: ignore[attr-defined]
    uri: str = postgres_server.get_uri()  # type: ignore[attr-defined]
    return uri.replace("postgresql://", "postgresql+psycopg2://", 1).replace("/postgres?", f"/{name}?", 1)


def deploy_config(max_concurrent_runs: int | None = None) -> str:
    """``deploy/dagster.yaml`` as shipped, or with another ``max_concurrent_runs`` (0 holds the queue)."""
    text = Path(DEPLOY_CONFIG).read_text()
    if max_concurrent_runs is None:
        return text
    changed, count = re.subn(r"(?m)^(\s*max_concurrent_runs:)\s*\d+$", rf"\g<1> {max_concurrent_runs}", text)
    assert count == 1, "deploy/dagster.yaml has one max_concurrent_runs"
    return changed
