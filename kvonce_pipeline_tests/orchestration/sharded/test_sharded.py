"""``kvonce_sharded_job`` (kvonce_pipeline/orchestration/sharded/job.py) on a real ephemeral instance,
and as ``dagster job execute`` with its shards on a local dask cluster: the reports are the one
pass's, byte for byte, in the main job's folder, and a violation fails the run with the verdict."""

from __future__ import annotations

import filecmp
import os
import subprocess
from pathlib import Path

import dagster as dg

from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.domains.kvonce.own_pass.conformance import run_conformance
from kvonce_pipeline.definitions import defs
from kvonce_pipeline.devtools.generate import GenerateOptions, generate
from kvonce_pipeline.orchestration.resources import KvonceSettings
from kvonce_pipeline.orchestration.run_verdict import run_verdict
from kvonce_pipeline.orchestration.sharded.job import PUBLISHED, kvonce_sharded_job

from ...conftest import VENV_BIN


def _execute(instance: dg.DagsterInstance, payload: Path, reports: Path, **config: object) -> dg.ExecuteInProcessResult:
    return kvonce_sharded_job.execute_in_process(
        instance=instance, raise_on_error=False,
        resources={"kvonce": KvonceSettings(payload=str(payload), reports_dir=str(reports))},
        run_config={"ops": {"kvonce_sharded_check": {"config": config}}})


def _same_as_one_pass(payload: Path, sharded: Path, tmp_path: Path) -> int:
    single = run_conformance(payload, tmp_path / "one-pass")
    for name in PUBLISHED:
        assert filecmp.cmp(single.output_dir / name, sharded / name, shallow=False), name
    return single.exit_code


def test_registered_in_the_definitions() -> None:
    job = defs.resolve_job_def("kvonce_sharded_job")
    assert [node.name for node in job.nodes] == ["kvonce_sharded_check"]


def test_violations_fail_the_run_with_the_verdict(tmp_path: Path) -> None:
    payload = tmp_path / "trace.jsonl"
    generate(payload, GenerateOptions(events=6_000, keys=2_000, format="otlp-jsonl", violations=0.03, seed=4))
    reports = tmp_path / "reports"
    with dg.DagsterInstance.ephemeral() as instance:
        result = _execute(instance, payload, reports, shards=2, engine="local")
        assert not result.success
        assert run_verdict(instance, "kvonce_sharded_job")[0] == 1
        code, message = run_verdict(instance, "kvonce_sharded_job")
    assert message.startswith(f"{_errors(reports)} violations in {payload}:")
    assert _same_as_one_pass(payload, reports / "trace", tmp_path) == code
    assert not [path for path in (reports / "trace").iterdir() if path.name.startswith(".kvonce-shards-")]


def _errors(reports: Path) -> int:
    import json

    return int(json.loads((reports / "trace" / artifacts.VALIDATION).read_text())["summary"]["errors"])


def test_valid_payload_succeeds_and_replaces_a_stale_collected_copy(tmp_path: Path, sample_otlp: Path) -> None:
    reports = tmp_path / "reports"
    stale = reports / "trace" / artifacts.COLLECTED
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")  # an earlier payload's copy: it would vouch for the wrong input
    with dg.DagsterInstance.ephemeral() as instance:
        result = _execute(instance, sample_otlp, reports, shards=3, engine="local")
    assert result.success
    output = result.output_for_node("kvonce_sharded_check")
    assert output["valid"] is True and set(output["files"]) == set(PUBLISHED)
    assert _same_as_one_pass(sample_otlp, reports / "trace", tmp_path) == 0
    assert not stale.exists()


def test_bad_config_fails_with_a_message(tmp_path: Path, sample_otlp: Path) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        result = _execute(instance, sample_otlp, tmp_path / "reports", shards=2, engine="local",
                          scheduler="tcp://127.0.0.1:9")
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    assert "a scheduler address needs engine: dask" in str(failure.step_failure_data.user_failure_data.description)


def test_dagster_job_execute_on_a_local_dask_cluster(tmp_path: Path) -> None:
    """The CI command, a program of its own, with its shards on a local cluster of two worker
    processes the run starts and stops: exit 1 for the violations, the one pass's bytes."""
    payload = tmp_path / "trace.ndjson"
    generate(payload, GenerateOptions(events=3_000, keys=900, format="ndjson", violations=0.03, seed=9))
    reports, home = tmp_path / "reports", tmp_path / "home"
    home.mkdir()
    config = tmp_path / "run.yaml"
    config.write_text("ops:\n  kvonce_sharded_check:\n    config:\n      shards: 2\n      engine: dask\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "KVONCE_OTLP_PAYLOAD": str(payload),
           "KVONCE_REPORTS_DIR": str(reports)}
    done = subprocess.run([str(VENV_BIN / "dagster"), "job", "execute", "-m", "kvonce_pipeline", "-j",
                           "kvonce_sharded_job", "-c", str(config)], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "in 2 key shard(s) on dask" in done.stderr and "violations in" in done.stderr
    assert _same_as_one_pass(payload, reports / "trace", tmp_path) == 1
