"""What the drop-folder tests share: an ephemeral instance, a drop folder and the resource over both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from kvonce_pipeline.orchestration.resources import KvonceSettings


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def drop_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "drops"
    folder.mkdir()
    return folder


@pytest.fixture
def settings(drop_dir: Path, reports_dir: Path) -> KvonceSettings:
    return KvonceSettings(drop_dir=str(drop_dir), reports_dir=str(reports_dir))
