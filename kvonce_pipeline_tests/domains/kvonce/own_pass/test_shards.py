"""Key shards: the merged artifacts are the single pass's, byte for byte, at every shard count and
on every engine (in process, a LocalCluster of worker processes, a scheduler and a worker started
here as separate programs on loopback)."""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import orjson

from kvonce_pipeline import cli
from kvonce_pipeline.domains.kvonce.own_pass.conformance import ConformanceOptions, run_conformance
from kvonce_pipeline.engine.errors import ConfigError, InputError, OutputError
from kvonce_pipeline.devtools.generate import GenerateOptions, generate
from kvonce_pipeline.domains.kvonce.own_pass.shards import (FOLDER_PREFIX, SCHEDULER_ENV, DaskEngine, EngineError,
                                                            LocalEngine, run_sharded, shard_of)

from ....conftest import SAMPLES, VENV_BIN, write_ndjson
from ....golden import CASES, MANIFEST
from ....golden import ARTIFACTS as GOLDEN_ARTIFACTS

ARTIFACTS = ("kvonce-events.ndjson", "kvonce-projection.json", "projected/kvonce-state-sequence.json",
             "kvonce-validation.json", "kvonce-summary.md")


def _same_artifacts(single: Path, sharded: Path) -> None:
    for name in ARTIFACTS:
        assert filecmp.cmp(single / name, sharded / name, shallow=False), name
    assert not list(sharded.glob(f"{FOLDER_PREFIX}*")), "the shard folder is removed after the merge"


@pytest.mark.parametrize(("form", "events", "keys"), [
    ("otlp-jsonl", 12_000, 4_000),  # past 10k events: the projection file is compact
    ("ndjson", 2_500, 900),  # below: indented
    ("otlp-json", 3_000, 3_000),  # one event per key: most keys' first event is their only one
])
def test_sharded_equals_single_pass(tmp_path: Path, form: str, events: int, keys: int) -> None:
    """A generated trace with every kind of violation, split into 1 to 4 shards."""
    path = tmp_path / f"trace.{form}"
    generate(path, GenerateOptions(events=events, keys=keys, format=form, violations=0.03, seed=11))
    single = run_conformance(path, tmp_path / "single")
    assert not single.valid and len(single.report["summary"]["byRule"]) >= (2 if keys == events else 8)
    for shards in (1, 2, 3, 4):
        run = run_sharded(path, tmp_path / f"s{shards}", shards=shards, engine=LocalEngine())
        assert run.result.report == single.report
        assert run.result.exit_code == single.exit_code == 1
        _same_artifacts(tmp_path / "single", tmp_path / f"s{shards}")
        assert sum(run.split.per_shard) == events
        if shards > 1:
            assert min(run.split.per_shard) > 0


def test_disabled_rules_are_left_out_the_same_way_by_every_strategy(tmp_path: Path) -> None:
    """--disable on KvOnce: the rules' findings are gone from the report, the counts and the summary,
    the report lists them, and the one pass (whole or streamed, with or without the second core) and
    2 shards write the same bytes; the events, projection and state sequence do not change."""
    path = tmp_path / "trace.otlp-jsonl"
    generate(path, GenerateOptions(events=6_000, keys=2_000, format="otlp-jsonl", violations=0.03, seed=11))
    full = run_conformance(path, tmp_path / "full")
    by_rule = full.report["summary"]["byRule"]
    off = frozenset(sorted(by_rule)[:2])
    assert len(off) == 2 and "disabledRules" not in full.report
    runs = {
        "streamed": ConformanceOptions(disabled=off),
        "whole": ConformanceOptions(disabled=off, streaming=False),
        "second core": ConformanceOptions(disabled=off, parallel=True),
    }
    results = {name: run_conformance(path, tmp_path / name.replace(" ", "-"), options)
               for name, options in runs.items()}
    report = results["streamed"].report
    assert report["disabledRules"] == sorted(off)
    assert not off & set(report["summary"]["byRule"]) and not any(i["type"] in off for i in report["issues"])
    assert len(report["issues"]) == len(full.report["issues"]) - sum(by_rule[rule] for rule in off)
    assert f"disabled: {', '.join(sorted(off))}" in (tmp_path / "streamed" / "kvonce-summary.md").read_text()
    sharded = run_sharded(path, tmp_path / "s2", ConformanceOptions(disabled=off), shards=2, engine=LocalEngine())
    assert sharded.result.report == report
    for name in runs:
        assert results[name].report == report, name
        _same_artifacts(tmp_path / "streamed", tmp_path / name.replace(" ", "-"))
    _same_artifacts(tmp_path / "streamed", tmp_path / "s2")
    for name in ARTIFACTS[:3]:  # what a rule cannot change
        assert filecmp.cmp(tmp_path / "full" / name, tmp_path / "streamed" / name, shallow=False), name
    # a whole OTLP/JSON document: the fed worker on the second core, and the forked child (not in order)
    document = tmp_path / "trace.json"
    generate(document, GenerateOptions(events=6_000, keys=2_000, format="otlp-json", violations=0.03, seed=11))
    alone = run_conformance(document, tmp_path / "doc-one", ConformanceOptions(disabled=off, parallel=False))
    paired = run_conformance(document, tmp_path / "doc-two", ConformanceOptions(disabled=off, parallel=True))
    assert alone.report["disabledRules"] == sorted(off) and paired.report == alone.report
    _same_artifacts(tmp_path / "doc-one", tmp_path / "doc-two")


def test_disabling_a_rule_kvonce_does_not_have_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no-such-rule"):
        run_conformance(tmp_path / "not-read.json", tmp_path / "out", ConformanceOptions(disabled=frozenset({"no-such-rule"})))
    assert not (tmp_path / "out").exists()
    assert cli.main(["conformance", "--input", str(tmp_path / "not-read.json"), "--output-dir", str(tmp_path / "o"),
                     "--shards", "2", "--engine", "local", "--disable", "no-such-rule"]) == 2
    assert not (tmp_path / "o").exists()


def _odd_events(count: int = 400) -> list[str]:
    """Events a generated trace never has: no key, an empty key, no time, unknown types, a
    failure without reason, repeated writes; in random time order (the split sorts on disk)."""
    rng = random.Random(5)
    lines = []
    for number in range(count):
        second = rng.randrange(0, 60)
        key = rng.choice([f"k{rng.randrange(40)}", f"k{rng.randrange(40)}", None, "", "ключ-ü"])
        kind = rng.choice(["success", "success", "retry", "failure", "failure", "bogus", None])
        event: dict[str, object] = {"timestamp": f"2025-10-04T06:00:{second:02d}.{number % 1000:03d}Z"}
        if rng.random() < 0.05:
            del event["timestamp"]
        if key is not None:
            event["key"] = key
        if kind is not None:
            event["type"] = kind
        if kind == "success" and rng.random() < 0.8:
            event["value"] = f"v{number}"
        if kind == "failure" and rng.random() < 0.8:
            event["reason"] = rng.choice(["duplicate", "timeout", "DUPLICATE"])
        if kind in ("retry", "success") and rng.random() < 0.7:
            event["context"] = rng.choice([{"attempt": rng.randrange(1, 5)}, {"x": 1}, 2, 1.5])
        lines.append(json.dumps(event, ensure_ascii=False))
    return lines


def test_odd_events_out_of_order(tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "odd.ndjson", _odd_events())
    options = ConformanceOptions(sort_run_events=64)  # out of order: the on-disk sort, several runs
    single = run_conformance(path, tmp_path / "single", options)
    rules = set(single.report["summary"]["byRule"])
    assert {"missing-required-field", "unknown-event-type", "multiple-success"} <= rules
    for shards in (2, 5):
        run = run_sharded(path, tmp_path / f"s{shards}", options, shards=shards, engine=LocalEngine())
        assert run.split.input_summary["reordered"] is True
        _same_artifacts(tmp_path / "single", tmp_path / f"s{shards}")


def _legacy_inputs(tmp_path: Path) -> list[Path]:
    """Inputs whose report carries decoder warnings: scalar keys and values in NDJSON, and
    OTLP/JSON spans with ids that are not hex (legacy exporters)."""
    scalars = tmp_path / "scalars.ndjson"
    scalars.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in [
        {"timestamp": "2025-10-04T06:00:00.000Z", "type": "success", "key": 42, "value": True},
        {"timestamp": "2025-10-04T06:00:01.000Z", "type": "success", "key": "k", "value": 1.5},
        {"timestamp": "2025-10-04T06:00:02.000Z", "type": "success", "key": 42, "value": "again"},
        {"timestamp": "2025-10-04T06:00:03.000Z", "type": "retry", "key": False, "context": {"attempt": 1}},
        {"timestamp": "2025-10-04T06:00:04.000Z", "type": "success", "key": "false", "value": 7,
         "context": {"attempt": 2}},
    ]))
    document = orjson.loads((SAMPLES / "kvonce-otlp.json").read_bytes())
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans[0]["traceId"] = spans[1]["traceId"] = "trace-legacy-1"
    spans[2]["spanId"] = "span-legacy-2"
    legacy = tmp_path / "legacy.json"
    legacy.write_bytes(orjson.dumps(document))
    return [scalars, legacy]


def test_inputs_with_decoder_warnings(tmp_path: Path) -> None:
    """The input's warnings (legacy ids, scalar keys) reach the merged report as the one pass's."""
    for path in _legacy_inputs(tmp_path):
        single = run_conformance(path, tmp_path / f"{path.stem}-single")
        assert single.report["summary"]["input"]["warnings"], path.name
        for shards in (2, 3):
            run = run_sharded(path, tmp_path / f"{path.stem}-s{shards}", shards=shards, engine=LocalEngine())
            assert run.result.report == single.report
            _same_artifacts(tmp_path / f"{path.stem}-single", tmp_path / f"{path.stem}-s{shards}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_inputs_through_two_shards(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden inputs (``kvonce_pipeline_tests/golden``) give their recorded bytes through two shards."""
    expected = json.loads(MANIFEST.read_text())[name]
    source = CASES[name]
    local = tmp_path / f"input{''.join(source.suffixes)}"  # the name the manifest's reports carry
    shutil.copyfile(source, local)
    monkeypatch.chdir(tmp_path)
    run = run_sharded(local.name, Path("out"), shards=2, engine=LocalEngine())
    assert run.result.exit_code == expected["exitCode"]
    digests = {artifact: hashlib.sha256((tmp_path / "out" / artifact).read_bytes()).hexdigest()
               for artifact in GOLDEN_ARTIFACTS}
    assert digests == expected["sha256"]


def test_each_key_in_one_shard(tmp_path: Path) -> None:
    """The split deals every event of a key to the key's shard, and keeps the global order there."""
    path = tmp_path / "t.jsonl"
    generate(path, GenerateOptions(events=3000, keys=700, format="otlp-jsonl", violations=0.02))
    run = run_sharded(path, tmp_path / "out", shards=3, engine=LocalEngine(), keep_folder=True)
    (folder,) = (tmp_path / "out").glob(f"{FOLDER_PREFIX}*")
    all_lines = (tmp_path / "out" / "kvonce-events.ndjson").read_bytes().splitlines()
    shard_map = (folder / "shard-map.bin").read_bytes()
    assert len(shard_map) == len(all_lines) == 3000
    for shard in range(3):
        lines = (folder / f"shard-{shard:03d}.ndjson").read_bytes().splitlines()
        assert lines == [line for line, owner in zip(all_lines, shard_map) if owner == shard]
        assert all(shard_of(json.loads(line)["key"], 3) == shard for line in lines)
        assert len(lines) == run.split.per_shard[shard]


def test_shard_of_is_stable_across_processes() -> None:
    """Not Python's salted ``hash()``: another interpreter with another hash seed agrees."""
    keys = ["a", "key-000001", "ключ", ""]
    code = ("import json,sys; from kvonce_pipeline.domains.kvonce.own_pass.shards import shard_of; "
            f"print(json.dumps([shard_of(k, 7) for k in {keys!r}]))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"})
    assert json.loads(other.stdout) == [shard_of(key, 7) for key in keys]
    assert shard_of(None, 7) == 0 and shard_of("anything", 1) == 0


def test_unusable_input_same_report(tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "bad.ndjson", ['{"timestamp": "2025-10-04T06:00:00Z", "type": "success", '
                                                  '"key": "a", "value": "1"}', '{"type": '])
    with pytest.raises(InputError) as single_error:
        run_conformance(path, tmp_path / "single")
    with pytest.raises(InputError) as sharded_error:
        run_sharded(path, tmp_path / "sharded", shards=3, engine=LocalEngine())
    assert str(sharded_error.value) == str(single_error.value)
    for name in ("kvonce-validation.json", "kvonce-summary.md"):
        assert filecmp.cmp(tmp_path / "single" / name, tmp_path / "sharded" / name, shallow=False)
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["kvonce-summary.md", "kvonce-validation.json"]


def test_shard_count_bounds(tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "t.ndjson", ['{"timestamp": "2025-10-04T06:00:00Z", "type": "retry", "key": "a"}'])
    for bad in (0, 257):
        with pytest.raises(ValueError, match="shards must be 1 to 256"):
            run_sharded(path, tmp_path / "out", shards=bad, engine=LocalEngine())


# --- a real dask cluster -----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_workers(address: str, count: int, deadline: float) -> None:
    from distributed import Client

    with Client(address, timeout="20s") as client:
        while len(client.scheduler_info()["workers"]) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} dask worker(s) did not join {address} in time")
            time.sleep(0.2)


def _shut_down(address: str) -> None:
    from distributed import Client

    try:
        with Client(address, timeout="5s") as client:
            client.shutdown()
    except (OSError, TimeoutError):
        pass  # not up (it failed to start): the processes are stopped by signal


@pytest.fixture
def dask_cluster(tmp_path: Path):
    """``dask scheduler`` and two ``dask worker`` programs on 127.0.0.1, stopped at the end
    (the cluster's own shutdown, then a signal, then a kill: each wait bounded)."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    dask = str(VENV_BIN / "dask")
    commands = [[dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]]
    commands += [[dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--host",
                  "127.0.0.1", "--name", f"w{number}", "--memory-limit", "0"] for number in range(2)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for number, command in enumerate(commands):
            with open(logs / f"{command[1]}-{number}.log", "wb") as log:
                processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
        _wait_for_workers(address, 2, time.monotonic() + 60)
        yield address
    finally:
        _shut_down(address)
        for stop in (None, subprocess.Popen.terminate, subprocess.Popen.kill):
            if stop is not None:
                for process in processes:
                    if process.poll() is None:
                        stop(process)
            deadline = time.monotonic() + 10
            while any(process.poll() is None for process in processes) and time.monotonic() < deadline:
                time.sleep(0.1)
        assert all(process.poll() is not None for process in processes), "a dask process outlived its kill"


def test_dask_cluster_of_separate_processes_via_cli(tmp_path: Path, dask_cluster: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``kvonce conformance --shards 2 --engine dask --scheduler ADDRESS`` as a program of its own:
    the shards run in the worker programs (other pids), the reports are the one pass's, exit 1."""
    path = tmp_path / "t.jsonl"
    generate(path, GenerateOptions(events=11_000, keys=3_000, format="otlp-jsonl", violations=0.02, seed=2))
    single = run_conformance(path, tmp_path / "single")
    assert single.exit_code == 1
    command = [str(VENV_BIN / "kvonce"), "conformance", "--input", str(path), "--output-dir",
               str(tmp_path / "sharded"), "--shards", "2", "--engine", "dask", "--scheduler", dask_cluster,
               "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "kvonce: INVALID: 11000 events" in done.stderr
    _same_artifacts(tmp_path / "single", tmp_path / "sharded")

    with DaskEngine(dask_cluster) as engine:
        run = run_sharded(path, tmp_path / "again", shards=3, engine=engine)
    assert os.getpid() not in {result.pid for result in run.shards}
    assert len({result.pid for result in run.shards}) <= 2  # the two worker programs
    _same_artifacts(tmp_path / "single", tmp_path / "again")

    # KVONCE_DASK_SCHEDULER stands for --scheduler (no local cluster is started: the address is used)
    monkeypatch.setenv(SCHEDULER_ENV, dask_cluster)
    assert cli.main(["conformance", "--input", str(path), "--output-dir", str(tmp_path / "by-env"),
                     "--shards", "2", "--no-progress"]) == 1
    _same_artifacts(tmp_path / "single", tmp_path / "by-env")


def _cluster_processes(before: set[int]) -> set[int]:
    """Our child processes started since ``before``, but multiprocessing's resource tracker (which
    lives as long as this interpreter, whoever started it)."""
    import psutil

    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in before and "resource_tracker" not in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def test_local_cluster_started_and_stopped(tmp_path: Path) -> None:
    """Without a scheduler address, the dask engine starts a LocalCluster of worker processes
    (one per shard) and stops it: no worker is left running."""
    import psutil

    path = tmp_path / "t.ndjson"
    generate(path, GenerateOptions(events=2_000, keys=500, format="ndjson", violations=0.05))
    run_conformance(path, tmp_path / "single")
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with DaskEngine(workers=2) as engine:
        run = run_sharded(path, tmp_path / "sharded", shards=2, engine=engine)
        during = _cluster_processes(before)
        assert {result.pid for result in run.shards} <= during
    _same_artifacts(tmp_path / "single", tmp_path / "sharded")
    deadline = time.monotonic() + 20
    while _cluster_processes(before):
        assert time.monotonic() < deadline, "the local cluster's processes are still running"
        time.sleep(0.2)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_ndjson(tmp_path / "t.ndjson", ['{"timestamp": "2025-10-04T06:00:00Z", "type": "success", '
                                                '"key": "a", "value": "1"}'])
    out = str(tmp_path / "out")
    assert cli.main(["conformance", "--input", str(path), "--output-dir", out, "--shards", "0"]) == 2
    assert "--shards must be 1 to 256" in capsys.readouterr().err
    assert cli.main(["conformance", "--input", str(path), "--output-dir", out, "--engine", "local",
                     "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "--scheduler needs --engine dask" in capsys.readouterr().err
    # a valid trace through two local shards: exit 0, as the one pass
    assert cli.main(["conformance", "--input", str(path), "--output-dir", out, "--shards", "2", "--engine", "local",
                     "--no-progress"]) == 0


def test_unreachable_scheduler(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="cannot reach the dask scheduler"):
        with DaskEngine(f"tcp://127.0.0.1:{_free_port()}", timeout="2s") as engine:
            del engine


@pytest.mark.parametrize(("strict", "max_retries"), [(True, 3), (False, 0)], ids=["strict", "no-retries"])
def test_the_options_reach_every_shard(tmp_path: Path, strict: bool, max_retries: int) -> None:
    """Each shard judges with the run's options (the merged header alone would hide a shard that did not)."""
    path = tmp_path / "trace.ndjson"
    generate(path, GenerateOptions(events=3000, keys=600, format="ndjson", violations=0.03, seed=5))
    options = ConformanceOptions(strict=strict, max_retries=max_retries)
    single = run_conformance(path, tmp_path / "single", options)
    default = run_conformance(path, tmp_path / "default")
    assert single.report["issues"] != default.report["issues"], "the option changes the findings"
    run_sharded(path, tmp_path / "sharded", options, shards=3, engine=LocalEngine())
    _same_artifacts(tmp_path / "single", tmp_path / "sharded")


def test_a_report_folder_that_cannot_be_written_is_exit_2_as_for_the_one_pass(tmp_path: Path) -> None:
    path = tmp_path / "trace.ndjson"
    generate(path, GenerateOptions(events=500, keys=100, format="ndjson", seed=2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "projected").write_text("a file where the state sequence's folder goes")
    for extra in ([], ["--shards", "2", "--engine", "local"]):
        code = cli.main(["conformance", "--input", str(path), "--output-dir", str(out), "--no-progress", *extra])
        assert code == 2, extra
    assert not list(out.glob(f"{FOLDER_PREFIX}*")), "no shard folder left behind"


def test_a_shard_never_recreates_the_folder_of_a_stopped_run(tmp_path: Path) -> None:
    path = tmp_path / "trace.ndjson"
    generate(path, GenerateOptions(events=500, keys=100, format="ndjson", seed=2))

    class StopsFirst(LocalEngine):
        """The run is stopped (its folder removed) before its shards run."""

        def run(self, tasks):  # type: ignore[no-untyped-def]
            shutil.rmtree(tasks[0].folder)
            return super().run(tasks)

    with pytest.raises(OutputError, match="shard folder is gone"):
        run_sharded(path, tmp_path / "out", shards=2, engine=StopsFirst())
    assert not list((tmp_path / "out").glob(f"{FOLDER_PREFIX}*"))
