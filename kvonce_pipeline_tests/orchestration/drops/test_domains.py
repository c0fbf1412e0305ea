"""The drop folder per domain (kvonce_pipeline.orchestration.drops.domains and the sensor's routing):
the real sensor function ticks over real files on a real ephemeral instance, and each run it asks for
is executed as the daemon would launch it (its job, partition, tags and asset selection)."""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from pathlib import Path

import dagster as dg
import orjson
import pytest

from kvonce_pipeline.engine import drops, registry
from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.domains.kvonce import envelope
from kvonce_pipeline.engine.domain_decode import read_domain_events
from kvonce_pipeline.engine.limits import Limits
from kvonce_pipeline.engine.domain import Domain, DomainEvent
from kvonce_pipeline.engine.domain_render import requests as render_requests
from kvonce_pipeline.engine.payload import PayloadRequest, check_payload
from kvonce_pipeline.orchestration.drops import domains as drop_domains
from kvonce_pipeline.orchestration.drops.assets import (PARTITIONS_NAME, PRIVATE_COPY, TAG_ARRIVED, TAG_BYTES,
                                                        TAG_NAME, TAG_SCOPE, TAG_SHA)
from kvonce_pipeline.orchestration.drops.definitions import defs as drop_defs
from kvonce_pipeline.orchestration.drops.sensors import kvonce_drop_sensor
from kvonce_pipeline.orchestration.resources import KvonceSettings

from ...conftest import SAMPLES

HOUR_AGO_NS = time.time_ns() - 3600 * 1_000_000_000
INVENTORY_OTLP = Path(drop_domains.__file__).resolve().parents[2] / "domains" / "inventory" / "samples" / \
    "inventory-otlp.json"
INVENTORY = {"drops/inventory_events", "drops/inventory_projection", "drops/inventory_validation"}
SUMMARY = "drops/trace_summary"
KVONCE = {"drops/collected_kvonce_otlp", "drops/kvonce_events", "drops/kvonce_projection", "drops/kvonce_validation"}
INVENTORY_CHECKS = {("drops/inventory_events", "events_schema"), ("drops/inventory_projection", "projection_schema"),
                    ("drops/inventory_validation", "validation_schema"),
                    ("drops/inventory_validation", "inventory_conformance")}


def put(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    os.utime(path, ns=(HOUR_AGO_NS, HOUR_AGO_NS))  # settled
    return path


def mixed(*, bad_kvonce: bool = False, bad_inventory: bool = False) -> bytes:
    """KvOnce's OTLP sample and Inventory's in one document (services emit both)."""
    kvonce = (SAMPLES / "kvonce-otlp.json").read_bytes()
    if bad_kvonce:  # a retry turned into a second success: a KvOnce violation
        kvonce = kvonce.replace(b'"retry"', b'"success"', 1)
    document = orjson.loads(kvonce)
    inventory = orjson.loads(_inventory_violations() if bad_inventory else INVENTORY_OTLP.read_bytes())
    document["resourceSpans"] += inventory["resourceSpans"]
    return orjson.dumps(document)


def _inventory_violations() -> bytes:
    """Inventory's violations sample (NDJSON) as spans, through the domain's own OTLP mapping."""
    inventory = registry.get("inventory")
    read = read_domain_events(INVENTORY_OTLP.parent / "violations.ndjson", [inventory], format="ndjson")
    return orjson.dumps({"resourceSpans": [r for q in render_requests(inventory, read.events["inventory"])
                                           for r in q["resourceSpans"]]})


def tick(instance: dg.DagsterInstance, settings: KvonceSettings, cursor: str | None = None) -> dg.SensorResult:
    result = kvonce_drop_sensor(dg.build_sensor_context(instance=instance, cursor=cursor,
                                                         resources={"kvonce": settings}))
    assert isinstance(result, dg.SensorResult)
    for request in result.dynamic_partitions_requests or []:  # what the daemon does with them
        instance.add_dynamic_partitions(PARTITIONS_NAME, list(request.partition_keys))
    return result


def drop_runs(result: dg.SensorResult) -> list[dg.RunRequest]:
    return [r for r in result.run_requests or [] if r.partition_key is not None]


def launch(instance: dg.DagsterInstance, settings: KvonceSettings,
           request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """The request as the daemon launches it: its job, limited to its asset selection, with its tags."""
    job = dg.Definitions.merge(drop_defs, dg.Definitions(resources={"kvonce": settings})).resolve_job_def(
        request.job_name)
    return job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=dict(request.tags),
                                  asset_selection=request.asset_selection, raise_on_error=False)


def materialized(run: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()}


def checks(run: dg.ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {(c.asset_key.to_user_string(), c.check_name): c.passed for c in run.get_asset_check_evaluations()}


def key_for(name: str, data: bytes) -> str:
    return drops.partition_key_for(name, hashlib.sha256(data).hexdigest())


# --- routing -----------------------------------------------------------------------------------


def test_an_inventory_drop_asks_for_its_group_only_with_the_usual_partition_run_key_and_tags(
        instance, settings, drop_dir) -> None:
    data = INVENTORY_OTLP.read_bytes()
    put(drop_dir, "inv.json", data)
    result = tick(instance, settings)
    [request] = drop_runs(result)
    key = key_for("inv.json", data)
    assert (request.job_name, request.partition_key, request.run_key) == ("trace_drop_job", key, key)
    assert {k.to_user_string() for k in request.asset_selection} == {"drops/collected_otlp", *INVENTORY, SUMMARY}
    assert {(k.asset_key.to_user_string(), k.name) for k in request.asset_check_keys} == INVENTORY_CHECKS
    assert request.tags == {TAG_NAME: "inv.json", TAG_SHA: hashlib.sha256(data).hexdigest(), TAG_BYTES: str(len(data)),
                            TAG_ARRIVED: request.tags[TAG_ARRIVED], TAG_SCOPE: "default",
                            drop_domains.TAG_DOMAINS: "inventory"}
    assert instance.get_dynamic_partitions(PARTITIONS_NAME) == [key]
    assert drop_runs(tick(instance, settings, result.cursor)) == []  # once, as every drop


def test_a_kvonce_drop_gets_exactly_the_run_it_always_got(instance, settings, drop_dir, sample_otlp) -> None:
    data = sample_otlp.read_bytes()
    put(drop_dir, "kv.json", data)
    [request] = drop_runs(tick(instance, settings))
    assert request.job_name == "kvonce_drop_job" and request.asset_selection is None
    assert request.asset_check_keys is None and request.run_key == request.partition_key == key_for("kv.json", data)
    assert set(request.tags) == {TAG_NAME, TAG_SHA, TAG_BYTES, TAG_ARRIVED, TAG_SCOPE}  # no new tag


def test_a_mixed_drop_asks_for_both_domains(instance, settings, drop_dir) -> None:
    put(drop_dir, "both.json", mixed())
    [request] = drop_runs(tick(instance, settings))
    assert request.job_name == "trace_drop_job" and request.tags[drop_domains.TAG_DOMAINS] == "kvonce,inventory"
    assert {k.to_user_string() for k in request.asset_selection} == {"drops/collected_otlp", *INVENTORY, *KVONCE,
                                                                     SUMMARY}
    assert {k.name for k in request.asset_check_keys} >= {"kvonce_conformance", "inventory_conformance",
                                                          "collected_schema"}


def test_a_payload_that_cannot_be_scanned_is_routed_to_kvonce_whose_run_says_what_is_wrong(
        instance, settings, drop_dir, reports_dir) -> None:
    data = gzip.compress(INVENTORY_OTLP.read_bytes(), mtime=0)[:-12]  # a truncated gzip stream
    put(drop_dir, "cut.json.gz", data)
    [request] = drop_runs(tick(instance, settings))
    assert request.job_name == "kvonce_drop_job"
    run = launch(instance, settings, request)
    assert not run.success
    assert envelope.read_envelope(reports_dir / "trace" / key_for("cut.json.gz", data))["status"] == "unusable"


# --- the runs ----------------------------------------------------------------------------------


def test_an_inventory_drop_materializes_its_group_per_partition_and_no_kvonce(instance, settings, drop_dir,
                                                                               reports_dir, tmp_path) -> None:
    data = INVENTORY_OTLP.read_bytes()
    dropped = put(drop_dir, "inv.json", data)
    first = tick(instance, settings)
    [request] = drop_runs(first)
    # KvOnce's drop step's private copy, as if that step were running at the same time: not ours to touch
    theirs = reports_dir / "trace" / request.partition_key / PRIVATE_COPY
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"KvOnce's copy")
    run = launch(instance, settings, request)
    assert run.success
    assert theirs.read_bytes() == b"KvOnce's copy"
    theirs.unlink()
    assert materialized(run) == {"drops/collected_otlp", *INVENTORY, SUMMARY}
    assert checks(run) == {check: True for check in INVENTORY_CHECKS}
    key = request.partition_key
    assert all(e.materialization.partition == key for e in run.get_asset_materialization_events())
    assert {c.partition for c in run.get_asset_check_evaluations()} == {key}
    folder = reports_dir / "trace" / key
    collected = next(e for e in run.get_asset_materialization_events()
                     if e.asset_key == drop_domains.DROP_COLLECTED_KEY).materialization.metadata
    assert collected["source_sha256"].value == hashlib.sha256(data).hexdigest()
    assert collected["source_path"].value == str(dropped) and collected["domains"].value == ["inventory"]
    assert (folder / "collected-otlp.json").read_bytes() == data, "a spec OTLP/JSON document is a byte copy"
    assert not (folder / drop_domains.PRIVATE_COPY).exists()
    # nothing of KvOnce's: no collected copy, no envelope, no key facts, no report
    assert sorted(p.name for p in folder.iterdir()) == ["collected-otlp.json", "inventory", "trace-summary.json",
                                                        "trace-summary.md"]
    # the same bytes as `kvonce conformance` writes for the dropped file
    cli = tmp_path / "cli"
    assert check_payload(PayloadRequest(dropped, cli)).exit_code == 0
    produced = sorted(p.name for p in (folder / "inventory").iterdir())
    assert produced == sorted(p.name for p in (cli / "inventory").iterdir()) and len(produced) == 5
    for name in [*(f"inventory/{name}" for name in produced), "trace-summary.json", "trace-summary.md"]:
        assert (folder / name).read_bytes() == (cli / name).read_bytes(), name
    # no KvOnce result, so no store run is asked for
    assert [r.job_name for r in tick(instance, settings, first.cursor).run_requests or []] == []


def test_a_mixed_drop_checks_both_and_a_kvonce_violation_hides_no_inventory_verdict(instance, settings, drop_dir,
                                                                                    reports_dir) -> None:
    data = mixed(bad_kvonce=True)
    put(drop_dir, "both.json", data)
    first = tick(instance, settings)
    [request] = drop_runs(first)
    run = launch(instance, settings, request)
    assert not run.success  # KvOnce's violation
    assert materialized(run) == {"drops/collected_otlp", *INVENTORY, *(KVONCE - {"drops/kvonce_validation"}),
                                 SUMMARY}
    failed = sorted(check for check, passed in checks(run).items() if not passed)
    assert failed == [("drops/kvonce_validation", "kvonce_conformance")]
    assert all(checks(run)[check] for check in INVENTORY_CHECKS)
    folder = reports_dir / "trace" / request.partition_key
    report = orjson.loads((folder / artifacts.VALIDATION).read_bytes())
    assert report["valid"] is False and report["summary"]["byRule"]["multiple-success"] == 1
    assert envelope.read_envelope(folder)["valid"] is False  # KvOnce's envelope, as for every KvOnce drop
    assert orjson.loads((folder / "inventory" / "inventory-validation.json").read_bytes())["valid"] is True
    summary = orjson.loads((folder / "trace-summary.json").read_bytes())  # written last, over both reports
    assert [(d["key"], d["status"]) for d in summary["domains"]] == [("kvonce", "invalid"), ("inventory", "valid")]
    assert summary["aggregate"]["exitCode"] == 1
    # a KvOnce result was judged: the store is refolded on the next tick, as after any KvOnce drop
    assert [r.job_name for r in tick(instance, settings, first.cursor).run_requests or []] == ["kvonce_store_job"]


def test_an_inventory_violation_in_a_drop_fails_its_partitioned_verdict(instance, settings, drop_dir,
                                                                         reports_dir) -> None:
    data = mixed(bad_inventory=True)
    put(drop_dir, "both.json", data)
    [request] = drop_runs(tick(instance, settings))
    run = launch(instance, settings, request)
    assert not run.success
    failed = sorted(check for check, passed in checks(run).items() if not passed)
    assert failed == [("drops/inventory_validation", "inventory_conformance")]
    assert "drops/kvonce_validation" in materialized(run) and "drops/inventory_validation" not in materialized(run)
    report = orjson.loads((reports_dir / "trace" / request.partition_key / "inventory" /
                           "inventory-validation.json").read_bytes())
    assert report["valid"] is False and report["summary"]["errors"] >= 1
    evaluation = next(c for c in run.get_asset_check_evaluations() if c.check_name == "inventory_conformance")
    assert evaluation.partition == request.partition_key


# --- any generic domain ------------------------------------------------------------------------


def test_a_template_made_domain_gets_a_drop_group_without_any_change(toy: Domain, instance, settings, drop_dir,
                                                                      reports_dir) -> None:
    groups = drop_domains.build_drop_groups({"toy": toy})
    assert {k.to_user_string() for k in groups["toy"].keys} == {"drops/toy_events", "drops/toy_projection",
                                                                 "drops/toy_validation"}
    assert {groups["toy"].group_names_by_key[k] for k in groups["toy"].keys} == {"toy_drops"}
    events = [DomainEvent(1_767_225_600_000_000_000, "open", "t1", {}, "c" * 32, "d" * 16, "toy-svc")]
    data = orjson.dumps({"resourceSpans": [r for q in render_requests(toy, events) for r in q["resourceSpans"]]})
    put(drop_dir, "toy.json", data)
    key = key_for("toy.json", data)
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    selection = drop_domains.selection_for(["toy"], groups)
    assert selection is not None and drop_domains.selection_for(["kvonce"], groups) is None
    run = dg.materialize([drop_domains.drop_collected_otlp, *groups.values(), drop_domains.drop_trace_summary],
                         instance=instance, partition_key=key,
                         resources={"kvonce": settings}, selection=selection.assets, raise_on_error=False)
    assert run.success
    assert {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()} == {
        "drops/collected_otlp", "drops/toy_events", "drops/toy_projection", "drops/toy_validation", SUMMARY}
    assert (reports_dir / "trace" / key / "toy" / "toy-validation.json").is_file()


# --- NDJSON event logs of another domain -------------------------------------------------------

INVENTORY_NDJSON = INVENTORY_OTLP.parent / "violations.ndjson"


@pytest.mark.parametrize("label", ["stock.inventory.ndjson", "svc/stock.inventory.ndjson.gz"])
def test_an_ndjson_log_named_for_inventory_is_checked_as_inventory(instance, settings, drop_dir, reports_dir,
                                                                    tmp_path, label) -> None:
    raw = INVENTORY_NDJSON.read_bytes()
    data = gzip.compress(raw, mtime=0) if label.endswith(".gz") else raw
    scope, _, name = label.rpartition("/")
    (drop_dir / scope).mkdir(exist_ok=True)
    dropped = put(drop_dir / scope, name, data)
    [request] = drop_runs(tick(instance, settings))
    key = drops.partition_key_for(name, hashlib.sha256(data).hexdigest(), scope or drops.DEFAULT_SCOPE)
    assert (request.job_name, request.partition_key) == ("trace_drop_job", key)
    assert request.tags[drop_domains.TAG_DOMAINS] == "inventory" and request.tags[TAG_SCOPE] == (scope or "default")
    assert {k.to_user_string() for k in request.asset_selection} == {"drops/collected_otlp", *INVENTORY, SUMMARY}
    run = launch(instance, settings, request)
    assert not run.success, "the log violates Inventory"
    assert [c for c, passed in checks(run).items() if not passed] == [("drops/inventory_validation",
                                                                       "inventory_conformance")]
    collected = next(e for e in run.get_asset_materialization_events()
                     if e.asset_key == drop_domains.DROP_COLLECTED_KEY).materialization.metadata
    assert collected["source_format"].value == "ndjson" and collected["domains"].value == ["inventory"]
    folder = reports_dir / "trace" / key
    assert not (folder / artifacts.VALIDATION).exists(), "nothing of KvOnce's"
    # the same report as `kvonce conformance --domain inventory` on the dropped file, findings on its lines
    cli = tmp_path / "cli"
    assert check_payload(PayloadRequest(dropped, cli, domains=("inventory",))).exit_code == 1
    for name in ["inventory-validation.json", "inventory-events.ndjson", "inventory-summary.md"]:
        assert (folder / "inventory" / name).read_bytes() == (cli / "inventory" / name).read_bytes(), name
    report = orjson.loads((folder / "inventory" / "inventory-validation.json").read_bytes())
    assert report["valid"] is False and any(i.get("origin", "").startswith("line ") for i in report["issues"])


def test_ndjson_logs_not_named_for_another_domain_are_kvonces_exactly_as_before(instance, settings, drop_dir,
                                                                                reports_dir) -> None:
    kvonce_log = (SAMPLES / "kvonce-sample.ndjson").read_bytes()
    put(drop_dir, "kv.ndjson", kvonce_log)
    put(drop_dir, "kv2.kvonce.ndjson", kvonce_log + b"\n")  # named for KvOnce: the same as unnamed
    put(drop_dir, "stock.ndjson", INVENTORY_NDJSON.read_bytes())  # named for nobody: read as KvOnce's
    put(drop_dir, "typo.inventroy.ndjson", INVENTORY_NDJSON.read_bytes() + b"\n")  # no such domain
    # an OTLP document is routed by what it carries, whatever its name says
    put(drop_dir, "otlp.inventory.json", (SAMPLES / "kvonce-otlp.json").read_bytes())
    requests = {r.tags[TAG_NAME]: r for r in drop_runs(tick(instance, settings))}
    assert {name: r.job_name for name, r in requests.items()} == {
        "kv.ndjson": "kvonce_drop_job", "kv2.kvonce.ndjson": "kvonce_drop_job", "stock.ndjson": "kvonce_drop_job",
        "typo.inventroy.ndjson": "kvonce_drop_job", "otlp.inventory.json": "kvonce_drop_job"}
    assert all(r.asset_selection is None and drop_domains.TAG_DOMAINS not in r.tags for r in requests.values())
    run = launch(instance, settings, requests["kv.ndjson"])
    assert run.success and materialized(run) == KVONCE
    report = orjson.loads((reports_dir / "trace" / requests["kv.ndjson"].partition_key /
                           artifacts.VALIDATION).read_bytes())
    assert report["valid"] is True and report["summary"]["input"]["format"] == "ndjson"


def test_only_an_ndjson_log_is_routed_by_its_name(tmp_path) -> None:
    log = put(tmp_path, "a.inventory.ndjson", INVENTORY_NDJSON.read_bytes())
    assert drop_domains.ndjson_drop_domain(log, log.name, Limits()) == "inventory"
    otlp = put(tmp_path, "b.inventory.json", INVENTORY_OTLP.read_bytes())
    assert drop_domains.ndjson_drop_domain(otlp, otlp.name, Limits()) is None, "OTLP names its own"
    assert drop_domains.ndjson_drop_domain(log, "a.kvonce.ndjson", Limits()) is None
