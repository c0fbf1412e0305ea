"""The CI jobs with a payload URL and a reports URL (``KVONCE_OTLP_PAYLOAD=s3://...``,
``KVONCE_REPORTS_DIR=s3://...``), on a real ephemeral Dagster instance against a real S3-compatible
server (moto's, started on loopback for this module and stopped after it), compared with the same job
on local paths."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from kvonce_pipeline.devtools.generate import GenerateOptions, generate
from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.engine import storage
from kvonce_pipeline.engine.payload import TRACE_SUMMARY, TRACE_SUMMARY_MD
from kvonce_pipeline.orchestration.conformance.definitions import conformance_assets, kvonce_conformance_job
from kvonce_pipeline.orchestration.domains.assets import COLLECTED_FILE, build_domain_definitions
from kvonce_pipeline.orchestration.drops.sensors import kvonce_drop_sensor
from kvonce_pipeline.orchestration.resources import KvonceSettings
from kvonce_pipeline.orchestration.run_verdict import run_verdict

from ..s3_server import BUCKET  # the s3 fixture (a moto server per module): ../s3_server.py

INVENTORY_SAMPLE = Path(__file__).resolve().parents[2] / "kvonce_pipeline/domains/inventory/samples/inventory-otlp.json"
#: The KvOnce step's files, as the local job leaves them in <reports>/trace/.
KVONCE_FILES = (artifacts.COLLECTED, *artifacts.PUBLISH_ORDER)

def _job(job: str, payload: str, reports: str) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    settings = KvonceSettings(payload=payload, reports_dir=reports)
    merged = dg.Definitions.merge(
        dg.Definitions(assets=conformance_assets, jobs=[kvonce_conformance_job], resources={"kvonce": settings}),
        build_domain_definitions())
    instance = dg.DagsterInstance.ephemeral()
    result = merged.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False)
    return result, instance


def _materialized(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}


def _with_source(document: bytes, source: str) -> dict[str, Any]:
    report = json.loads(document)
    report["summary"]["input"]["source"] = source
    return report


@pytest.mark.slow
def test_kvonce_job_reads_a_payload_url_and_publishes_every_verdict_to_a_reports_url(s3: Any,
                                                                                     tmp_path: Path) -> None:
    valid_url, violating_url = f"s3://{BUCKET}/job-in/sample.json", f"s3://{BUCKET}/job-in/violating.ndjson"
    violating = tmp_path / "violating.ndjson"
    generate(violating, GenerateOptions(events=2000, keys=300, format="ndjson", violations=0.05, seed=11))
    s3.put_file(str(artifacts.BUNDLED_SAMPLE), valid_url.removeprefix("s3://"))
    s3.put_file(str(violating), violating_url.removeprefix("s3://"))
    etags = {url: s3.info(url)["ETag"] for url in (valid_url, violating_url)}
    reports = f"s3://{BUCKET}/job-reports/ci"
    trace = f"{reports}/trace"

    # a valid payload: success, each materialization names its published object, with its sha256
    result, _ = _job("kvonce_conformance_job", valid_url, reports)
    assert result.success
    s3.invalidate_cache()
    for name, meta in _materialized(result).items():
        url = meta["path"].value
        assert url.startswith(f"{trace}/"), name
        assert hashlib.sha256(s3.cat_file(url)).hexdigest() == meta["sha256"].value, name
        assert len(s3.cat_file(url)) == meta["bytes"].value, name
    collected = _materialized(result)["collected_kvonce_otlp"]
    assert collected["source_path"].value == valid_url
    assert s3.cat_file(f"{trace}/{artifacts.COLLECTED}") == artifacts.BUNDLED_SAMPLE.read_bytes()

    # a violating payload into the same prefix: published (replacing the valid run's), then the run fails
    local, _ = _job("kvonce_conformance_job", str(violating), str(tmp_path / "local"))
    remote, instance = _job("kvonce_conformance_job", violating_url, reports)
    assert not local.success and not remote.success
    code, message = run_verdict(instance, "kvonce_conformance_job")
    assert code == 1 and f"violations in {violating_url}:" in message.splitlines()[0], message
    s3.invalidate_cache()
    local_trace = tmp_path / "local" / "trace"
    for name in (artifacts.COLLECTED, artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE):
        assert s3.cat_file(f"{trace}/{name}") == (local_trace / name).read_bytes(), name
    report = _with_source(s3.cat_file(f"{trace}/{artifacts.VALIDATION}"), violating_url)
    assert json.loads(s3.cat_file(f"{trace}/{artifacts.VALIDATION}"))["summary"]["input"]["source"] == violating_url
    assert report == _with_source((local_trace / artifacts.VALIDATION).read_bytes(), violating_url)
    assert report["valid"] is False
    summary = s3.cat_file(f"{trace}/{artifacts.SUMMARY}").decode()
    assert summary == (local_trace / artifacts.SUMMARY).read_text().replace(str(violating), violating_url)
    events = _materialized(remote)["kvonce_events"]
    assert events["path"].value == f"{trace}/{artifacts.EVENTS}"
    assert events["sha256"].value == hashlib.sha256((local_trace / artifacts.EVENTS).read_bytes()).hexdigest()
    for url, etag in etags.items():
        assert s3.info(url)["ETag"] == etag, "the input object is never touched"


@pytest.mark.slow
def test_a_missing_payload_object_is_an_unusable_input_whose_report_is_published(s3: Any) -> None:
    reports = f"s3://{BUCKET}/job-reports/missing"
    s3.put_file(str(artifacts.BUNDLED_SAMPLE), f"{BUCKET}/job-in/there.json")
    assert _job("kvonce_conformance_job", f"s3://{BUCKET}/job-in/there.json", reports)[0].success
    missing = f"s3://{BUCKET}/job-in/nothing-here.json"
    result, instance = _job("kvonce_conformance_job", missing, reports)
    assert not result.success
    code, message = run_verdict(instance, "kvonce_conformance_job")
    assert code == 2 and f"{missing}: no such object" in message, message
    s3.invalidate_cache()
    report = json.loads(s3.cat_file(f"{BUCKET}/job-reports/missing/trace/{artifacts.VALIDATION}"))
    assert report["valid"] is False and report["inputError"]["source"] == missing
    # the earlier run's files are not left beside a report that does not describe them
    for name in (artifacts.COLLECTED, artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE):
        assert not s3.exists(f"{BUCKET}/job-reports/missing/trace/{name}"), name


@pytest.mark.slow
def test_trace_job_publishes_a_generic_domain_and_the_trace_summary(s3: Any, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/job-in/inventory-otlp.json"
    s3.put_file(str(INVENTORY_SAMPLE), url.removeprefix("s3://"))
    etag = s3.info(url)["ETag"]
    reports = f"s3://{BUCKET}/job-reports/inventory"
    local, _ = _job("trace_conformance_job", str(INVENTORY_SAMPLE), str(tmp_path / "local"))
    remote, instance = _job("trace_conformance_job", url, reports)
    assert local.success == remote.success
    assert run_verdict(instance, "trace_conformance_job")[0] == (0 if local.success else 1)
    s3.invalidate_cache()
    local_trace = tmp_path / "local" / "trace"
    trace = f"{reports}/trace"
    assert s3.cat_file(f"{trace}/{COLLECTED_FILE}") == (local_trace / COLLECTED_FILE).read_bytes()
    inventory = sorted(p.relative_to(local_trace).as_posix() for p in (local_trace / "inventory").rglob("*")
                       if p.is_file())
    assert inventory, "the local run wrote Inventory's artifacts"
    for name in inventory:
        published = s3.cat_file(f"{trace}/{name}")
        expected = (local_trace / name).read_bytes()
        if name.endswith("-validation.json"):
            assert _with_source(published, url) == _with_source(expected, url), name
        else:
            assert published == expected.replace(str(INVENTORY_SAMPLE).encode(), url.encode()), name
    summary = json.loads(s3.cat_file(f"{trace}/{TRACE_SUMMARY}"))
    assert summary["aggregate"] == json.loads((local_trace / TRACE_SUMMARY).read_bytes())["aggregate"]
    assert url in s3.cat_file(f"{trace}/{TRACE_SUMMARY_MD}").decode()
    # KvOnce stepped aside: no KvOnce file in either place
    assert not any(s3.exists(f"{trace}/{name}") for name in KVONCE_FILES)
    assert not any((local_trace / name).exists() for name in KVONCE_FILES)
    validation = _materialized(remote).get("inventory_validation") or {}
    events = _materialized(remote)["inventory_events"]
    assert events["path"].value == f"{trace}/inventory/inventory-events.ndjson"
    if validation:
        assert validation["path"].value == f"{trace}/inventory/inventory-validation.json"
    assert s3.info(url)["ETag"] == etag

    # a step that runs apart from the step that wrote its input (another process or machine, as under the
    # multiprocess executor): its run's staging is empty, so it reads what was published
    published = {name: s3.cat_file(f"{trace}/{name}") for name in (*inventory, TRACE_SUMMARY)}
    apart = dg.materialize([*conformance_assets, *build_domain_definitions().assets],
                           selection=dg.AssetSelection.groups("inventory") | dg.AssetSelection.assets("trace_summary"),
                           instance=instance, resources={"kvonce": KvonceSettings(payload=url, reports_dir=reports)},
                           raise_on_error=False)
    assert apart.success == local.success
    s3.invalidate_cache()
    assert {name: s3.cat_file(f"{trace}/{name}") for name in published} == published


def test_the_drop_sensor_takes_a_reports_url(s3: Any, tmp_path: Path) -> None:
    """It reads nothing from the reports (the runs it launches read the published key facts): a tick over a
    new payload registers it and asks for its run, as with a local reports folder."""
    drop_dir = tmp_path / "drops"
    drop_dir.mkdir()
    (drop_dir / "a.ndjson").write_bytes(b'{"timestamp":"2025-10-04T06:00:00Z","type":"success","key":"k","value":1}\n')
    os.utime(drop_dir / "a.ndjson", ns=(0, 0))  # settled long ago
    settings = KvonceSettings(reports_dir=f"s3://{BUCKET}/sensor-reports", drop_dir=str(drop_dir))
    result = kvonce_drop_sensor(dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(),
                                                        resources={"kvonce": settings}))
    assert isinstance(result, dg.SensorResult)
    assert [r.job_name for r in result.run_requests or []] == ["kvonce_drop_job"]


def test_a_conditional_put_never_overwrites_what_another_writer_put(s3: Any) -> None:
    """``If-None-Match: *`` and ``If-Match`` on PutObject, as moto (and S3 since 2024) honour them."""
    url = f"s3://{BUCKET}/conditional/store.json"
    assert storage.supports_conditional_put(url) and storage.version_of(url) is None
    storage.put_bytes(url, b"first", expect=None)
    with pytest.raises(storage.PublishConflict, match="was created by another writer"):
        storage.put_bytes(url, b"late creator", expect=None)
    first = storage.version_of(url)
    assert first
    storage.put_bytes(url, b"second", expect=first)
    with pytest.raises(storage.PublishConflict, match="was replaced by another writer"):
        storage.put_bytes(url, b"stale writer", expect=first)
    assert storage.read_bytes(url) == b"second"
    storage.put_bytes(url, b"unconditional")  # no expectation: a plain PUT
    assert storage.read_bytes(url) == b"unconditional" and storage.read_bytes(url + ".none") is None
    assert storage.read_many([url, url + ".none"]) == {url: b"unconditional", url + ".none": None}
    with storage.open_read(url, block_size=4) as handle:
        assert handle.readline() == b"unconditional"
    assert storage.list_files(f"s3://{BUCKET}/conditional") == ["store.json"]


def test_local_and_file_url_reports_are_the_folder_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert KvonceSettings(reports_dir=str(tmp_path)).trace_dir() == tmp_path / "trace"
    assert KvonceSettings(reports_dir=f"file://{tmp_path}").trace_dir() == tmp_path / "trace"
    settings = KvonceSettings(reports_dir=str(tmp_path))
    assert settings.published_name(tmp_path / "trace" / "x.json") == str(tmp_path / "trace" / "x.json")
    assert settings.publish(tmp_path, ["x.json"]) is None
    # unset in the resource: the environment's URL, not a path that folded its "//"
    monkeypatch.setenv("KVONCE_REPORTS_DIR", "s3://bucket/prefix/")
    assert KvonceSettings().reports_url() == "s3://bucket/prefix"


def test_a_reports_url_without_its_backend_fails_the_job_clearly(tmp_path: Path) -> None:
    """gcsfs is not installed here: the step fails naming the URL and the missing backend (exit 2), and
    nothing is judged into a folder that would never be published."""
    result, instance = _job("kvonce_conformance_job", str(artifacts.BUNDLED_SAMPLE), "gs://bucket/reports")
    assert not result.success
    code, message = run_verdict(instance, "kvonce_conformance_job")
    assert code == 2 and "gs://bucket/reports: no storage backend for gs:// is installed" in message, message
