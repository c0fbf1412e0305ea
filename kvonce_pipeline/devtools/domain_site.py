"""Make a domain project (from ``kvonce domain new``) visible to Python without installing it.

``pip install -e`` is the way for users. Benchmarks and tests must not change the environment they
run in, so they use this instead: a ``*.dist-info`` folder holding the project's entry point, in a
folder of their own that goes on ``sys.path`` / ``PYTHONPATH`` together with the project. Python's
``importlib.metadata`` then finds the domain exactly as it finds an installed one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path


def register(project: str | Path, site: str | Path) -> list[str]:
    """Write the dist-info of ``project`` (its ``pyproject.toml``) into ``site``; returns the two
    folders to put on the path (``site`` and the project, which holds the package)."""
    project, site = Path(project), Path(site)
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    points = meta.get("entry-points", {}).get("kvonce_pipeline.domains", {})
    if not points:
        raise ValueError(f"{project}/pyproject.toml declares no kvonce_pipeline.domains entry point")
    dist = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    lines = ["[kvonce_pipeline.domains]", *(f"{name} = {target}" for name, target in points.items()), ""]
    (dist / "entry_points.txt").write_text("\n".join(lines))
    return [str(site), str(project)]
