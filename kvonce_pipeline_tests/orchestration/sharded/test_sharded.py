"""``kvonce_sharded_job`` (kvonce_pipeline/orchestration/sharded/job.py) on a real ephemeral instance,
and as ``dagster job execute`` with its shards on a local dask cluster: the reports are the one
pass's, byte for byte, in the main job's folder, and a violation fails the run with the verdict."""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.domains.kvonce.own_pass.conformance import run_conformance
from kvonce_pipeline.definitions import defs
from kvonce_pipeline.devtools.generate import GenerateOptions, generate
from kvonce_pipeline.orchestration.resources import KvonceSettings
from kvonce_pipeline.orchestration.run_verdict import run_verdict
from kvonce_pipeline.domains.kvonce.own_pass.shards import SCHEDULER_ENV
from kvonce_pipeline.orchestration.sharded.job import PUBLISHED, kvonce_sharded_job

from ...conftest import VENV_BIN


def _execute(instance: dg.DagsterInstance, payload: Path | str, reports: Path | str, **config: object) -> dg.ExecuteInProcessResult:
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



# --- URLs: a payload object and a reports prefix on a real S3-compatible server (moto on loopback,
# started for this module: the ``s3`` fixture of ../conftest.py) ---

from ...s3_server import BUCKET  # noqa: E402
from ..test_resources import _job as _one_pass_job  # noqa: E402


def _sharded(payload: str, reports: str, **config: object) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    instance = dg.DagsterInstance.ephemeral()
    return _execute(instance, payload, reports, **config), instance


def _failure(result: dg.ExecuteInProcessResult) -> str:
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    return str(failure.step_failure_data.user_failure_data.description)


@pytest.mark.slow
def test_payload_and_reports_urls_publish_the_local_runs_bytes_and_the_run_fails_after(s3: Any,
                                                                                      tmp_path: Path) -> None:
    """A violating payload object, reports to a prefix: the published objects are byte for byte the
    sharded run's with local reports and kvonce_conformance_job's with the same URLs (all name the
    object), published before the run fails with the verdict; the input object is never written."""
    # one OTLP/JSON document: the one-pass job's collected copy is then a byte copy, so its findings
    # name the same lines (an NDJSON log or JSON Lines it collects into one document, renumbered)
    trace = tmp_path / "violating.json"
    generate(trace, GenerateOptions(events=3_000, keys=500, format="otlp-json", violations=0.04, seed=21))
    url = f"s3://{BUCKET}/sharded-in/violating.json"
    s3.put_file(str(trace), url.removeprefix("s3://"))
    etag = s3.info(url)["ETag"]
    reports = f"s3://{BUCKET}/sharded-reports/ci"

    remote, instance = _sharded(url, reports, shards=2, engine="local")
    local, _ = _sharded(url, str(tmp_path / "local"), shards=3, engine="local")
    one_pass, _ = _one_pass_job("kvonce_conformance_job", url, f"s3://{BUCKET}/sharded-reports/one-pass")
    assert not remote.success and not local.success and not one_pass.success
    code, message = run_verdict(instance, "kvonce_sharded_job")
    assert code == 1, message
    assert message.startswith(f"{_errors(tmp_path / 'local')} violations in {url}:"), message
    assert f"{reports}/trace/{artifacts.SUMMARY}" in message  # the published summary, not the staging copy
    s3.invalidate_cache()
    for name in artifacts.PUBLISH_ORDER:
        published = s3.cat_file(f"{reports}/trace/{name}")
        assert published == (tmp_path / "local" / "trace" / name).read_bytes(), name
        assert published == s3.cat_file(f"{BUCKET}/sharded-reports/one-pass/trace/{name}"), name
    assert json.loads(s3.cat_file(f"{reports}/trace/{artifacts.VALIDATION}"))["summary"]["input"]["source"] == url
    assert not s3.exists(f"{reports}/trace/{artifacts.COLLECTED}")
    assert not [p for p in s3.find(f"{BUCKET}/sharded-reports/ci") if ".kvonce-shards-" in p]
    assert s3.info(url)["ETag"] == etag, "the input object is never touched"
    # the shard files and the payload's copy went with the run's staging folders
    assert not any(".kvonce-shards-" in str(p) for p in (tmp_path / "local" / "trace").iterdir())


@pytest.mark.slow
def test_a_valid_payload_url_succeeds_and_its_metadata_names_the_published_objects(s3: Any,
                                                                                   tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/sharded-in/sample.json"
    s3.put_file(str(artifacts.BUNDLED_SAMPLE), url.removeprefix("s3://"))
    reports = f"s3://{BUCKET}/sharded-reports/valid"
    # an earlier one-pass run's collected copy at the prefix: removed, as the local run removes it
    s3.pipe_file(f"{BUCKET}/sharded-reports/valid/trace/{artifacts.COLLECTED}", b"{}")
    result, _ = _sharded(url, reports, shards=2, engine="local")
    assert result.success, _failure(result)
    output = result.output_for_node("kvonce_sharded_check")
    s3.invalidate_cache()
    for name, entry in output["files"].items():
        assert entry["path"] == f"{reports}/trace/{name}"
        data = s3.cat_file(entry["path"])
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"], name
    [materialized] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = materialized.event_specific_data.metadata  # type: ignore[union-attr]
    assert metadata["reports"].value == f"{reports}/trace"
    assert not s3.exists(f"{BUCKET}/sharded-reports/valid/trace/{artifacts.COLLECTED}")
    assert _same_as_one_pass(artifacts.BUNDLED_SAMPLE, _downloaded(s3, f"{reports}/trace", tmp_path), tmp_path) == 0


def _downloaded(s3: Any, prefix: str, tmp_path: Path) -> Path:
    """The published objects, as local files (their source named as the sample's local path, as a
    local run names it)."""
    folder = tmp_path / "downloaded"
    folder.mkdir()
    local = str(artifacts.BUNDLED_SAMPLE)
    url = f"s3://{BUCKET}/sharded-in/sample.json"
    for name in PUBLISHED:
        data = s3.cat_file(f"{prefix}/{name}")
        if name in (artifacts.VALIDATION, artifacts.SUMMARY):
            data = data.replace(url.encode(), local.encode())
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.slow
def test_a_missing_payload_object_is_unusable_and_its_report_is_published(s3: Any) -> None:
    reports = f"s3://{BUCKET}/sharded-reports/missing"
    missing = f"s3://{BUCKET}/sharded-in/nothing-here.json"
    result, instance = _sharded(missing, reports, shards=2, engine="local")
    assert not result.success
    code, message = run_verdict(instance, "kvonce_sharded_job")
    assert code == 2 and f"{missing}: no such object" in message, message
    s3.invalidate_cache()
    report = json.loads(s3.cat_file(f"{reports.removeprefix('s3://')}/trace/{artifacts.VALIDATION}"))
    assert report["valid"] is False and report["inputError"]["source"] == missing


@pytest.mark.slow
def test_a_broken_payload_object_is_unusable_and_named_by_its_url(s3: Any, tmp_path: Path) -> None:
    """The split reads the run's private copy; its input error names the object, not the copy."""
    url = f"s3://{BUCKET}/sharded-in/broken.json"
    s3.pipe_file(url.removeprefix("s3://"), b'{"resourceSpans": [')
    reports = f"s3://{BUCKET}/sharded-reports/broken"
    result, instance = _sharded(url, reports, shards=2, engine="local")
    code, message = run_verdict(instance, "kvonce_sharded_job")
    assert not result.success and code == 2, message
    assert url in message and str(tmp_path) not in message and "/tmp/" not in message, message
    s3.invalidate_cache()
    report = json.loads(s3.cat_file(f"{reports.removeprefix('s3://')}/trace/{artifacts.VALIDATION}"))
    assert report["valid"] is False and report["inputError"]["source"] == url


@pytest.mark.parametrize("where", ["config", "env"])
def test_a_reports_url_with_shards_on_a_scheduler_is_refused_clearly(where: str, tmp_path: Path, sample_otlp: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The shard files go beside the reports, and a URL's staging folder is on this machine only:
    refused before anything is read or staged (nothing listens at the address)."""
    config: dict[str, object] = {"shards": 2, "engine": "dask"}
    if where == "config":
        config["scheduler"] = "tcp://127.0.0.1:9"
    else:
        monkeypatch.setenv(SCHEDULER_ENV, "tcp://127.0.0.1:9")
    result, instance = _sharded(str(sample_otlp), f"s3://{BUCKET}/never", **config)
    assert not result.success
    failure = _failure(result)
    assert failure.startswith(f"KVONCE_REPORTS_DIR is s3://{BUCKET}/never: when the shards run on a scheduler "
                              "(tcp://127.0.0.1:9)"), failure
    assert run_verdict(instance, "kvonce_sharded_job")[0] == 2
