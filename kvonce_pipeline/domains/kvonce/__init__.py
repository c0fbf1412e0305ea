"""KvOnce, the first domain: a write-once key-value store (``domain.toml`` is its definition).

Its checks run on its own specialised pass (:mod:`.runner`); the definition is what the engine,
``kvonce domain doc kvonce`` and the rule table read.
"""

from __future__ import annotations

from pathlib import Path

from ...engine.domain import Domain
from .runner import NAMES, run

domain = Domain.from_folder(Path(__file__).parent, None, runner=run, names=NAMES)
