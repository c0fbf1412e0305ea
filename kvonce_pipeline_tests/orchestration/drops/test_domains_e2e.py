"""End to end: the real ``dagster dev`` (webserver and daemon) routes each dropped payload to its domains.

Four payloads are dropped before start: KvOnce only, Inventory only, both in one document, and an
Inventory NDJSON event log named for its domain (``stock.inventory.ndjson``). The
daemon's sensor must launch exactly one run per payload, through the real launcher: KvOnce's
``kvonce_drop_job`` for the first, ``trace_drop_job`` limited to the domains it carries for the others
(the asset and check selection the GraphQL API reports), and each run must succeed and leave each
domain's artifacts in ``<reports>/trace/<partition key>/`` (KvOnce) and ``.../inventory/``. Loopback,
a free port, a temporary ``DAGSTER_HOME``; the whole process group is stopped at the end, whatever
happens. About 40 s on an idle two-core machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvonce_pipeline.engine import drops
from kvonce_pipeline.domains.kvonce.envelope import ENVELOPE

from ...conftest import PROJECT_ROOT, SAMPLES, VENV_BIN
from .test_domains import INVENTORY_OTLP, mixed

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DEADLINE_S = 90
RUNS = """query { runsOrError { ... on Runs { results {
    jobName status tags { key value } assetSelection { path } assetCheckSelection { name assetKey { path } } } } } }"""


def _key(label: str, data: bytes) -> str:
    scope, _, name = label.rpartition("/")
    return drops.partition_key_for(name, hashlib.sha256(data).hexdigest(), scope or drops.DEFAULT_SCOPE)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(url: str, text: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": text}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


@pytest.fixture
def dagster_dev(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """``dagster dev`` on 127.0.0.1:<free port> with the three payloads already dropped."""
    home, drop_dir, reports = tmp_path / "home", tmp_path / "drops", tmp_path / "reports"
    for folder in (home, drop_dir, reports):
        folder.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    for label, data in PAYLOADS.items():
        target = drop_dir / label
        target.parent.mkdir(exist_ok=True)
        (target.parent / f".{target.name}.tmp").write_bytes(data)
        os.replace(target.parent / f".{target.name}.tmp", target)  # as the collector drops: one rename
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("KVONCE_", "DAGSTER_"))},
           "DAGSTER_HOME": str(home), "KVONCE_DROP_DIR": str(drop_dir), "KVONCE_REPORTS_DIR": str(reports),
           "KVONCE_DROP_SETTLE_SECONDS": "0.5", "KVONCE_DROP_SENSOR_INTERVAL_SECONDS": "2"}
    log_path = tmp_path / "dagster-dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield f"http://127.0.0.1:{port}", reports, log_path
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)  # the session we started: dagster dev and its children
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    continue
            try:
                os.killpg(process.pid, signal.SIGKILL)  # stragglers that outlived the leader
            except ProcessLookupError:
                pass


#: The mixed payload carries the KvOnce sample's keys again: in the same scope the KvOnce store would
#: (rightly) judge one of the two payloads a second write, so it is dropped into its own scope.
PAYLOADS = {"kv.json": (SAMPLES / "kvonce-otlp.json").read_bytes(), "inv.json": INVENTORY_OTLP.read_bytes(),
            "svc2/both.json": mixed(),
            # an Inventory NDJSON event log, named for its domain (an event log names none itself)
            "stock.inventory.ndjson": (INVENTORY_OTLP.parent / "inventory-sample.ndjson").read_bytes()}


def test_dagster_dev_launches_one_run_per_drop_limited_to_its_domains(dagster_dev) -> None:
    url, reports, log = dagster_dev
    keys = {name: _key(name, data) for name, data in PAYLOADS.items()}
    deadline = time.monotonic() + DEADLINE_S
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            runs = _graphql(url, RUNS)["runsOrError"]["results"]
        except OSError:
            runs = []  # the webserver is not up yet
        done = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        if len(done) >= len(PAYLOADS) and len(done) == len(runs):
            break
        time.sleep(1)
    else:
        tail = log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"timed out; runs {runs}; dagster dev's log ends:\n{tail}")
    by_partition = {next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition"): r
                    for r in runs if r["jobName"] != "kvonce_store_job"}
    assert len(by_partition) == len([r for r in runs if r["jobName"] != "kvonce_store_job"]), "one run per drop"
    assert set(by_partition) == set(keys.values())
    assert {name: (by_partition[key]["jobName"], by_partition[key]["status"]) for name, key in keys.items()} == {
        "kv.json": ("kvonce_drop_job", "SUCCESS"), "inv.json": ("trace_drop_job", "SUCCESS"),
        "svc2/both.json": ("trace_drop_job", "SUCCESS"), "stock.inventory.ndjson": ("trace_drop_job", "SUCCESS")}

    def selected(name: str) -> set[str]:
        return {"/".join(a["path"]) for a in by_partition[keys[name]]["assetSelection"] or []}

    inventory = {"drops/collected_otlp", "drops/inventory_events", "drops/inventory_projection",
                 "drops/inventory_validation", "drops/trace_summary"}
    assert selected("inv.json") == inventory and selected("stock.inventory.ndjson") == inventory
    assert selected("svc2/both.json") == inventory | {"drops/collected_kvonce_otlp", "drops/kvonce_events",
                                                 "drops/kvonce_projection", "drops/kvonce_validation"}
    checks = {("/".join(c["assetKey"]["path"]), c["name"])
              for c in by_partition[keys["inv.json"]]["assetCheckSelection"]}
    assert ("drops/inventory_validation", "inventory_conformance") in checks and len(checks) == 4

    trace = reports / "trace"
    assert (trace / keys["kv.json"] / ENVELOPE).is_file() and not (trace / keys["kv.json"] / "inventory").exists()
    assert not (trace / keys["inv.json"] / ENVELOPE).exists()
    assert json.loads((trace / keys["inv.json"] / "inventory" / "inventory-validation.json").read_text())["valid"]
    assert json.loads((trace / keys["svc2/both.json"] / "inventory" / "inventory-validation.json").read_text())["valid"]
    assert json.loads((trace / keys["svc2/both.json"] / ENVELOPE).read_text())["valid"] is True
    log_report = json.loads((trace / keys["stock.inventory.ndjson"] / "inventory" / "inventory-validation.json").read_text())
    assert log_report["valid"] and log_report["summary"]["input"]["format"] == "ndjson"
