"""Faults mid-run: a killed run, a read-only reports folder, a full disk. Nothing lost, nothing half.

Mechanisms (the tests run as root, where ``chmod 0o555`` does not stop writes):

* **Killed mid-write**: a real ``kvonce conformance`` subprocess on a generated 150k-event trace
  gets SIGKILL as soon as a temporary artifact file appears in the reports folder.
* **Read-only folder**: a private mount namespace (``unshare -m``) in which the reports folder is
  bind-mounted read-only, so the kernel answers ``EROFS`` even to root; outside the namespace
  nothing changes. Where ``unshare`` is not permitted that test is skipped, and the always-available
  stand-in runs instead: a reports path whose parent is a regular file (``ENOTDIR``).
* **Disk full**: a 256 KiB ``tmpfs`` mounted in a private mount namespace (``ENOSPC``), skipped
  where ``unshare`` is not permitted; the always-available stand-in is ``RLIMIT_FSIZE`` on the
  subprocess (Python ignores ``SIGXFSZ``, so the write fails with ``EFBIG``), which takes the
  same path through :mod:`kvonce_pipeline.engine.atomic`.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import orjson
import pytest

from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.engine.atomic import (
    TEMP_SUFFIX,
    atomic_writer,
    private_folder_name,
    sweep_stale_folders,
    sweep_stale_temps,
    write_bytes_atomic,
)
from kvonce_pipeline.engine.errors import OutputError

from .conftest import SAMPLES, VENV_BIN

T = TypeVar("T")

KVONCE = str(VENV_BIN / "kvonce")
ARTIFACTS = (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE, artifacts.VALIDATION,
             artifacts.SUMMARY)
BIG_EVENTS = 150_000


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KVONCE_") and k != "GITHUB_STEP_SUMMARY"}


def _kvonce(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KVONCE, *args], capture_output=True, text=True, timeout=300, env=_env(), **kwargs)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, str]:
    return {name: _sha(folder / name) for name in ARTIFACTS if (folder / name).is_file()}


def assert_whole(path: Path) -> None:
    """The artifact parses completely: JSON as one document, NDJSON line by line, Markdown as UTF-8."""
    data = path.read_bytes()
    if path.suffix == ".json":
        orjson.loads(data)
    elif path.suffix == ".ndjson":
        assert data.endswith(b"\n"), f"{path} does not end with a newline"
        for line in data.splitlines():
            orjson.loads(line)
    else:
        assert data.decode("utf-8").strip(), f"{path} is empty"


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


@pytest.fixture(scope="module")
def big_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated trace whose artifacts take long enough to write that a kill lands mid-write."""
    path = tmp_path_factory.mktemp("big") / "big.ndjson"
    try:
        from kvonce_pipeline.devtools.generate import GenerateOptions, generate
    except ImportError:  # the generator is another feature; build the same shape by hand
        with open(path, "wb") as out:
            for i in range(BIG_EVENTS):
                out.write(orjson.dumps({"timeUnixNano": str(1_759_557_600_000_000_000 + i * 1_000_000),
                                        "type": "success" if i % 3 else "retry", "key": f"key-{i // 3:06d}",
                                        "value": "v", "context": {"attempt": 1}}) + b"\n")
        return path
    generate(path, GenerateOptions(events=BIG_EVENTS, keys=BIG_EVENTS // 5, format="ndjson", violations=0.05))
    return path


def _kill_when_writing(trace: Path, out_dir: Path) -> tuple[int, list[str]]:
    """Start a run, SIGKILL it once a temporary artifact exists; return (returncode, temps seen)."""
    process = subprocess.Popen([KVONCE, "conformance", "--input", str(trace), "--output-dir", str(out_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    seen = _kill_once(process, lambda: [str(p.relative_to(out_dir)) for p in _temporaries(out_dir)])
    return process.returncode, seen


def _kill_once(process: subprocess.Popen[bytes], witness: Callable[[], T]) -> T | None:
    """SIGKILL ``process`` as soon as ``witness()`` returns something truthy; return what it saw.

    If the process ends first (or the bounded wait runs out), nothing was seen: ``None`` or the
    last falsy value. The process is always reaped.
    """
    seen: T | None = None
    try:
        deadline = time.monotonic() + 240  # a bound on waiting, not an assertion on speed
        while process.poll() is None and time.monotonic() < deadline:
            seen = witness()
            if seen:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if process.poll() is None and not seen:
            process.kill()
        process.wait(timeout=60)
    return seen


def test_kill_mid_write_keeps_every_artifact_whole_and_a_rerun_completes(big_trace: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "reports"
    # the previous run: the seed sample, valid
    first = _kvonce("conformance", "--input", str(SAMPLES / "kvonce-sample.ndjson"), "--output-dir", str(out_dir))
    assert first.returncode == 0, first.stderr
    previous = _snapshot(out_dir)
    assert set(previous) == set(ARTIFACTS)

    returncode, seen = _kill_when_writing(big_trace, out_dir)
    assert returncode == -signal.SIGKILL, "the run was killed, not finished"
    assert seen, "the kill landed while an artifact was being written"
    after_kill = _snapshot(out_dir)
    for name in after_kill:
        assert_whole(out_dir / name)
    for temp in _temporaries(out_dir):
        assert temp.name.startswith("."), f"a temporary file looks like an artifact: {temp}"
        assert temp.name not in ARTIFACTS

    rerun = _kvonce("conformance", "--input", str(big_trace), "--output-dir", str(out_dir))
    assert rerun.returncode in (0, 1), rerun.stderr
    assert "Traceback" not in rerun.stderr
    completed = _snapshot(out_dir)
    assert set(completed) == set(ARTIFACTS)
    for name in ARTIFACTS:
        assert_whole(out_dir / name)
    report = orjson.loads((out_dir / artifacts.VALIDATION).read_bytes())
    assert report["summary"]["events"] == BIG_EVENTS
    assert not _temporaries(out_dir), "the rerun swept the killed run's temporary files"
    # every artifact the kill left is exactly the previous run's or exactly the new run's: never a mix
    for name, digest in after_kill.items():
        assert digest in (previous[name], completed[name]), name


def test_atomic_writer_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "artifact.json"
    write_bytes_atomic(target, b'{"old": true}\n')
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as out:
            out.write(b'{"new": ')
            raise RuntimeError("killed half-way")
    assert target.read_bytes() == b'{"old": true}\n'
    assert not _temporaries(tmp_path)


def test_stale_temporaries_of_dead_writers_are_swept_live_ones_kept(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = tmp_path / f".artifact.json.{child.pid}.abc123.tmp"
    alive = tmp_path / f".artifact.json.{os.getpid()}.def456.tmp"
    foreign = tmp_path / ".artifact.json.not-ours.tmp"
    for path in (dead, alive, foreign):
        path.write_bytes(b"partial")
    write_bytes_atomic(tmp_path / "artifact.json", b"{}\n")
    assert not dead.exists(), "a dead writer's temporary is removed"
    assert alive.exists() and foreign.exists(), "a live writer's (and an unknown) temporary is kept"
    assert sweep_stale_temps(tmp_path) == []


def test_stale_scratch_folders_of_dead_processes_are_swept(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = tmp_path / f".kvonce-sort-{child.pid}-abc123"
    dead.mkdir()
    (dead / "run-00000.jsonl").write_bytes(b"{}\n")
    alive = Path(tempfile.mkdtemp(prefix=private_folder_name(".kvonce-sort-"), dir=tmp_path))
    unknown = tmp_path / ".kvonce-sort-no-pid"
    unknown.mkdir()
    assert sweep_stale_folders(tmp_path, ".kvonce-sort-") == [dead]
    assert not dead.exists() and alive.is_dir() and unknown.is_dir()


def test_output_error_names_the_file_and_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"cannot write .*a-file/sub/x.json: Not a directory"):
        write_bytes_atomic(blocker / "sub" / "x.json", b"{}")


# --- read-only and disk-full reports folders -------------------------------------------------------------


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(not _unshare_works(), reason="no private mount namespace here (unshare -m)")

#: Run inside the namespace: the previous run, then the faulty one; report what was seen as JSON.
_INSIDE = r"""
import hashlib, json, os, subprocess, sys
kvonce, good, trace, out = sys.argv[1:5]
def snap():
    found = {}
    for root, _dirs, files in os.walk(out):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, out)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return found
first = subprocess.run([kvonce, "conformance", "--input", good, "--output-dir", out], capture_output=True, text=True)
before = snap()
setup = sys.argv[5]
if setup:
    subprocess.run(["sh", "-c", setup], check=True)
second = subprocess.run([kvonce, "conformance", "--input", trace, "--output-dir", out], capture_output=True, text=True)
print(json.dumps({"first": first.returncode, "before": before, "code": second.returncode,
                  "stderr": second.stderr, "after": snap()}))
"""


def _in_namespace(mount: str, out_dir: Path, trace: Path, setup: str = "") -> dict[str, object]:
    """Mount (``mount`` is a shell command) in a private namespace, then run ``_INSIDE`` there."""
    helper = out_dir.parent / "inside.py"
    helper.write_text(_INSIDE)
    command = f"{mount} && exec {sys.executable} {helper} {KVONCE} {SAMPLES / 'kvonce-sample.ndjson'} {trace} {out_dir} '{setup}'"
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_unshare
def test_disk_full_gives_exit_2_a_clear_message_and_keeps_previous_artifacts(big_trace: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "full"
    out_dir.mkdir()
    before_input = _sha(big_trace)
    seen = _in_namespace(f"mount -t tmpfs -o size=256k kvonce-full {out_dir}", out_dir, big_trace)
    assert seen["first"] == 0, "the small previous run fits"
    assert seen["code"] == 2, seen["stderr"]
    stderr = str(seen["stderr"])
    assert "kvonce: cannot write reports: cannot write" in stderr and "No space left on device" in stderr
    assert "Traceback" not in stderr
    after = dict(seen["after"])  # type: ignore[arg-type]
    assert not [name for name in after if name.endswith(TEMP_SUFFIX)], "the failed write's temporary is removed"
    for name, digest in after.items():
        assert digest == dict(seen["before"])[name], f"{name} of the previous run is untouched"  # type: ignore[arg-type]
    assert _sha(big_trace) == before_input, "the input is untouched"


@needs_unshare
def test_read_only_reports_folder_gives_exit_2_and_keeps_everything(tmp_path: Path) -> None:
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    trace = tmp_path / "trace.json"
    shutil.copy(SAMPLES / "kvonce-otlp.json", trace)
    before_input = _sha(trace)
    seen = _in_namespace(f"mount --bind {out_dir} {out_dir}", out_dir, trace,
                         setup=f"mount -o remount,bind,ro {out_dir}")
    assert seen["first"] == 0
    assert seen["code"] == 2, seen["stderr"]
    assert "cannot write reports: cannot write" in str(seen["stderr"])
    assert "Read-only file system" in str(seen["stderr"])
    assert seen["after"] == seen["before"], "the previous artifacts are untouched"
    assert _sha(trace) == before_input


@needs_unshare
def test_read_only_reports_folder_and_unusable_input_gives_exit_2(tmp_path: Path) -> None:
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(b"{oops\n")
    seen = _in_namespace(f"mount --bind {out_dir} {out_dir}", out_dir, bad, setup=f"mount -o remount,bind,ro {out_dir}")
    assert seen["code"] == 2, seen["stderr"]
    assert f"{bad}: line 1: not valid JSON" in str(seen["stderr"])
    assert seen["after"] == seen["before"]


def test_reports_path_under_a_regular_file_gives_exit_2(tmp_path: Path) -> None:
    """The stand-in for a read-only folder that works everywhere: the folder cannot be created."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    trace = tmp_path / "trace.ndjson"
    shutil.copy(SAMPLES / "kvonce-sample.ndjson", trace)
    before = _sha(trace)
    done = _kvonce("conformance", "--input", str(trace), "--output-dir", str(blocker / "reports"))
    assert done.returncode == 2
    assert f"kvonce: cannot write reports: cannot write {blocker}/reports/" in done.stderr
    assert "Not a directory" in done.stderr and "Traceback" not in done.stderr
    assert _sha(trace) == before and blocker.read_text() == "x"


def test_file_size_limit_stands_in_for_a_full_disk(big_trace: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "reports"
    assert _kvonce("conformance", "--input", str(SAMPLES / "kvonce-sample.ndjson"),
                   "--output-dir", str(out_dir)).returncode == 0
    previous = _snapshot(out_dir)
    before_input = _sha(big_trace)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))

    done = _kvonce("conformance", "--input", str(big_trace), "--output-dir", str(out_dir),
                   preexec_fn=limit_file_size)
    assert done.returncode == 2, done.stderr
    assert "kvonce: cannot write reports: cannot write" in done.stderr and "File too large" in done.stderr
    assert "Traceback" not in done.stderr
    assert not _temporaries(out_dir)
    assert _snapshot(out_dir) == previous, "the previous artifacts are untouched"
    assert _sha(big_trace) == before_input


#: A real process sorting on disk with small runs (the CLI has no knob for the run size).
_SORTING_RUN = ("import sys\n"
                "from kvonce_pipeline.domains.kvonce.own_pass.conformance import ConformanceOptions, run_conformance\n"
                "run_conformance(sys.argv[1], sys.argv[2], ConformanceOptions(sort_run_events=1000))\n")


def test_kill_during_on_disk_sort_leaves_no_spill_folder_after_a_rerun(tmp_path: Path) -> None:
    trace = tmp_path / "reversed.ndjson"
    events = 60_000
    with open(trace, "wb") as out:  # newest first: the stream is out of order, so it is sorted on disk
        for i in reversed(range(events)):
            out.write(orjson.dumps({"timeUnixNano": str(1_759_557_600_000_000_000 + i * 1_000_000),
                                    "type": "success", "key": f"k{i}", "value": "v"}) + b"\n")
    out_dir = tmp_path / "reports"
    process = subprocess.Popen([sys.executable, "-c", _SORTING_RUN, str(trace), str(out_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    seen = _kill_once(process, lambda: list(out_dir.glob(".kvonce-sort-*")))
    assert seen and process.returncode == -signal.SIGKILL, "killed while the sort's runs were on disk"
    rerun = subprocess.run([sys.executable, "-c", _SORTING_RUN, str(trace), str(out_dir)],
                           capture_output=True, text=True, timeout=300, env=_env())
    assert rerun.returncode == 0, rerun.stderr
    assert orjson.loads((out_dir / artifacts.VALIDATION).read_bytes())["summary"]["events"] == events
    assert not list(out_dir.glob(".kvonce-sort-*")), "the killed run's spill folder is still there"
