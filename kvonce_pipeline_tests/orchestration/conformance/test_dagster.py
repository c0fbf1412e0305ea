"""The Dagster layer on a real ephemeral instance, and the CI command as a real subprocess."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import dagster as dg
import orjson
import pytest

from kvonce_pipeline.definitions import defs
from kvonce_pipeline.orchestration.conformance.definitions import conformance_assets
from kvonce_pipeline.orchestration.resources import KvonceSettings
from kvonce_pipeline.domains.kvonce.reader import read_trace

from ...conftest import VENV_BIN
from ...otel_sdk import kv, sdk_request_bytes

ASSET_NAMES = ["collected_kvonce_otlp", "kvonce_events", "kvonce_projection", "kvonce_validation"]


def materialize(payload: Path, reports: Path, **settings: object) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        conformance_assets,
        instance=dg.DagsterInstance.ephemeral(),
        resources={"kvonce": KvonceSettings(payload=str(payload), reports_dir=str(reports), **settings)},
        raise_on_error=False,
    )


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("kvonce_conformance_job")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert set(ASSET_NAMES) <= keys


def test_materialize_records_lineage_and_passes_checks(sample_otlp: Path, tmp_path: Path) -> None:
    result = materialize(sample_otlp, tmp_path)
    assert result.success
    trace_dir = tmp_path / "trace"
    materializations = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    assert list(materializations) == ASSET_NAMES
    for name, event in materializations.items():
        meta = event.materialization.metadata
        path = Path(meta["path"].value)
        assert path.parent == trace_dir, name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"].value, name
        assert event.materialization.tags["dagster/data_version"] == meta["sha256"].value, name
        assert event.materialization.tags.get("dagster/code_version"), name
    collected = materializations["collected_kvonce_otlp"].materialization.metadata
    assert collected["source_sha256"].value == hashlib.sha256(sample_otlp.read_bytes()).hexdigest()
    assert collected["converted"].value is False, "spec OTLP/JSON is copied byte for byte"
    assert (trace_dir / "collected-kvonce-otlp.json").read_bytes() == sample_otlp.read_bytes()
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"collected_schema": True, "events_schema": True, "projection_schema": True,
                      "validation_schema": True, "kvonce_conformance": True}
    report = orjson.loads((trace_dir / "kvonce-validation.json").read_bytes())
    assert report["valid"] and report["summary"]["input"]["source"] == str(sample_otlp)


def test_violation_fails_the_blocking_check_after_writing_the_report(tmp_path: Path) -> None:
    payload = tmp_path / "payload.pb"
    payload.write_bytes(sdk_request_bytes([kv("success", "k", 0, value="a"), kv("success", "k", 5, value="b")]))
    result = materialize(payload, tmp_path / "reports")
    assert not result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["kvonce_conformance"].passed is False
    assert checks["kvonce_conformance"].metadata["errors"].value == 1
    report = orjson.loads((tmp_path / "reports" / "trace" / "kvonce-validation.json").read_bytes())
    assert report["valid"] is False and report["issues"][0]["type"] == "multiple-success"


def test_ndjson_payload_is_collected_as_otlp_json_that_reads_back_the_same(sample_ndjson: Path,
                                                                          tmp_path: Path) -> None:
    result = materialize(sample_ndjson, tmp_path)
    assert result.success  # valid, with a warning
    collected = tmp_path / "trace" / "collected-kvonce-otlp.json"
    assert "resourceSpans" in orjson.loads(collected.read_bytes())
    original, again = read_trace(sample_ndjson).events, read_trace(collected).events
    assert len(original) == len(again) and all(a.same_event(b) for a, b in zip(original, again))


def test_strict_setting_fails_the_seed_sample(sample_ndjson: Path, tmp_path: Path) -> None:
    assert not materialize(sample_ndjson, tmp_path, strict=True).success


def test_unusable_payload_fails_the_run_with_the_place(tmp_path: Path) -> None:
    payload = tmp_path / "broken.ndjson"
    payload.write_text('{"timestamp": "2025-10-04T06:00:00Z", "type": "success", "key": {"id": 42}}\n')
    result = materialize(payload, tmp_path / "reports")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"{payload}: line 1: field 'key' must be a string" in failure.step_failure_data.error.message
    report = orjson.loads((tmp_path / "reports" / "trace" / "kvonce-validation.json").read_bytes())
    assert report["valid"] is False and report["inputError"]["where"] == "line 1"
    assert payload.read_text().startswith('{"timestamp"'), "input untouched"


def _job_execute(tmp_path: Path, payload: Path) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "KVONCE_OTLP_PAYLOAD": str(payload),
           "KVONCE_REPORTS_DIR": str(tmp_path / "reports")}
    return subprocess.run([str(VENV_BIN / "dagster"), "job", "execute", "-m", "kvonce_pipeline",
                           "-j", "kvonce_conformance_job"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("valid", [True, False])
def test_dagster_job_execute_exit_code(tmp_path: Path, sample_otlp: Path, valid: bool) -> None:
    payload = sample_otlp
    if not valid:
        payload = tmp_path / "bad.json"
        payload.write_bytes(sample_otlp.read_bytes().replace(b'"retry"', b'"success"', 1))
    done = _job_execute(tmp_path, payload)
    assert done.returncode == (0 if valid else 1), done.stderr[-3000:]
    report = orjson.loads((tmp_path / "reports" / "trace" / "kvonce-validation.json").read_bytes())
    assert report["valid"] is valid


def _unusable(tmp_path: Path, sample_otlp: Path) -> Path:
    payload = tmp_path / "broken.ndjson"
    payload.write_text('{"timestamp": "2025-10-04T06:00:00Z", "type": "success", "key": {"id": 42}}\n')
    return payload


def _truncated(tmp_path: Path, sample_otlp: Path) -> Path:
    """A JSON document cut short: collected byte for byte, it fails in the pass over the copy."""
    payload = tmp_path / "cut.json"
    payload.write_text('{"resourceSpans":\n')
    return payload


def _violating(tmp_path: Path, sample_otlp: Path) -> Path:
    payload = tmp_path / "bad.json"
    payload.write_bytes(sample_otlp.read_bytes().replace(b'"retry"', b'"success"', 1))
    return payload


@pytest.mark.parametrize(("make_payload", "code", "message"), [
    (lambda tmp_path, sample: sample, 0, None),
    (_violating, 1, r"^[2-9] violations in {payload}:\n\n\| severity \| rule \| key \| event \| where \| trace / span \| "
                    r"message \|\n\|---\|---\|---\|---\|---\|---\|---\|\n\| error \|(.|\n)*"
                    r"\| multiple-success \| beta \| 4 \| [^|]* \| [0-9a-f]{{32}} / [0-9a-f]{{16}} \|"),
    (_unusable, 2, r"^unusable input: {payload}: line 1: field 'key' must be a string\b"),
    (_truncated, 2, r"^unusable input: {payload}: line 2: not valid JSON .*\(read from its collected copy "),
])
def test_the_run_verdict_reads_the_runs_record_into_the_clis_exit_codes(tmp_path: Path, sample_otlp: Path,
                                                                         make_payload, code: int,
                                                                         message: str | None) -> None:
    """What ``make run`` ends with: the verdict of the run just recorded, not a stack trace, and the
    exit code of ``kvonce conformance`` (``dagster job execute`` says 1 for both kinds of failure)."""
    payload = make_payload(tmp_path, sample_otlp)
    executed = _job_execute(tmp_path, payload)
    assert executed.returncode == (1 if code else 0), executed.stderr[-3000:]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    done = subprocess.run([str(VENV_BIN / "python"), "-m", "kvonce_pipeline.orchestration.run_verdict",
                           "--job", "kvonce_conformance_job", "--dagster-exit", str(executed.returncode)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    if message is None:
        assert done.stdout == ""
    else:
        assert re.search(message.format(payload=re.escape(str(payload))), done.stdout), done.stdout
        assert "Traceback" not in done.stdout + done.stderr and "Stack Trace" not in done.stdout + done.stderr
