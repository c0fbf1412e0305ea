"""Domains are found through the entry point group, built-in ones included."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvonce_pipeline.devtools.domain_site import register
from kvonce_pipeline.engine import registry
from kvonce_pipeline.engine.domain import Domain
from kvonce_pipeline.engine.errors import ConfigError


def test_the_built_in_domain_is_registered_like_any_other() -> None:
    domains = registry.installed()
    assert next(iter(domains)) == registry.DEFAULT_DOMAIN == "kvonce"
    assert isinstance(domains["kvonce"], Domain) and domains["kvonce"].definition.prefix == "kvonce.event."


def test_an_unknown_name_lists_the_installed_ones() -> None:
    with pytest.raises(ConfigError, match="no domain 'nope' is installed.*kvonce"):
        registry.get("nope")


def test_a_domain_from_a_package_is_found(toy: Domain) -> None:
    assert toy.name == "toy" and "toy" in registry.installed()
    assert toy.definition.prefix == "toy.event."


def test_two_domains_may_not_share_a_prefix(toy_project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clone = tmp_path / "clone"
    (clone / "clash").mkdir(parents=True)
    toml = (toy_project.project / "kvonce_domain_toy" / "domain.toml").read_text()
    (clone / "clash" / "domain.toml").write_text(toml.replace('name = "toy"', 'name = "clash"'))
    (clone / "clash" / "__init__.py").write_text(
        "from pathlib import Path\nfrom kvonce_pipeline.engine.domain import Domain\n"
        "from kvonce_domain_toy.machine import Machine\ndomain = Domain.from_folder(Path(__file__).parent, Machine)\n")
    (clone / "pyproject.toml").write_text('[project]\nname = "clash"\nversion = "1"\n'
                                          '[project.entry-points."kvonce_pipeline.domains"]\nclash = "clash:domain"\n')
    for path in [*reversed(toy_project.paths), *reversed(register(clone, tmp_path / "site"))]:
        monkeypatch.syspath_prepend(path)
    registry._load.cache_clear()
    try:
        # the first by name is kept ("clash"), the other is left out, named, and stops nothing else
        assert "clash" in registry.installed() and "toy" not in registry.installed()
        assert "kvonce" in registry.installed()
        with pytest.raises(ConfigError, match="'clash' and 'toy' share the attribute prefix 'toy.event.'"):
            registry.get("toy")
        assert list(registry.load_errors()) == ["toy"]
    finally:
        registry._load.cache_clear()


def test_a_package_that_fails_to_load_is_named_and_stops_nothing_else(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "broken"
    (project / "broken_domain").mkdir(parents=True)
    (project / "broken_domain" / "__init__.py").write_text("raise RuntimeError('half-installed')\n")
    (project / "pyproject.toml").write_text('[project]\nname = "broken"\nversion = "1"\n'
                                            '[project.entry-points."kvonce_pipeline.domains"]\n'
                                            'broken = "broken_domain:domain"\n')
    for path in reversed(register(project, tmp_path / "site")):
        monkeypatch.syspath_prepend(path)
    registry._load.cache_clear()
    try:
        assert list(registry.installed()) == ["kvonce", "inventory"]
        with pytest.raises(ConfigError, match="'broken'.*failed to load: RuntimeError: half-installed"):
            registry.get("broken")
    finally:
        registry._load.cache_clear()


def test_an_entry_point_whose_name_differs_from_the_domain_is_refused(toy_project, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "other"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "1"\n'
                                            '[project.entry-points."kvonce_pipeline.domains"]\n'
                                            'wrong = "kvonce_domain_toy:domain"\n')
    for path in [*reversed(toy_project.paths), *reversed(register(project, tmp_path / "site"))]:
        monkeypatch.syspath_prepend(path)
    registry._load.cache_clear()
    try:
        with pytest.raises(ConfigError, match="'wrong' .* names a domain called 'toy'"):
            registry.get("wrong")
        assert "kvonce" in registry.installed()
    finally:
        registry._load.cache_clear()
