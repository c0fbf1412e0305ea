"""The installed domains: found through the ``kvonce_pipeline.domains`` entry point group.

A package ships a domain by naming a :class:`~kvonce_pipeline.engine.domain.Domain` object in its
``pyproject.toml``::

    [project.entry-points."kvonce_pipeline.domains"]
    inventory = "kvonce_pipeline.domains.inventory:domain"

The built-in domains are registered exactly like that, so nothing in the engine lists them. The
entry point's name must be the domain's name. Loading is lazy and cached per process. A domain that
fails to load (or clashes with another) is never silently missing: naming it is an error that says
why, and every command that checks several domains prints a warning for it; but it does not stop
the domains that did load (one broken package must not stop every KvOnce check).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from .errors import ConfigError
from .domain import Domain

GROUP = "kvonce_pipeline.domains"
#: The domain a payload or event log is read as when nothing else says (the product's first domain).
DEFAULT_DOMAIN = "kvonce"


@cache
def _load() -> tuple[dict[str, Domain], dict[str, str]]:
    """Every entry point loaded once: the domains, and for each one that failed, why."""
    found: dict[str, Domain] = {}
    broken: dict[str, str] = {}
    for point in sorted(entry_points(group=GROUP), key=lambda p: (p.name != DEFAULT_DOMAIN, p.name, p.value)):
        where = f"domain entry point {point.name!r} ({point.value})"
        try:
            domain = point.load()
        except Exception as exc:  # noqa: BLE001 - any import error of a third-party domain
            broken[point.name] = f"{where} failed to load: {type(exc).__name__}: {exc}"
            continue
        if not isinstance(domain, Domain):
            broken[point.name] = f"{where} is not a Domain but {type(domain).__name__}"
        elif domain.name != point.name:
            broken[point.name] = f"{where} names a domain called {domain.name!r}"
        elif domain.name in found:
            if found[domain.name] is not domain:
                broken[point.name] = f"two installed packages define the domain {domain.name!r} ({where})"
        else:
            clash = next((other for other in found.values()
                          if other.definition.prefix == domain.definition.prefix), None)
            if clash is not None:
                broken[point.name] = (f"domains {clash.name!r} and {domain.name!r} share the attribute prefix "
                                      f"{domain.definition.prefix!r} ({where} is left out)")
            else:
                found[domain.name] = domain
    return found, broken


def installed() -> dict[str, Domain]:
    """Every installed domain that loaded, by name (the default domain first). One that failed to
    load is left out here, so a broken third-party package cannot stop the others from running; it
    is an error where it is named (:func:`get`) and a warning everywhere else (:func:`load_errors`)."""
    return dict(_load()[0])


def load_errors() -> dict[str, str]:
    """The installed domains that could not be used, each with the reason."""
    return dict(_load()[1])


def get(name: str) -> Domain:
    """The installed domain ``name``; a :class:`ConfigError` saying why otherwise."""
    domains, broken = _load()
    domain = domains.get(name)
    if domain is None:
        if name in broken:
            raise ConfigError(broken[name])
        raise ConfigError(f"no domain {name!r} is installed (installed: {', '.join(domains) or 'none'}; "
                          f"`kvonce domain list` shows them)")
    return domain
