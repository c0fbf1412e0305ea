"""KvOnce's part of ``trace_conformance_job`` (kvonce_pipeline.orchestration.domains.kvonce_part): skipped for
a payload of other domains only, checked otherwise, and ``kvonce_conformance_job`` unchanged; with the
built-in Inventory domain on real ephemeral instances, against what ``kvonce conformance`` writes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import dagster as dg
import orjson
import pytest

from kvonce_pipeline.engine import registry
from kvonce_pipeline.engine.payload import PayloadRequest, check_payload
from kvonce_pipeline.orchestration.conformance.definitions import conformance_assets, kvonce_conformance_job
from kvonce_pipeline.orchestration.domains.assets import build_domain_definitions
from kvonce_pipeline.orchestration.resources import KvonceSettings

from ...conftest import SAMPLES, VENV_BIN

INVENTORY_SAMPLES = Path(registry.get("inventory").folder) / "samples"
KVONCE_ASSETS = ["collected_kvonce_otlp", "kvonce_events", "kvonce_projection", "kvonce_validation"]
INVENTORY_ASSETS = ["inventory_events", "inventory_projection", "inventory_validation"]


def _run(job: str, payload: Path, reports: Path, run_config: dict | None = None,
         **settings: object) -> dg.ExecuteInProcessResult:
    merged = dg.Definitions.merge(
        dg.Definitions(assets=conformance_assets, jobs=[kvonce_conformance_job],
                       resources={"kvonce": KvonceSettings(payload=str(payload), reports_dir=str(reports),
                                                           **settings)}),  # type: ignore[arg-type]
        build_domain_definitions())
    return merged.resolve_job_def(job).execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                                           raise_on_error=False, run_config=run_config)


def _materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def _skipped(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """The observations KvOnce's step leaves when it steps aside, by asset."""
    out = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_OBSERVATION":
            observation = event.event_specific_data.asset_observation  # type: ignore[union-attr]
            out[observation.asset_key.to_user_string()] = observation.metadata["skipped"].value
    return out


def _failures(result: dg.ExecuteInProcessResult) -> dict[str, dg.Failure]:
    return {e.step_key: e.step_failure_data.user_failure_data  # type: ignore[union-attr,misc]
            for e in result.all_events if e.is_step_failure}


def _domains(summary_path: Path) -> list[tuple[str, str]]:
    summary = orjson.loads(summary_path.read_bytes())
    return [(d["key"], d["status"]) for d in summary["domains"]]


def _mixed(path: Path, *, bad_kvonce: bool = False) -> Path:
    kvonce = (SAMPLES / "kvonce-otlp.json").read_bytes()
    if bad_kvonce:
        kvonce = kvonce.replace(b'"retry"', b'"success"', 1)
    document = orjson.loads(kvonce)
    document["resourceSpans"] += orjson.loads((INVENTORY_SAMPLES / "inventory-otlp.json").read_bytes())["resourceSpans"]
    path.write_bytes(orjson.dumps(document))
    return path


def test_an_inventory_otlp_payload_passes_the_trace_job_with_kvonce_skipped_as_the_cli_says(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    trace = reports / "trace"
    # an earlier KvOnce payload leaves KvOnce's artifacts: they describe another input
    assert _run("kvonce_conformance_job", SAMPLES / "kvonce-otlp.json", reports).success
    assert (trace / "kvonce-validation.json").is_file()
    payload = INVENTORY_SAMPLES / "inventory-otlp.json"
    result = _run("trace_conformance_job", payload, reports)
    assert result.success
    assert _materialized(result) == {"collected_otlp", "trace_summary", *INVENTORY_ASSETS}
    skipped = _skipped(result)
    assert sorted(skipped) == sorted(KVONCE_ASSETS)
    assert skipped["kvonce_events"].startswith(f"no span of {payload} carries kvonce.event.type; it carries inventory")
    assert "removed an earlier payload's kvonce-events.ndjson" in skipped["kvonce_events"]
    assert not (trace / "kvonce-validation.json").exists() and not (trace / "projected").exists()
    assert _domains(trace / "trace-summary.json") == [("inventory", "valid")]
    cli = tmp_path / "cli"
    assert check_payload(PayloadRequest(payload, cli)).exit_code == 0
    for name in ["inventory/inventory-validation.json", "inventory/inventory-events.ndjson", "trace-summary.json",
                 "trace-summary.md"]:
        assert (trace / name).read_bytes() == (cli / name).read_bytes(), name
    # the KvOnce CI job on the same payload fails exactly as it always has
    result = _run("kvonce_conformance_job", payload, reports)
    failure = _failures(result)["kvonce_conformance_pass"]
    assert not result.success and failure.metadata["verdict"].value == "unusable"
    assert "no kvonce events" in (failure.description or "") and not _skipped(result)


def test_a_mixed_payload_is_judged_by_the_worst_domain(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    result = _run("trace_conformance_job", _mixed(tmp_path / "mixed.json"), reports)
    assert result.success and not _skipped(result)
    assert _materialized(result) == {"collected_otlp", "trace_summary", *INVENTORY_ASSETS, *KVONCE_ASSETS}
    assert _domains(reports / "trace" / "trace-summary.json") == [("kvonce", "valid"), ("inventory", "valid")]
    payload = _mixed(tmp_path / "bad.json", bad_kvonce=True)
    result = _run("trace_conformance_job", payload, reports)
    assert not result.success
    assert set(_failures(result)) == {"kvonce_conformance_pass"}
    assert {*INVENTORY_ASSETS, "trace_summary"} <= _materialized(result)
    assert _domains(reports / "trace" / "trace-summary.json") == [("kvonce", "invalid"), ("inventory", "valid")]
    cli = tmp_path / "cli"
    assert check_payload(PayloadRequest(payload, cli)).exit_code == 1
    for name in ["trace-summary.json", "inventory/inventory-validation.json", "kvonce-validation.json"]:
        assert (reports / "trace" / name).read_bytes() == (cli / name).read_bytes(), name


@pytest.mark.parametrize("how", ["run_config", "resource"])
def test_an_inventory_ndjson_log_is_named_by_ndjson_domain(tmp_path: Path, how: str) -> None:
    reports = tmp_path / "reports"
    log = INVENTORY_SAMPLES / "violations.ndjson"
    if how == "run_config":
        result = _run("trace_conformance_job", log, reports,
                      {"ops": {"collected_otlp": {"config": {"ndjson_domain": "inventory"}}}})
    else:  # KVONCE_NDJSON_DOMAIN=inventory
        result = _run("trace_conformance_job", log, reports, ndjson_domain="inventory")
    assert not result.success, "the log violates Inventory"
    assert set(_failures(result)) == {"inventory_conformance_pass"}
    assert _skipped(result)["kvonce_validation"] == f"{log} is an NDJSON event log of inventory (ndjson_domain)"
    assert not {*KVONCE_ASSETS} & _materialized(result)
    assert _domains(reports / "trace" / "trace-summary.json") == [("inventory", "invalid")]
    cli = tmp_path / "cli"
    assert check_payload(PayloadRequest(log, cli, domains=("inventory",))).exit_code == 1
    assert (reports / "trace" / "inventory" / "inventory-validation.json").read_bytes() == \
        (cli / "inventory" / "inventory-validation.json").read_bytes()


def test_an_ndjson_log_without_a_named_domain_is_kvonces_as_before(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    result = _run("trace_conformance_job", SAMPLES / "kvonce-sample.ndjson", reports)
    assert not _skipped(result) and set(KVONCE_ASSETS[:3]) <= _materialized(result)
    # ... and an Inventory log read as KvOnce's is not skipped: KvOnce judges it (and fails it)
    result = _run("trace_conformance_job", INVENTORY_SAMPLES / "inventory-sample.ndjson", reports)
    assert not result.success and "kvonce_conformance_pass" in _failures(result) and not _skipped(result)
    # a domain nobody installed is the run's configuration error, in KvOnce's step too
    result = _run("trace_conformance_job", INVENTORY_SAMPLES / "inventory-sample.ndjson", reports,
                  ndjson_domain="nope")
    failures = _failures(result)
    assert "no domain 'nope' is installed" in (failures["kvonce_conformance_pass"].description or "")
    assert "no domain 'nope' is installed" in (failures["collected_otlp"].description or "")


def test_a_payload_of_no_domain_fails_the_trace_job_through_kvonce(tmp_path: Path) -> None:
    """Nothing to check at all must not pass: KvOnce's step says so, as the CLI's default domain does."""
    payload = tmp_path / "foreign.json"
    document = orjson.loads((INVENTORY_SAMPLES / "inventory-otlp.json").read_bytes())
    payload.write_bytes(orjson.dumps(document).replace(b"inventory.event.", b"billing.event."))
    result = _run("trace_conformance_job", payload, tmp_path / "reports")
    assert not result.success and not _skipped(result)
    failure = _failures(result)["kvonce_conformance_pass"]
    assert failure.metadata["verdict"].value == "unusable" and "no kvonce events" in (failure.description or "")


def test_kvonces_graph_refuses_a_partial_selection(tmp_path: Path) -> None:
    defs = dg.Definitions(assets=conformance_assets, resources={"kvonce": KvonceSettings(
        payload=str(SAMPLES / "kvonce-otlp.json"), reports_dir=str(tmp_path))})
    job = dg.define_asset_job("part", selection=dg.AssetSelection.assets(dg.AssetKey("kvonce_events")))
    result = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("part").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    failure = _failures(result)["kvonce_conformance_pass"]
    assert not result.success and "materialized as a whole" in (failure.description or "")
    assert not (tmp_path / "trace").exists(), "refused before anything is written"


def _job_execute(tmp_path: Path, payload: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """``dagster job execute -j trace_conformance_job`` as CI runs it, then ``run_verdict``'s exit code."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KVONCE_", "DAGSTER_"))}
    environment = {**base, "DAGSTER_HOME": str(home), "KVONCE_OTLP_PAYLOAD": str(payload),
                   "KVONCE_REPORTS_DIR": str(tmp_path / "reports"), **env}
    done = subprocess.run([str(VENV_BIN / "dagster"), "job", "execute", "-m", "kvonce_pipeline", "-j",
                           "trace_conformance_job"], cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=300)
    verdict = subprocess.run([str(VENV_BIN / "python"), "-m", "kvonce_pipeline.orchestration.run_verdict", "--job",
                              "trace_conformance_job", "--dagster-exit", str(done.returncode)], cwd=tmp_path,
                             env=environment, capture_output=True, text=True, timeout=120)
    return done, verdict.returncode


def test_dagster_job_execute_of_the_trace_job_on_inventory_otlp_and_an_inventory_ndjson_log(tmp_path: Path) -> None:
    done, verdict = _job_execute(tmp_path, INVENTORY_SAMPLES / "inventory-otlp.json")
    assert (done.returncode, verdict) == (0, 0), done.stderr[-3000:]
    assert "nothing to check for KvOnce" in done.stdout + done.stderr
    done, verdict = _job_execute(tmp_path, INVENTORY_SAMPLES / "violations.ndjson", KVONCE_NDJSON_DOMAIN="inventory")
    assert (done.returncode, verdict) == (1, 1), done.stderr[-3000:]
    report = orjson.loads((tmp_path / "reports" / "trace" / "inventory" / "inventory-validation.json").read_bytes())
    assert report["valid"] is False and report["summary"]["input"]["format"] == "ndjson"
