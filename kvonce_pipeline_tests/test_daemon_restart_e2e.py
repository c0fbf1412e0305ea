"""End to end: kill ``dagster dev`` between a sensor tick and the run; after a restart each payload
still runs exactly once.

Real ``dagster dev`` (webserver, daemon, code server, run workers) on 127.0.0.1 with a temporary
``DAGSTER_HOME``, drop folder and reports folder, the sensor ticking on every pass of the daemon's
sensor loop (its minimum interval 1 s; the loop passes every 5 s). Two payloads are
dropped; once the sensor has requested their runs, the whole process group is SIGKILLed. Then
``dagster dev`` starts again on the same ``DAGSTER_HOME`` and drop folder, a third payload is
dropped, and the GraphQL API must show exactly one run per partition (the very runs created before
the kill), none left unlaunched, and the sensor's cursor must have survived. Three kill points:

* ``queued``: the first ``dagster dev`` runs with ``concurrency: runs: max_concurrent_runs: 0``, so
  the tick completes and its runs stay QUEUED; the kill lands, deterministically, after the tick and
  before any run started. The restarted daemon (queue open again) must launch each of them once,
  and they succeed.
* ``in_flight``: the usual configuration, killed the moment both runs exist, in whatever state
  (typically one QUEUED and one NOT_STARTED: the tick was cut off while submitting). The restarted
  daemon resumes the cut-off tick and launches both runs; none may be created twice.
* ``started``: killed once a run is STARTED (the run workers die with the group). Dagster does not
  resume or relaunch such a run: with the default instance (run monitoring off) it stays STARTED or
  STARTING for good. The product's guarantee is only that no second run is ever requested for the
  partition, and that is what is asserted.

States at the kill and after the restart are printed (``pytest -s``); docs/drop-folder.md ("What a
daemon crash does") describes them. Every process started is SIGKILLed (process groups, then any
process left with this test's ``DAGSTER_HOME``) whatever happens. The run queue is polled every
second (``FAST_QUEUE``; Dagster's default is 5 s): only how soon queued runs start, not what is
checked. About 40 s per kill point on an idle two-core machine, most of
it the two starts of ``dagster dev``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from .conftest import PROJECT_ROOT, VENV_BIN
from .postgres import deploy_config
from .test_dagster_dev_e2e import (FAST_QUEUE, SENSOR, SENSOR_INTERVAL_S, UP_POLL_S, VALID, Dagit, _drop, _free_port, _key,
                                   _wait, kill_dagster_dev)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEADLINE_S = 110
ONE = VALID
TWO = (b'{"timestamp":"2025-10-04T07:00:00.000Z","type":"success","key":"gamma","value":"v3"}\n'
       b'{"timestamp":"2025-10-04T07:00:01.000Z","type":"success","key":"delta","value":"v4"}\n')
THREE = b'{"timestamp":"2025-10-04T08:00:00.000Z","type":"success","key":"epsilon","value":"v5"}\n'
TELEMETRY_OFF = "telemetry:\n  enabled: false\n" + FAST_QUEUE
QUEUE_CLOSED = TELEMETRY_OFF + "concurrency:\n  runs:\n    max_concurrent_runs: 0\n"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
LEFT = {"STARTING", "STARTED"}  # in progress when the process group was killed


class DagsterDev:
    """Starts and SIGKILLs ``dagster dev`` processes, each in a session (process group) of its own."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.home, self.drop_dir, self.reports = tmp_path / "home", tmp_path / "drops", tmp_path / "reports"
        for folder in (self.home, self.drop_dir, self.reports):
            folder.mkdir()
        self.processes: list[subprocess.Popen[bytes]] = []
        #: set for the production instance (``deploy/dagster.yaml`` on PostgreSQL)
        self.extra_env: dict[str, str] = {}

    def start(self, config: str, name: str) -> Dagit:
        (self.home / "dagster.yaml").write_text(config)
        port = _free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("KVONCE_", "DAGSTER_"))},
               "DAGSTER_HOME": str(self.home), "KVONCE_DROP_DIR": str(self.drop_dir),
               "KVONCE_REPORTS_DIR": str(self.reports), "KVONCE_DROP_SETTLE_SECONDS": "0.5",
               "KVONCE_DROP_SENSOR_INTERVAL_SECONDS": SENSOR_INTERVAL_S, **self.extra_env}
        log_path = self.tmp_path / f"dagster-dev-{name}.log"
        with log_path.open("wb") as log:
            self.processes.append(subprocess.Popen(
                [str(VENV_BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        return Dagit(port, log_path)

    def kill_all(self) -> None:
        """SIGKILL every process group started here, then any straggler; wait until all are gone."""
        for process in self.processes:
            kill_dagster_dev(process, self.home)

    def stored_cursor(self) -> dict[str, Any]:
        """The sensor's cursor as the dead daemon left it in DAGSTER_HOME: the instigator state's, or
        the one reserved on a tick that was cut off (the restarted daemon resumes that tick)."""
        instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))
        try:
            state = next(s for s in instance.all_instigator_state() if s.name == SENSOR["sensorName"])
            cursors = [state.instigator_data.cursor if state.instigator_data else None]
            latest = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
            cursors += [tick.cursor for tick in latest]
            return {name: entry for raw in cursors if raw for name, entry in orjson.loads(raw)["files"].items()}
        finally:
            instance.dispose()


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DagsterDev]:
    runner = DagsterDev(tmp_path)
    try:
        yield runner
    finally:
        runner.kill_all()


STATE = """query($filter: RunsFilter, $s: SensorSelector!) {
  runsOrError(filter: $filter) { ... on Runs { results { runId status tags { key value } } } }
  sensorOrError(sensorSelector: $s) { ... on Sensor { sensorState {
    status typeSpecificData { ... on SensorData { lastCursor } } ticks(limit: 10) { status timestamp } } } } }"""


def _state(dagit: Dagit) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any] | None]:
    """Drop-job runs by partition (one GraphQL request, so it can be polled fast) and the sensor state."""
    data = dagit.query(STATE, {"filter": {"pipelineName": "kvonce_drop_job"}, "s": SENSOR})
    by_partition: dict[str, list[dict[str, Any]]] = {}
    for run in data["runsOrError"]["results"]:
        partition = next((t["value"] for t in run["tags"] if t["key"] == "dagster/partition"), None)
        by_partition.setdefault(partition, []).append(run)
    return by_partition, (data["sensorOrError"] or {}).get("sensorState")


def _elapsed(deadline: float) -> float:
    return time.monotonic() - deadline + DEADLINE_S


def _statuses(by_partition: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {key: [run["status"] for run in runs] for key, runs in by_partition.items()}


@pytest.mark.parametrize(("kill_point", "instance"), [
    ("queued", "sqlite"), ("in_flight", "sqlite"), ("started", "sqlite"),
    # the production instance: deploy/dagster.yaml on a real PostgreSQL server (one kill point
    # keeps the suite's time in bounds; "queued" is the one that goes through its run queue)
    ("queued", "postgres"),
])
def test_daemon_killed_between_tick_and_run_each_payload_runs_once(dev: DagsterDev, kill_point: str, instance: str,
                                                                   request: pytest.FixtureRequest,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    deadline = time.monotonic() + DEADLINE_S
    one, two, three = _key("one.ndjson", ONE), _key("two.ndjson", TWO), _key("three.ndjson", THREE)
    closed, open_ = QUEUE_CLOSED, TELEMETRY_OFF
    if instance == "postgres":
        url = request.getfixturevalue("postgres_url")
        dev.extra_env = {"DAGSTER_PG_URL": url}
        monkeypatch.setenv("DAGSTER_PG_URL", url)  # for reading the dead daemon's cursor from the instance
        closed, open_ = deploy_config(max_concurrent_runs=0) + FAST_QUEUE, deploy_config() + FAST_QUEUE

    # 1. First life: the sensor requests the runs of two payloads, then everything is SIGKILLed.
    dagit = dev.start(closed if kill_point == "queued" else open_, "first")
    _wait(dagit, "the webserver", deadline, dagit.up, poll=UP_POLL_S)
    _drop(dev.drop_dir, "one.ndjson", ONE)
    _drop(dev.drop_dir, "two.ndjson", TWO)
    at_kill: dict[str, list[str]] = {}
    killed_ids: dict[str, list[str]] = {}
    while not at_kill:
        assert time.monotonic() < deadline, f"the sensor never requested the runs:\n{dagit.log_tail()}"
        try:
            by_partition, _ = _state(dagit)
        except OSError:  # the webserver is busy loading the code location
            by_partition = {}
        statuses = _statuses(by_partition)
        wanted = statuses.get(one) and statuses.get(two)
        seen = {*statuses.get(one, []), *statuses.get(two, [])}
        if wanted and (kill_point == "in_flight" or (kill_point == "queued" and seen == {"QUEUED"})
                       or (kill_point == "started" and bool(seen & ({"STARTED"} | TERMINAL)))):
            dev.kill_all()  # immediately: webserver, daemon, code server and run workers
            at_kill = statuses
            killed_ids = {key: [run["runId"] for run in runs] for key, runs in by_partition.items()}
        else:
            time.sleep(0.1)
    print(f"\n[{kill_point}] {_elapsed(deadline):.0f} s: run states seen just before the SIGKILL: {at_kill}")
    assert len(at_kill[one]) == 1 and len(at_kill[two]) == 1, at_kill

    # The cursor the dead daemon left behind already holds both files with their partitions.
    left = dev.stored_cursor()
    assert left["one.ndjson"][2] == one and left["two.ndjson"][2] == two, left

    # 2. Second life, same DAGSTER_HOME and drop folder, queue open; a third payload arrives.
    dagit = dev.start(open_, "second")
    _wait(dagit, "the webserver after the restart", deadline, dagit.up, poll=UP_POLL_S)
    print(f"[{kill_point}] {_elapsed(deadline):.0f} s: up again")
    _drop(dev.drop_dir, "three.ndjson", THREE)

    def settled() -> dict[str, list[str]] | None:
        statuses = _statuses(_state(dagit)[0])
        # A run the kill left unlaunched (NOT_STARTED: created by a tick cut off before it queued
        # the run; QUEUED) must be launched by the restarted daemon; one the kill left STARTING or
        # STARTED has no process any more and stays as it is (run monitoring is off by default).
        done = {one: LEFT | TERMINAL, two: LEFT | TERMINAL, three: TERMINAL}
        if kill_point == "queued":
            done = {one: TERMINAL, two: TERMINAL, three: TERMINAL}
        return statuses if all(set(statuses.get(key, [])) & ok for key, ok in done.items()) else None

    _wait(dagit, "the runs after the restart", deadline, settled)
    # Let the sensor tick at least twice more: nothing may be requested again.
    since = time.time()
    _wait(dagit, "two later ticks", deadline, lambda: sum(
        tick["timestamp"] > since and tick["status"] in ("SKIPPED", "SUCCESS")
        for tick in _state(dagit)[1]["ticks"]) >= 2)
    by_partition, sensor = _state(dagit)
    final = _statuses(by_partition)
    print(f"[{kill_point}] {_elapsed(deadline):.0f} s: run states after the restart: {final}")

    # Never a second run for the same partition, whatever state the killed runs were left in.
    assert set(final) == {one, two, three}, final
    assert all(len(statuses) == 1 for statuses in final.values()), final
    for key in (one, two):  # the very run the killed daemon created, not a new one
        assert [run["runId"] for run in by_partition[key]] == killed_ids[key], key
    assert final[three] == ["SUCCESS"], final
    assert all(statuses[0] in TERMINAL | LEFT for statuses in final.values()), final  # none left unlaunched
    if kill_point == "queued":  # queued when killed: the restarted daemon launched each exactly once
        assert final[one] == ["SUCCESS"] and final[two] == ["SUCCESS"], final

    # The cursor survived: the restarted sensor knows all three files under their partitions.
    cursor = orjson.loads(sensor["typeSpecificData"]["lastCursor"])
    assert {name: entry[2] for name, entry in cursor["files"].items()} == {
        "one.ndjson": one, "two.ndjson": two, "three.ndjson": three}
    assert sensor["status"] == "RUNNING"
