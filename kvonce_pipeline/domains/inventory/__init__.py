"""Inventory: a stock service's allocations, releases, snapshots and self-checks, replayed per SKU.

Registered as the ``inventory`` entry point of ``kvonce_pipeline.domains`` (pyproject.toml). The
definition is ``domain.toml`` next to this file; the replay is :mod:`.machine`, the synthetic traces
:mod:`.generate`.
"""

from pathlib import Path

from ...engine.domain import Domain
from .generate import generate_events
from .machine import InventoryMachine

domain = Domain.from_folder(Path(__file__).parent, InventoryMachine, generate=generate_events)

__all__ = ["domain", "InventoryMachine", "generate_events"]
