"""KvOnce, the first domain: a write-once key-value store (``domain.toml`` is its definition).

Its checks run on its own specialised pass (:mod:`.runner`); the definition is what the engine,
``kvonce domain doc kvonce`` and the rule table read. ``domain`` (the entry point's object) is made
on first use: the engine's decoders import this package's modules (events, mapping), and the
domain object imports the engine's pass, so an eager import here would be a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...engine.domain import Domain

    domain: Domain


def __getattr__(name: str) -> Any:
    if name == "domain":
        from .runner import domain

        return domain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
