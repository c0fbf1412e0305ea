"""End to end: the real ``dagster dev`` (webserver and daemon) on loopback picks up dropped payloads.

Starts ``dagster dev -w workspace.yaml`` on 127.0.0.1 and a free port with a temporary
``DAGSTER_HOME``, drop folder and reports folder; drops payloads (two before start, one while it
runs), waits for their reports, and asks the GraphQL API that the sensor is running and that each
partition ran exactly once, including after later ticks. The whole process group (and any process
left with the test's ``DAGSTER_HOME``) is killed at the end, whatever happens.

What makes it quick, without changing what it proves: the sensor's minimum interval is 1 s
(``KVONCE_DROP_SENSOR_INTERVAL_SECONDS``, 15 s by default), so the daemon evaluates it on every pass
of its sensor loop, which Dagster runs every 5 s whatever the interval (with a 5 s minimum a pass
that came a moment early skipped it: ticks every 5 or 10 s); the run queue is polled every second
(``run_queue: dequeue_interval_seconds``, Dagster's default is 5 s); whether the webserver is up
is polled every quarter second; and the processes are SIGKILLed at the end instead of waiting 3 to
5 s for a graceful shutdown nothing here checks. About 25 s per instance on a quiet two-core machine (most of
it ``dagster dev`` loading the code location, the sensor's 5 s passes, and one run process per
payload); the deadline leaves room for a loaded one. ``pytest -s`` prints when each step was reached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from kvonce_pipeline.engine import drops
from kvonce_pipeline.domains.kvonce.envelope import ENVELOPE

from .conftest import PROJECT_ROOT, VENV_BIN
from .postgres import deploy_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DEADLINE_S = 100
#: How often a condition is polled. Once a second: each GraphQL query costs the webserver CPU that
#: the runs need on two cores (with four polls a second the restart test ran ~10 s slower per kill
#: point in one back-to-back comparison, most likely for that reason). Whether the webserver is up
#: yet is asked more often (a refused connection costs nothing).
POLL_S = 1.0
UP_POLL_S = 0.25
#: Appended to an instance's dagster.yaml: the queue daemon looks for queued runs every second
#: (Dagster's default, 5 s, would add up to 5 s before each run). Nothing else of the queue changes:
#: its limits stay those of ``concurrency: runs:`` (Dagster accepts the two blocks side by side).
FAST_QUEUE = "run_queue:\n  dequeue_interval_seconds: 1\n"
#: The sensor's minimum interval in these tests (the product's default is 15 s; 1 s is its floor).
#: The daemon's sensor loop passes every 5 s (fixed in Dagster), so the sensor ticks on each pass.
SENSOR_INTERVAL_S = "1"
VALID = (b'{"timestamp":"2025-10-04T06:00:00.000Z","type":"success","key":"alpha","value":"v1"}\n'
         b'{"timestamp":"2025-10-04T06:00:01.000Z","type":"retry","key":"beta"}\n'
         b'{"timestamp":"2025-10-04T06:00:02.000Z","type":"success","key":"beta","value":"v2"}\n')
BROKEN = b'{"timestamp":"2025-10-04T06:00:00.000Z","type":"success","key":"a","value":"v"}\n{"oops\n'
LATE = b'{"timestamp":"2025-10-04T06:00:05.000Z","type":"failure","key":"alpha","reason":"duplicate"}\n'
SENSOR = {"repositoryLocationName": "kvonce_pipeline", "repositoryName": "__repository__",
          "sensorName": "kvonce_drop_sensor"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _key(name: str, data: bytes) -> str:
    return drops.partition_key_for(name, hashlib.sha256(data).hexdigest())


def _leftovers(home: Path) -> list[int]:
    """Processes still running with this ``DAGSTER_HOME`` (a child that left the process group)."""
    marker = f"DAGSTER_HOME={home}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def kill_dagster_dev(process: subprocess.Popen[bytes], home: Path) -> None:
    """SIGKILL the session started for ``dagster dev`` (webserver, daemon, code server, run workers),
    then any straggler with this ``DAGSTER_HOME``; return once all are gone (bounded). No graceful
    shutdown: nothing after a test needs one, and dagster dev takes 3 to 5 s over it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    for _ in range(50):
        left = _leftovers(home)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


class Clock:
    """Seconds since the test started, printed at each step (``pytest -s``): where the time goes."""

    def __init__(self, label: str) -> None:
        self.label, self.start = label, time.monotonic()

    def note(self, what: str) -> None:
        print(f"[{self.label}] {time.monotonic() - self.start:5.1f} s: {what}")


def _drop(folder: Path, name: str, data: bytes) -> None:
    """Drop the way the collector does: a temporary dot-name, then one rename."""
    tmp = folder / f".{name}.x1.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)


class Dagit:
    def __init__(self, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, text: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": text, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = json.loads(response.read())
        assert "errors" not in payload, payload
        return payload["data"]

    def drop_runs(self) -> list[dict[str, Any]]:
        data = self.query("""query($filter: RunsFilter) { runsOrError(filter: $filter) {
            ... on Runs { results { runId status tags { key value } } } } }""",
                          {"filter": {"pipelineName": "kvonce_drop_job"}})
        runs = data["runsOrError"]["results"]
        for run in runs:
            run["partition"] = next((t["value"] for t in run["tags"] if t["key"] == "dagster/partition"), None)
        return runs

    def sensor(self) -> dict[str, Any]:
        data = self.query("""query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {
            __typename ... on Sensor { sensorState { status ticks(limit: 50) { status timestamp runIds } } } } }""",
                          {"s": SENSOR})
        return data["sensorOrError"]


@contextlib.contextmanager
def running_dagster_dev(tmp_path: Path, payloads: Sequence[tuple[str, bytes]] = (), *,
                        config: str = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n" + FAST_QUEUE,
                        extra_env: dict[str, str] | None = None) -> Iterator[tuple[Dagit, Path, Path]]:
    """``dagster dev`` on 127.0.0.1 and a free port, with a temporary ``DAGSTER_HOME``, drop folder and
    reports folder (``payloads`` are dropped before it starts); its whole process group is killed
    on the way out, whatever happened."""
    home, drop_dir, reports = tmp_path / "home", tmp_path / "drops", tmp_path / "reports"
    for folder in (home, drop_dir, reports):
        folder.mkdir()
    (home / "dagster.yaml").write_text(config)
    for name, data in payloads:
        _drop(drop_dir, name, data)
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("KVONCE_", "DAGSTER_"))},
           "DAGSTER_HOME": str(home), "KVONCE_DROP_DIR": str(drop_dir), "KVONCE_REPORTS_DIR": str(reports),
           "KVONCE_DROP_SETTLE_SECONDS": "0.5", "KVONCE_DROP_SENSOR_INTERVAL_SECONDS": SENSOR_INTERVAL_S, **(extra_env or {})}
    log = (tmp_path / "dagster-dev.log").open("wb")
    process = subprocess.Popen(
        [str(VENV_BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Dagit(port, tmp_path / "dagster-dev.log"), drop_dir, reports
    finally:
        kill_dagster_dev(process, home)
        log.close()


@pytest.fixture(params=["sqlite", "postgres"])
def dagster_dev(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Dagit, Path, Path]]:
    """The embedded SQLite home (``make ui``), and the production instance of ``deploy/dagster.yaml``
    on a real PostgreSQL server (queued runs, per-scope limit; its queue polled every second)."""
    options: dict[str, Any] = {}
    if request.param == "postgres":
        options = {"config": deploy_config() + FAST_QUEUE, "extra_env": {"DAGSTER_PG_URL": request.getfixturevalue("postgres_url")}}
    with running_dagster_dev(tmp_path, [("first.ndjson", VALID), ("broken.ndjson", BROKEN)], **options) as running:
        yield running


def _wait(dagit: Dagit, what: str, deadline: float, check, poll: float = POLL_S) -> Any:
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}; dagster dev's log ends:\n{dagit.log_tail()}")


def _finished(runs: list[dict[str, Any]], keys: set[str]) -> bool:
    done = {r["partition"] for r in runs if r["status"] in ("SUCCESS", "FAILURE")}
    return keys <= done


def test_dagster_dev_processes_each_dropped_payload_exactly_once(dagster_dev, request: pytest.FixtureRequest) -> None:
    dagit, drop_dir, reports = dagster_dev
    clock = Clock(request.node.callspec.id)
    deadline = time.monotonic() + DEADLINE_S
    _wait(dagit, "the webserver", deadline, dagit.up, poll=UP_POLL_S)
    clock.note("webserver up")
    sensor = _wait(dagit, "the sensor", deadline, lambda: dagit.sensor().get("sensorState"))
    assert sensor["status"] == "RUNNING"  # running by default, nobody switched it on

    first, broken = _key("first.ndjson", VALID), _key("broken.ndjson", BROKEN)
    _wait(dagit, "the first two runs", deadline, lambda: _finished(dagit.drop_runs(), {first, broken}))
    clock.note("first two runs finished")
    _drop(drop_dir, "late.ndjson", LATE)  # arrives while everything runs
    late = _key("late.ndjson", LATE)
    _wait(dagit, "the late payload's run", deadline, lambda: _finished(dagit.drop_runs(), {first, broken, late}))
    clock.note("late run finished")
    for key in (first, broken, late):
        assert (reports / "trace" / key / ENVELOPE).is_file(), key

    # Let the sensor tick again after the last run has finished (and so after the tick that
    # requested it): nothing may be launched twice.
    since = max(time.time(), *(t["timestamp"] for t in dagit.sensor()["sensorState"]["ticks"] if t["runIds"]))
    _wait(dagit, "a later tick", deadline, lambda: any(
        t["timestamp"] > since and t["status"] in ("SKIPPED", "SUCCESS")
        for t in dagit.sensor()["sensorState"]["ticks"]))
    clock.note("a later tick")
    runs = dagit.drop_runs()
    by_partition: dict[str, list[str]] = {}
    for run in runs:
        by_partition.setdefault(run["partition"], []).append(run["status"])
    assert by_partition == {first: ["SUCCESS"], broken: ["FAILURE"], late: ["SUCCESS"]}

    envelope = json.loads((reports / "trace" / broken / ENVELOPE).read_text())
    assert envelope["status"] == "unusable" and "broken.ndjson" in envelope["inputError"]["source"]
    validation = json.loads((reports / "trace" / late / "kvonce-validation.json").read_text())
    assert validation["valid"] is True  # its duplicate is legal: "alpha" was written in the first payload
    assert (drop_dir / "broken.ndjson").read_bytes() == BROKEN  # never rewritten

    # The sensor also refolds the store after new results: both readable payloads are in it.
    store_file = reports / "trace" / "kvonce-store" / "kvonce-store.json"

    def store_partitions() -> set[str]:
        try:
            return {p["partition"] for p in json.loads(store_file.read_text())["payloads"]}
        except (FileNotFoundError, ValueError):
            return set()

    assert _wait(dagit, "the store", deadline, lambda: store_partitions() >= {first, late})
    clock.note("store refolded")
