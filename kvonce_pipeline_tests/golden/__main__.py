"""Rewrite ``manifest.json`` from the current code (after a deliberate change of artifact bytes)."""

import json
import tempfile
from pathlib import Path

from . import CASES, MANIFEST, run_case

with tempfile.TemporaryDirectory() as tmp:
    manifest = {}
    for name in CASES:
        code, digests = run_case(name, Path(tmp) / name)
        manifest[name] = {"exitCode": code, "sha256": digests}
MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
print(f"wrote {MANIFEST}")
