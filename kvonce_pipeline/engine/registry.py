"""The installed domains: found through the ``kvonce_pipeline.domains`` entry point group.

A package ships a domain by naming a :class:`~kvonce_pipeline.engine.domain.Domain` object in its
``pyproject.toml``::

    [project.entry-points."kvonce_pipeline.domains"]
    inventory = "kvonce_pipeline.domains.inventory:domain"

The built-in domains are registered exactly like that, so nothing in the engine lists them. The
entry point's name must be the domain's name. Loading is lazy and cached per process; a domain that
fails to load is an error naming its entry point, not a silently missing domain.
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
def installed() -> dict[str, Domain]:
    """Every installed domain by name, in name order (the default domain first)."""
    found: dict[str, Domain] = {}
    for point in entry_points(group=GROUP):
        try:
            domain = point.load()
        except Exception as exc:  # noqa: BLE001 - any import error of a third-party domain
            raise ConfigError(f"domain entry point {point.name!r} ({point.value}) failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(domain, Domain):
            raise ConfigError(f"domain entry point {point.name!r} ({point.value}) is not a Domain "
                              f"but {type(domain).__name__}")
        if domain.name != point.name:
            raise ConfigError(f"domain entry point {point.name!r} names a domain called {domain.name!r}")
        if domain.name in found and found[domain.name] is not domain:
            raise ConfigError(f"two installed packages define the domain {domain.name!r}")
        found[domain.name] = domain
    prefixes: dict[str, str] = {}
    for domain in found.values():
        other = prefixes.setdefault(domain.definition.prefix, domain.name)
        if other != domain.name:
            raise ConfigError(f"domains {other!r} and {domain.name!r} share the attribute prefix "
                              f"{domain.definition.prefix!r}")
    return dict(sorted(found.items(), key=lambda item: (item[0] != DEFAULT_DOMAIN, item[0])))


def get(name: str) -> Domain:
    """The installed domain ``name``; a :class:`ConfigError` listing the installed ones otherwise."""
    domains = installed()
    domain = domains.get(name)
    if domain is None:
        raise ConfigError(f"no domain {name!r} is installed (installed: {', '.join(domains) or 'none'}; "
                          f"`kvonce domain list` shows them)")
    return domain
