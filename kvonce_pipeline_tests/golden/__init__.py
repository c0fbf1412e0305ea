"""Fixed inputs and the sha256 of every artifact ``kvonce conformance`` made of them (``manifest.json``).

The artifacts' bytes are a contract: a change that alters them must be meant. ``test_golden.py``
compares; after a deliberate change, ``python -m kvonce_pipeline_tests.golden`` rewrites the
manifest (and the diff of ``manifest.json`` shows which artifacts moved).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.domains.kvonce.own_pass.conformance import ConformanceOptions, run_conformance

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent.parent / "samples" / "trace"
MANIFEST = HERE / "manifest.json"
#: name -> input file (samples as shipped, and two generated traces with violations, stored here)
CASES = {
    "sample-ndjson": SAMPLES / "kvonce-sample.ndjson",
    "sample-otlp-json": SAMPLES / "kvonce-otlp.json",
    "generated-ndjson-gzip": HERE / "generated-violations.ndjson.gz",
    "generated-otlp-proto-gzip": HERE / "generated-violations.pb.gz",
}
ARTIFACTS = (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE, artifacts.VALIDATION,
             artifacts.SUMMARY)


def run_case(name: str, workdir: Path, parallel: bool | None = None) -> tuple[int, dict[str, str]]:
    """The ``kvonce conformance`` run on a copy of the case's input, given by a relative name (reports
    name their source, so the path must not depend on the machine); ``parallel`` forces the serial
    pass or the second-core one. Returns the CLI's exit code (0 or 1) and the digests."""
    source = CASES[name]
    workdir.mkdir(parents=True, exist_ok=True)
    local = workdir / f"input{''.join(source.suffixes)}"
    shutil.copyfile(source, local)
    before = Path.cwd()
    os.chdir(workdir)
    try:
        result = run_conformance(local.name, Path("out"), ConformanceOptions(parallel=parallel))
    finally:
        os.chdir(before)
    return (0 if result.valid else 1), {artifact: hashlib.sha256((workdir / "out" / artifact).read_bytes()).hexdigest()
                  for artifact in ARTIFACTS}
