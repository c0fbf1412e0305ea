"""A third domain made only through the template (``kvonce domain new toy``), for the tests that
prove a domain needs no engine change: it is written into a temporary folder and found through
its entry point, as a team's own package would be."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvonce_pipeline.cli import main
from kvonce_pipeline.devtools.domain_site import register
from kvonce_pipeline.engine import registry
from kvonce_pipeline.engine.domain import Domain


@dataclass(frozen=True)
class ToyProject:
    project: Path
    #: the folders that make the domain importable and registered (sys.path / PYTHONPATH)
    paths: list[str]

    @property
    def sample(self) -> Path:
        return self.project / "kvonce_domain_toy" / "samples" / "toy-sample.ndjson"

    def env(self) -> dict[str, str]:
        """The environment for a subprocess that must see the domain."""
        existing = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": os.pathsep.join([*self.paths, *([existing] if existing else [])])}


@pytest.fixture(scope="session")
def toy_project(tmp_path_factory: pytest.TempPathFactory) -> ToyProject:
    root = tmp_path_factory.mktemp("domains")
    assert main(["domain", "new", "toy", "--prefix", "toy.event.", "--dir", str(root)]) == 0
    project = root / "kvonce-domain-toy"
    return ToyProject(project, register(project, root / "site"))


@pytest.fixture
def toy(toy_project: ToyProject, monkeypatch: pytest.MonkeyPatch) -> Iterator[Domain]:
    """The toy domain, installed for this test (the registry sees it; it is gone afterwards)."""
    for path in reversed(toy_project.paths):
        monkeypatch.syspath_prepend(path)
    monkeypatch.setenv("PYTHONPATH", toy_project.env()["PYTHONPATH"])
    registry._load.cache_clear()
    try:
        yield registry.get("toy")
    finally:
        registry._load.cache_clear()
