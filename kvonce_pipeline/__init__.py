"""kvonce_pipeline: prove or disprove that a KvOnce run obeyed its spec, from its OTLP traces.

The core (reading, projection, validation, reports) is plain Python and imports no Dagster.
``kvonce_pipeline.defs`` (the Dagster ``Definitions``) is loaded only when asked for, so that
``dagster job execute -m kvonce_pipeline`` finds it while the CLI and library users never pay for
importing Dagster.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "defs"]


def __getattr__(name: str) -> Any:
    if name == "defs":
        from .definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"defs"})
