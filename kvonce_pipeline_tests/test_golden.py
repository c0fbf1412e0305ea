"""Every artifact of fixed inputs keeps its bytes (see :mod:`kvonce_pipeline_tests.golden`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .golden import CASES, MANIFEST, run_case

EXPECTED = json.loads(MANIFEST.read_text())


def test_the_manifest_covers_every_case() -> None:
    assert set(EXPECTED) == set(CASES)
    assert {case["exitCode"] for case in EXPECTED.values()} == {0, 1}, "valid and violating inputs both"


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_artifacts_keep_their_bytes(name: str, parallel: bool, tmp_path: Path) -> None:
    """The serial pass and the second-core pass (forced) both give the recorded bytes."""
    code, digests = run_case(name, tmp_path, parallel)
    assert code == EXPECTED[name]["exitCode"]
    assert digests == EXPECTED[name]["sha256"], (
        "artifact bytes changed; if that is meant, run python -m kvonce_pipeline_tests.golden and commit")
