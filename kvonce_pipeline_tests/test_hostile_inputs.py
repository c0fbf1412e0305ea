"""Hostile input: every case gets a clear message naming the place, a non-zero exit, the input
untouched and no artifact that vouches for it.

The corpus is in :mod:`kvonce_pipeline_tests.hostile` (built at test time). Each case runs
``kvonce conformance`` in-process (``cli.main``; a subprocess per case would cost a second each), and a
representative subset runs as a real subprocess too. Before each run the output folder holds a
*valid* earlier run's artifacts, so the test also proves those are not left behind to vouch for
the hostile input.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import orjson
import pytest

from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.cli import main

from .conftest import SAMPLES, VENV_BIN
from .hostile import CASES, HostileCase

ARTIFACT_NAMES = (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE, artifacts.VALIDATION,
                  artifacts.SUMMARY)


@pytest.fixture(scope="module")
def previous_valid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a complete, valid run of the seed sample (copied before each case)."""
    folder = tmp_path_factory.mktemp("previous-run")
    assert main(["conformance", "--input", str(SAMPLES / "kvonce-sample.ndjson"), "--output-dir", str(folder)]) == 0
    assert orjson.loads((folder / artifacts.VALIDATION).read_bytes())["valid"] is True
    return folder


def _fingerprint(path: Path) -> tuple[str, str]:
    """What must not change: the file type, and for a regular file its bytes."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return ("missing", "")
    if stat.S_ISREG(info.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(8 * 1024 * 1024):
                digest.update(block)
        return ("file", digest.hexdigest())
    return (stat.filemode(info.st_mode)[0], os.readlink(path) if stat.S_ISLNK(info.st_mode) else "")


def assert_nothing_vouches(out_dir: Path, exit_code: int) -> None:
    """No file in ``out_dir`` claims validity; stale evidence of the earlier run is gone; no temp files."""
    for path in out_dir.rglob("*"):
        assert not path.name.endswith(".tmp"), f"temporary file left behind: {path}"
        if path.is_file() and path.suffix == ".json":
            document = orjson.loads(path.read_bytes())  # every JSON artifact is whole
            assert not (isinstance(document, dict) and document.get("valid") is True), f"{path} claims validity"
    report = orjson.loads((out_dir / artifacts.VALIDATION).read_bytes())
    assert report["valid"] is False
    if exit_code == 2:
        assert report["inputError"]["message"], report
        for name in (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE):
            assert not (out_dir / name).exists(), f"stale {name} of the earlier run left beside the error report"
        assert "Verdict" in (out_dir / artifacts.SUMMARY).read_text() or report["inputError"]


def _params() -> list[object]:
    params = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


def test_the_corpus_is_big_and_covers_every_category() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), "case names are unique"
    assert len(CASES) >= 40
    categories = {case.category for case in CASES}
    for needed in ("truncated", "bit-flips", "gzip", "gzip-bomb", "encoding", "json-syntax", "huge-numbers",
                   "duplicate-keys", "nesting", "line-length", "anyvalue-kinds", "id-length", "empty",
                   "not-a-file", "wrong-types", "limits"):
        assert needed in categories, needed


@pytest.mark.parametrize("case", _params())
def test_hostile_input(case: HostileCase, tmp_path: Path, previous_valid_run: Path,
                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = case.build(inputs)
    out_dir = tmp_path / "out"
    shutil.copytree(previous_valid_run, out_dir)
    before = _fingerprint(source)

    code = main(["conformance", "--input", str(source), "--output-dir", str(out_dir)])
    stderr = capsys.readouterr().err

    if case.exit_code == 2:
        assert f"kvonce: unusable input: {source}: {case.detail}" in stderr, stderr[:2000]
    else:
        assert "kvonce: INVALID" in stderr and case.detail in stderr, stderr[:2000]
    assert "Traceback" not in stderr
    assert code == case.exit_code, stderr[:2000]
    assert _fingerprint(source) == before, "the input must never be modified"
    assert_nothing_vouches(out_dir, code)


#: One case per family as a real subprocess: the installed ``kvonce`` behaves as ``main`` does.
SUBPROCESS_CASES = ("fifo", "directory", "ndjson-nan", "gzip-bomb-json", "otlp-proto-truncated",
                    "otlp-json-trace-id-short", "ndjson-huge-attempt-is-a-violation")


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_hostile_input_real_subprocess(name: str, tmp_path: Path, previous_valid_run: Path) -> None:
    case = next(c for c in CASES if c.name == name)
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = case.build(inputs)
    out_dir = tmp_path / "out"
    shutil.copytree(previous_valid_run, out_dir)
    before = _fingerprint(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVONCE_")} | dict(case.env)
    done = subprocess.run([str(VENV_BIN / "kvonce"), "conformance", "--input", str(source), "--output-dir",
                           str(out_dir)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == case.exit_code, done.stderr
    if case.exit_code == 2:
        assert f"kvonce: unusable input: {source}: {case.detail}" in done.stderr
    else:
        assert case.detail in done.stderr
    assert "Traceback" not in done.stderr
    assert _fingerprint(source) == before
    assert_nothing_vouches(out_dir, done.returncode)


def test_unusable_input_and_unusable_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(b"{oops\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["conformance", "--input", str(bad), "--output-dir", str(blocker / "reports")])
    stderr = capsys.readouterr().err
    assert code == 2
    assert f"{bad}: line 1: not valid JSON" in stderr


# --- limits: one place, each overridable, bad settings refused -------------------------------------------


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("KVONCE_MAX_LINE_BYTES", "abc", "KVONCE_MAX_LINE_BYTES must be a positive integer (bytes, or with KiB/MiB/GiB)"),
    ("KVONCE_MAX_BODY_BYTES", "-5", "KVONCE_MAX_BODY_BYTES must be a positive integer"),
    ("KVONCE_MAX_DECOMPRESSED_BYTES", "0", "KVONCE_MAX_DECOMPRESSED_BYTES must be positive"),
    ("KVONCE_MAX_EVENTS", "2MiB", "KVONCE_MAX_EVENTS must be a positive integer, got '2MiB'"),
    ("KVONCE_MAX_CONTEXT_DEPTH", "1e3", "KVONCE_MAX_CONTEXT_DEPTH must be a positive integer"),
])
def test_a_bad_limit_setting_exits_2_naming_the_variable(variable: str, value: str, message: str,
                                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(variable, value)
    code = main(["conformance", "--input", str(SAMPLES / "kvonce-sample.ndjson"), "--output-dir", str(tmp_path)])
    assert code == 2
    assert f"kvonce: {message}" in capsys.readouterr().err
    assert not (tmp_path / artifacts.VALIDATION).exists(), "nothing is written under a setting nobody asked for"


def test_limits_live_in_one_place_with_a_reason_each() -> None:
    from kvonce_pipeline.engine.limits import Limits, describe

    rows = describe()
    assert [row[0] for row in rows] == list(Limits.__dataclass_fields__)
    for field_name, variable, default, reason in rows:
        assert variable == f"KVONCE_{field_name.upper()}" and default > 0 and len(reason) > 20
    limits = Limits.from_env({"KVONCE_MAX_LINE_BYTES": "1KiB", "KVONCE_MAX_DECOMPRESSED_BYTES": "2GiB",
                              "KVONCE_MAX_EVENTS": "1_000", "KVONCE_MAX_BODY_BYTES": ""})
    assert (limits.max_line_bytes, limits.max_decompressed_bytes, limits.max_events) == (1024, 2 * 1024**3, 1000)
    assert limits.max_body_bytes == Limits().max_body_bytes, "an empty variable means the default"
