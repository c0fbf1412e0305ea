"""The drop sensor and the drop assets, with Dagster's own helpers on a real ephemeral instance.

Sensor ticks run through ``build_sensor_context``, which neither registers partitions nor
de-duplicates run keys; where a test needs what the daemon would have done, it applies the tick's
partition additions to the instance itself (:func:`apply`).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest

from kvonce_pipeline.engine import drops
from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.domains.kvonce import envelope
from kvonce_pipeline.domains.kvonce import store
from kvonce_pipeline.engine import collect as collect_module
from kvonce_pipeline.cli import main
from kvonce_pipeline.definitions import defs
from kvonce_pipeline.orchestration.drops.assets import (PARTITIONS_NAME, TAG_ARRIVED, TAG_BYTES, TAG_NAME, TAG_SHA,
                                                        drop_assets, kvonce_store)
from kvonce_pipeline.orchestration.resources import KvonceSettings
from kvonce_pipeline.orchestration.drops.sensors import kvonce_drop_sensor

HOUR_AGO_NS = time.time_ns() - 3600 * 1_000_000_000


def line(second: int, kind: str, key: str, **extra: Any) -> bytes:
    record = {"timestamp": f"2025-10-04T06:00:{second:02d}.000Z", "type": kind, "key": key, **extra}
    return orjson.dumps(record) + b"\n"


VALID = line(0, "success", "alpha", value="v1") + line(1, "retry", "beta") + line(2, "success", "beta", value="v2")


def put(folder: Path, name: str, data: bytes, *, settled: bool = True) -> Path:
    """Write a payload the way a non-atomic writer would; ``settled`` backdates it past the settle time."""
    path = folder / name
    path.write_bytes(data)
    if settled:
        os.utime(path, ns=(HOUR_AGO_NS, HOUR_AGO_NS))
    return path


def tick(instance: dg.DagsterInstance, settings: KvonceSettings, cursor: str | None = None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"kvonce": settings})
    result = kvonce_drop_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def apply(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """What the daemon does with a tick's partition requests."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(PARTITIONS_NAME, list(request.partition_keys))


def drop_requests(result: dg.SensorResult) -> list[dg.RunRequest]:
    return [r for r in result.run_requests or [] if r.job_name == "kvonce_drop_job"]


def key_for(name: str, data: bytes) -> str:
    return drops.partition_key_for(name, hashlib.sha256(data).hexdigest())


def materialize(instance: dg.DagsterInstance, settings: KvonceSettings, request: dg.RunRequest,
                ) -> dg.ExecuteInJobResult:
    return dg.materialize(drop_assets, instance=instance, partition_key=request.partition_key,
                          resources={"kvonce": settings}, tags=dict(request.tags), raise_on_error=False)


def run_tick(instance: dg.DagsterInstance, settings: KvonceSettings, cursor: str | None = None
             ) -> tuple[dg.SensorResult, list[dg.ExecuteInJobResult]]:
    """One tick as the daemon would run it: register its partitions, then launch its drop runs."""
    result = tick(instance, settings, cursor)
    apply(instance, result)
    return result, [materialize(instance, settings, r) for r in drop_requests(result)]


# --- the sensor -------------------------------------------------------------------------------


def test_the_sensor_is_running_by_default_and_ticks_at_least_every_30_s() -> None:
    assert kvonce_drop_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert kvonce_drop_sensor.minimum_interval_seconds <= 30
    assert defs.resolve_sensor_def("kvonce_drop_sensor") is not None


def test_each_new_file_becomes_one_partition_and_one_keyed_run(instance, settings, drop_dir) -> None:
    put(drop_dir, "otlp-1.ndjson", VALID)
    put(drop_dir, "b.ndjson", line(5, "success", "gamma", value="1"))
    result = tick(instance, settings)
    requests = drop_requests(result)
    expected = sorted([key_for("otlp-1.ndjson", VALID), key_for("b.ndjson", line(5, "success", "gamma", value="1"))])
    assert sorted(r.partition_key for r in requests) == expected
    assert all(r.run_key == r.partition_key for r in requests)
    [add] = result.dynamic_partitions_requests
    assert sorted(add.partition_keys) == expected
    tags = next(r.tags for r in requests if r.partition_key == expected[1])
    assert tags[TAG_NAME] == "otlp-1.ndjson" and tags[TAG_SHA] == hashlib.sha256(VALID).hexdigest()
    assert tags[TAG_BYTES] == str(len(VALID)) and tags[TAG_ARRIVED].endswith("Z")


def test_repeated_ticks_and_a_restart_with_the_cursor_request_nothing_new(instance, settings, drop_dir) -> None:
    put(drop_dir, "a.ndjson", VALID)
    first = tick(instance, settings)
    assert len(drop_requests(first)) == 1
    again = tick(instance, settings, first.cursor)
    assert drop_requests(again) == [] and again.dynamic_partitions_requests in (None, [])
    # A daemon restart: the cursor comes back from storage; a fresh evaluation context sees it.
    restarted = tick(instance, settings, again.cursor)
    assert drop_requests(restarted) == []


def test_a_lost_cursor_does_not_relaunch_processed_content(instance, settings, drop_dir) -> None:
    put(drop_dir, "a.ndjson", VALID)
    apply(instance, tick(instance, settings))
    result = tick(instance, settings, cursor=None)
    assert drop_requests(result) == []


def test_half_written_files_are_never_read(instance, settings, drop_dir) -> None:
    put(drop_dir, ".otlp-1.ndjson.abc.tmp", VALID)       # the collector's temporary name
    put(drop_dir, "upload.ndjson.part", VALID[:10])
    fresh = put(drop_dir, "copying.ndjson", VALID[:20], settled=False)  # a plain `cp` in progress
    first = tick(instance, settings)
    assert drop_requests(first) == []
    assert "not settled" in str(first.skip_reason)
    os.rename(drop_dir / ".otlp-1.ndjson.abc.tmp", drop_dir / "otlp-1.ndjson")  # the collector's rename
    fresh.write_bytes(VALID + line(9, "retry", "z"))
    os.utime(fresh, ns=(HOUR_AGO_NS, HOUR_AGO_NS))
    second = tick(instance, settings, first.cursor)
    assert sorted(r.partition_key for r in drop_requests(second)) == sorted(
        [key_for("otlp-1.ndjson", VALID), key_for("copying.ndjson", VALID + line(9, "retry", "z"))])


def test_same_content_is_one_partition_and_a_new_version_is_a_new_one(instance, settings, drop_dir) -> None:
    put(drop_dir, "a.ndjson", VALID)
    put(drop_dir, "copy-of-a.ndjson", VALID)
    first = tick(instance, settings)
    assert [r.partition_key for r in drop_requests(first)] == [key_for("a.ndjson", VALID)]
    apply(instance, first)
    put(drop_dir, "a.ndjson", VALID + line(7, "success", "delta", value="3"))
    os.utime(drop_dir / "a.ndjson", ns=(HOUR_AGO_NS + 10**9, HOUR_AGO_NS + 10**9))
    second = tick(instance, settings, first.cursor)
    assert [r.partition_key for r in drop_requests(second)] == [
        key_for("a.ndjson", VALID + line(7, "success", "delta", value="3"))]


def test_refused_files_are_logged_once_and_never_run(instance, settings, drop_dir, tmp_path, capfd,
                                                     monkeypatch) -> None:
    outside = put(tmp_path, "outside.ndjson", VALID)
    (drop_dir / "link.ndjson").symlink_to(outside)
    put(drop_dir, "huge.ndjson", VALID)
    monkeypatch.setenv("KVONCE_MAX_DROP_FILE_BYTES", str(len(VALID) - 1))
    first = tick(instance, settings)
    assert drop_requests(first) == []
    assert set(orjson.loads(first.cursor)["refused"]) == {"link.ndjson", "huge.ndjson"}
    logged = capfd.readouterr().err
    assert "refused link.ndjson: symlink pointing outside the drop folder" in logged
    assert "refused huge.ndjson" in logged and "KVONCE_MAX_DROP_FILE_BYTES" in logged
    second = tick(instance, settings, first.cursor)
    assert drop_requests(second) == []
    assert "refused" not in capfd.readouterr().err


def test_a_file_name_that_is_not_utf8_is_refused_and_every_other_file_keeps_flowing(instance, settings, drop_dir,
                                                                                  capfd) -> None:
    bad = os.path.join(os.fsencode(drop_dir), b"bad\xff.ndjson")
    with open(bad, "wb") as handle:
        handle.write(VALID)
    os.utime(bad, ns=(HOUR_AGO_NS, HOUR_AGO_NS))
    put(drop_dir, "good.ndjson", VALID)
    first = tick(instance, settings)
    assert [r.tags[TAG_NAME] for r in drop_requests(first)] == ["good.ndjson"]
    assert set(orjson.loads(first.cursor)["refused"]) == {"bad\\xff.ndjson"}
    assert "refused bad\\xff.ndjson: the file name is not valid UTF-8" in capfd.readouterr().err
    apply(instance, first)
    put(drop_dir, "later.ndjson", VALID + line(3, "success", "gamma", value="v3"))
    second = tick(instance, settings, first.cursor)  # the cursor from the tick that met the bad name works
    assert [r.tags[TAG_NAME] for r in drop_requests(second)] == ["later.ndjson"]
    assert "refused" not in capfd.readouterr().err  # logged once
    assert os.path.exists(bad), "the file itself is left alone"


# --- the runs ---------------------------------------------------------------------------------


def test_a_dropped_payload_gets_its_own_folder_lineage_and_envelope(instance, settings, drop_dir,
                                                                     reports_dir) -> None:
    put(drop_dir, "otlp-1.ndjson", VALID)
    result, [run] = run_tick(instance, settings)
    assert run.success
    key = key_for("otlp-1.ndjson", VALID)
    folder = reports_dir / "trace" / key
    for name in envelope.ARTIFACT_NAMES:
        assert (folder / name).is_file(), name
    sha = hashlib.sha256(VALID).hexdigest()
    events = run.get_asset_materialization_events()
    assert len(events) == 4
    for event in events:
        meta = {k: v.value for k, v in event.materialization.metadata.items()}
        assert meta["source_file"] == "otlp-1.ndjson" and meta["source_sha256"] == sha
        assert meta["source_bytes"] == len(VALID) and meta["source_arrived_at"].endswith("Z")
        assert meta["run_id"] == run.run_id and len(meta["code_version"]) == 12
        assert event.materialization.partition == key
    doc = orjson.loads((folder / envelope.ENVELOPE).read_bytes())
    assert doc["status"] == "checked" and doc["valid"] is True and doc["partitionKey"] == key
    assert doc["source"]["sha256"] == sha and doc["correlation"]["runId"] == run.run_id
    listed = {a["name"]: a["sha256"] for a in doc["artifacts"]}
    assert set(listed) == set(envelope.ARTIFACT_NAMES)
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert not (reports_dir / "trace" / artifacts.VALIDATION).exists()  # the default run's folder is untouched


def test_any_input_form_works_gzipped_otlp_json_included(instance, settings, drop_dir, reports_dir,
                                                         sample_otlp) -> None:
    import gzip

    data = gzip.compress(sample_otlp.read_bytes(), mtime=0)
    put(drop_dir, "kvonce-otlp.json.gz", data)
    _, [run] = run_tick(instance, settings)
    assert run.success
    key = key_for("kvonce-otlp.json.gz", data)
    assert key.startswith("kvonce-otlp.json-")
    collected = run.get_asset_materialization_events()[0].materialization.metadata
    assert collected["source_compressed"].value is True and collected["source_format"].value == "otlp-json"
    assert (reports_dir / "trace" / key / artifacts.COLLECTED).read_bytes() == sample_otlp.read_bytes()


def test_commit_and_branch_come_from_the_environment(instance, settings, drop_dir, reports_dir,
                                                     monkeypatch) -> None:
    monkeypatch.setenv("GITHUB_SHA", "0123abc")
    monkeypatch.setenv("GITHUB_REF_NAME", "feature/x")
    put(drop_dir, "a.ndjson", VALID)
    _, [run] = run_tick(instance, settings)
    doc = envelope.read_envelope(reports_dir / "trace" / key_for("a.ndjson", VALID))
    assert doc["correlation"]["commit"] == "0123abc" and doc["correlation"]["branch"] == "feature/x"


@pytest.mark.parametrize(("name", "data", "where"), [
    ("broken.ndjson", VALID + b'{"timestamp": oops\n', "line 4"),
    ("nothing.json", b'{"resourceSpans": []}', None),
    ("binary.bin", b"\x00\x01\x02garbage", None),
])
def test_an_unreadable_payload_fails_once_clearly_and_is_left_alone(instance, settings, drop_dir, reports_dir,
                                                                     name, data, where) -> None:
    path = put(drop_dir, name, data)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    first, [run] = run_tick(instance, settings)
    assert not run.success
    failure = run.failure_data_for_node("drops__kvonce_conformance_pass") or next(
        e for e in run.all_events if e.is_step_failure).step_failure_data
    message = str(failure.user_failure_data.description if failure.user_failure_data else failure.error)
    assert name in message
    if where:
        assert where in message
    key = key_for(name, data)
    doc = envelope.read_envelope(reports_dir / "trace" / key)
    assert doc["status"] == "unusable" and doc["valid"] is False and doc["inputError"]["source"].endswith(name)
    report = orjson.loads((reports_dir / "trace" / key / artifacts.VALIDATION).read_bytes())
    assert report["valid"] is False and report["inputError"]["message"]
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    second = tick(instance, settings, first.cursor)
    assert drop_requests(second) == []
    assert drop_requests(tick(instance, settings, None)) == []  # even without the cursor


def test_a_bad_span_is_named_by_the_dropped_file_and_the_span(instance, settings, drop_dir, reports_dir) -> None:
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "a1b2c3d4e5f60001", "name": "kvonce.success",
            "startTimeUnixNano": "1759557600000000000", "endTimeUnixNano": "1759557600000000001",
            "attributes": [{"key": "kvonce.event.type", "value": {"stringValue": "success"}},
                           {"key": "kvonce.event.key", "value": {"arrayValue": {"values": [{"intValue": "7"}]}}}]}
    data = orjson.dumps({"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": [span]}]}]})
    put(drop_dir, "otlp-bad-span.json", data)
    _, [run] = run_tick(instance, settings)
    assert not run.success
    failure = next(e for e in run.all_events if e.is_step_failure).step_failure_data
    message = failure.user_failure_data.description
    assert str(drop_dir / "otlp-bad-span.json") in message and "span r0/s0/p0" in message
    assert "kvonce.event.key" in message
    doc = envelope.read_envelope(reports_dir / "trace" / key_for("otlp-bad-span.json", data))
    assert doc["inputError"]["source"] == str(drop_dir / "otlp-bad-span.json")
    assert doc["inputError"]["where"].endswith("span r0/s0/p0")


def test_a_violating_payload_fails_its_blocking_check_and_keeps_its_report(instance, settings, drop_dir,
                                                                             reports_dir) -> None:
    data = line(0, "success", "k", value="1") + line(1, "success", "k", value="2")
    put(drop_dir, "bad.ndjson", data)
    _, [run] = run_tick(instance, settings)
    assert not run.success
    checks = {c.check_name: c.passed for c in run.get_asset_check_evaluations()}
    assert checks["kvonce_conformance"] is False
    report = orjson.loads((reports_dir / "trace" / key_for("bad.ndjson", data) / artifacts.VALIDATION).read_bytes())
    assert report["summary"]["byRule"] == {"multiple-success": 1}
    assert envelope.read_envelope(reports_dir / "trace" / key_for("bad.ndjson", data))["valid"] is False


def test_a_hand_launched_partition_finds_its_payload_without_tags(instance, settings, drop_dir, reports_dir) -> None:
    put(drop_dir, "a.ndjson", VALID)
    key = key_for("a.ndjson", VALID)
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    run = dg.materialize(drop_assets, instance=instance, partition_key=key, resources={"kvonce": settings})
    assert run.success
    meta = run.get_asset_materialization_events()[-1].materialization.metadata
    assert meta["source_sha256"].value == hashlib.sha256(VALID).hexdigest()


# --- across payloads --------------------------------------------------------------------------


def test_the_store_sees_what_single_payloads_cannot(instance, settings, drop_dir, reports_dir) -> None:
    first = line(0, "success", "k", value="v1")
    put(drop_dir, "p1.ndjson", first)
    cursor, [run1] = run_tick(instance, settings)
    assert run1.success
    # The duplicate failure arrives one payload after its success: legal, and the payload says so.
    second = line(5, "failure", "k", reason="duplicate")
    put(drop_dir, "p2.ndjson", second)
    cursor, [run2] = run_tick(instance, settings, cursor.cursor)
    assert run2.success
    report2 = orjson.loads((reports_dir / "trace" / key_for("p2.ndjson", second) / artifacts.VALIDATION).read_bytes())
    assert report2["valid"] is True
    assert report2["crossPayload"]["resolved"][0]["success"]["partition"] == key_for("p1.ndjson", first)
    # A later payload writes the key again: only the store (and this payload, against it) can see it.
    third = line(9, "success", "k", value="v2")
    put(drop_dir, "p3.ndjson", third)
    cursor, [run3] = run_tick(instance, settings, cursor.cursor)
    assert not run3.success
    report3 = orjson.loads((reports_dir / "trace" / key_for("p3.ndjson", third) / artifacts.VALIDATION).read_bytes())
    [issue] = report3["issues"]
    assert issue["type"] == "multiple-success"
    assert issue["crossPayload"]["otherPartition"] == key_for("p1.ndjson", first)
    # The sensor asks for the store once there are new results, and once only.
    store_requests = [r for r in cursor.run_requests or [] if r.job_name == "kvonce_store_job"]
    after = tick(instance, settings, cursor.cursor)
    store_requests += [r for r in after.run_requests or [] if r.job_name == "kvonce_store_job"]
    assert len(store_requests) >= 1
    assert [r for r in tick(instance, settings, after.cursor).run_requests or []
            if r.job_name == "kvonce_store_job"] == []
    result = dg.materialize([kvonce_store], instance=instance, resources={"kvonce": settings},
                            raise_on_error=False)
    assert result.success  # the cross-payload check is not blocking: the store always records its view
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "cross_payload_conformance" and check.passed is False
    doc = orjson.loads((reports_dir / "trace" / store.STORE_DIR / store.STORE_REPORT).read_bytes())
    [finding] = doc["findings"]
    assert finding["type"] == "multiple-success"
    assert finding["first"]["partition"] == key_for("p1.ndjson", first)
    assert finding["second"]["partition"] == key_for("p3.ndjson", third)
    assert [p["partition"] for p in doc["payloads"]] == [key_for(n, d) for n, d in
                                                       (("p1.ndjson", first), ("p2.ndjson", second),
                                                        ("p3.ndjson", third))]


def test_payloads_of_two_scopes_never_judge_each_other_and_one_scope_does(instance, settings, drop_dir,
                                                                          reports_dir) -> None:
    """Two ``kvonce mock`` runs both write ``alpha``: unrelated in two scopes, a violation in one."""
    alpha = line(0, "success", "alpha", value="v1", traceId="a" * 32, spanId="1" * 16)
    again = line(9, "success", "alpha", value="v2", traceId="b" * 32, spanId="2" * 16)
    for scope in ("orders", "billing"):
        (drop_dir / scope).mkdir()
    put(drop_dir / "orders", "a.ndjson", alpha)
    put(drop_dir / "billing", "b.ndjson", again)
    result, runs = run_tick(instance, settings)
    assert all(run.success for run in runs)
    tags = {r.partition_key: r.tags for r in drop_requests(result)}
    assert {t["kvonce/store-scope"] for t in tags.values()} == {"orders", "billing"}
    assert sorted(tags) == sorted(["orders~" + key_for("a.ndjson", alpha), "billing~" + key_for("b.ndjson", again)])
    # the same key again in the orders scope: a real violation, naming the other payload and event
    put(drop_dir / "orders", "c.ndjson", again)
    _, [run] = run_tick(instance, settings, result.cursor)
    assert not run.success
    report = orjson.loads((reports_dir / "trace" / ("orders~" + key_for("c.ndjson", again)) / artifacts.VALIDATION)
                          .read_bytes())
    [issue] = report["issues"]
    assert issue["type"] == "multiple-success"
    assert issue["crossPayload"]["otherPartition"] == "orders~" + key_for("a.ndjson", alpha)
    assert issue["crossPayload"]["otherEventIndex"] == 0
    # both events' span ids, so each can be found in the tracing backend
    assert (issue["traceId"], issue["spanId"]) == ("b" * 32, "2" * 16)
    assert (issue["crossPayload"]["otherTraceId"], issue["crossPayload"]["otherSpanId"]) == ("a" * 32, "1" * 16)
    summary = (reports_dir / "trace" / ("orders~" + key_for("c.ndjson", again)) / artifacts.SUMMARY).read_text()
    assert f"with orders~{key_for('a.ndjson', alpha)} event 0" in summary, "the where column names the other payload"
    stored = dg.materialize([kvonce_store], instance=instance, resources={"kvonce": settings})
    [check] = stored.get_asset_check_evaluations()
    assert check.passed is False and "orders" in check.description and "billing" not in check.description
    orders = orjson.loads((reports_dir / "trace" / store.STORE_DIR / "orders" / store.STORE_REPORT).read_bytes())
    billing = orjson.loads((reports_dir / "trace" / store.STORE_DIR / "billing" / store.STORE_REPORT).read_bytes())
    assert (orders["valid"], billing["valid"], orders["scope"]) == (False, True, "orders")
    [finding] = orders["findings"]
    assert (finding["first"]["traceId"], finding["first"]["spanId"]) == ("a" * 32, "1" * 16)
    assert (finding["second"]["traceId"], finding["second"]["spanId"]) == ("b" * 32, "2" * 16)


@pytest.mark.parametrize("how", ["cli", "job"])
def test_a_reset_scope_starts_from_an_empty_store_and_keeps_the_old_reports(instance, settings, drop_dir,
                                                                            reports_dir, how) -> None:
    first, again = line(0, "success", "alpha", value="v1"), line(9, "success", "alpha", value="v2")
    put(drop_dir, "a.ndjson", first)
    result, [run] = run_tick(instance, settings)
    assert run.success
    if how == "cli":
        assert main(["store", "reset", "--scope", "default", "--reports-dir", str(reports_dir)]) == 0
    else:
        job = defs.resolve_job_def("kvonce_store_reset_job")
        assert job.execute_in_process(instance=instance, resources={"kvonce": settings}).success
        [materialization] = instance.fetch_materializations(kvonce_store.key, limit=1).records
        reset = materialization.asset_materialization.metadata["reset"].value
        assert reset["excluded"] == [key_for("a.ndjson", first)]
    record = orjson.loads((reports_dir / "trace" / store.STORE_DIR / store.RESET_FILE).read_bytes())
    assert record["scope"] == "default" and record["excluded"] == [key_for("a.ndjson", first)]
    put(drop_dir, "b.ndjson", again)
    _, [run2] = run_tick(instance, settings, result.cursor)
    assert run2.success, "after the reset the earlier write of alpha is no longer in the store"
    assert (reports_dir / "trace" / key_for("a.ndjson", first) / artifacts.VALIDATION).exists(), "history is kept"
    folded = dg.materialize([kvonce_store], instance=instance, resources={"kvonce": settings})
    assert folded.get_asset_check_evaluations()[0].passed is True
    doc = orjson.loads((reports_dir / "trace" / store.STORE_DIR / store.STORE_REPORT).read_bytes())
    assert [p["partition"] for p in doc["payloads"]] == [key_for("b.ndjson", again)]


def test_the_run_judges_the_bytes_it_hashed_even_if_the_file_changes_under_it(instance, settings, drop_dir,
                                                                              reports_dir, monkeypatch) -> None:
    """The payload is read once: hashed and copied in one read. A rewrite after that (here: the
    moment the step starts collecting) changes nothing the run records or judges."""
    valid, violating = VALID, VALID + line(9, "success", "alpha", value="v9")
    path = put(drop_dir, "p.ndjson", valid)
    first = tick(instance, settings)
    apply(instance, first)
    [request] = drop_requests(first)
    original = collect_module.collect_payload

    def rewrite_then_collect(source, destination, **kwargs):
        path.write_bytes(violating)  # the user's file changes after it was located and hashed
        os.mkfifo(drop_dir / "late.fifo")  # and a FIFO appears beside it
        return original(source, destination, **kwargs)

    monkeypatch.setattr(collect_module, "collect_payload", rewrite_then_collect)
    run = materialize(instance, settings, request)
    assert run.success, "the bytes that were hashed are valid; the rewrite came later"
    out = reports_dir / "trace" / request.partition_key
    report = orjson.loads((out / artifacts.VALIDATION).read_bytes())
    assert report["valid"] is True and report["summary"]["events"] == 3
    assert report["summary"]["input"]["source"] == str(path), "the report names the user's file, not our copy"
    envelope_doc = envelope.read_envelope(out)
    assert envelope_doc["source"]["sha256"] == hashlib.sha256(valid).hexdigest()
    assert not (out / ".kvonce-source-payload").exists(), "the private copy is removed after the run"


# --- the definitions --------------------------------------------------------------------------


def test_the_ci_job_keeps_its_four_unprefixed_assets() -> None:
    job = defs.resolve_job_def("kvonce_conformance_job")
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert keys == {"collected_kvonce_otlp", "kvonce_events", "kvonce_projection", "kvonce_validation"}
    assert job.partitions_def is None
    dg.Definitions.validate_loadable(defs)


def test_a_foreign_partition_key_is_never_used_as_a_folder(instance, settings, reports_dir) -> None:
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["../evil"])
    run = dg.materialize(drop_assets, instance=instance, partition_key="../evil", resources={"kvonce": settings},
                         raise_on_error=False)
    assert not run.success
    assert not (reports_dir / "evil").exists() and not (reports_dir / "trace" / "../evil").exists()


def test_a_violating_payload_alone_still_asks_for_the_store(instance, settings, drop_dir) -> None:
    """A violation is the validation asset's failed materialization, so the store's trigger is the
    projection (materialized for every judged payload), or a last violating drop would never be folded."""
    data = line(0, "success", "k", value="1") + line(1, "success", "k", value="2")
    put(drop_dir, "bad.ndjson", data)
    cursor, [run] = run_tick(instance, settings)
    assert not run.success
    after = tick(instance, settings, cursor.cursor)
    assert [r.job_name for r in after.run_requests or []] == ["kvonce_store_job"]


def test_a_tick_scans_a_bounded_number_of_inflated_bytes_and_the_rest_waits_its_turn(
        instance, settings, drop_dir, monkeypatch, sample_otlp) -> None:
    """Gzip files inflate to more than the tick's file-byte budget counts: the domain scans stop at their
    own budget of inflated bytes (here 4 MiB; files of 6.3 MiB inflated, 3.2 MiB on disk), beyond each
    tick's first file, and the files left wait for the next tick, each still taken exactly once."""
    import gzip

    from kvonce_pipeline.orchestration.drops import sensors

    monkeypatch.setattr(sensors, "MAX_SCANNED_BYTES_PER_TICK", 4 * 1024 * 1024)
    base = sample_otlp.read_bytes()
    names = ["a.json.gz", "b.json.gz", "c.json.gz"]
    for name in names:  # random hex after the document: a 2:1 ratio, as the scan must read it all
        put(drop_dir, name, gzip.compress(base + b" " + os.urandom(3 * 1024 * 1024).hex().encode(), 1))
    cursor = None
    taken: list[list[str]] = []
    for _ in range(3):
        result = tick(instance, settings, cursor)
        apply(instance, result)
        cursor = result.cursor
        taken.append([r.tags[TAG_NAME] for r in result.run_requests or [] if r.partition_key is not None])
    assert taken == [["a.json.gz"], ["b.json.gz"], ["c.json.gz"]]
    assert len(instance.get_dynamic_partitions(PARTITIONS_NAME)) == 3
    assert sorted(orjson.loads(cursor)["files"]) == names and orjson.loads(cursor)["waiting"] == {}
    assert tick(instance, settings, cursor).run_requests in (None, [])  # nothing is taken twice
    # with the default budget one tick takes all three, as before
    monkeypatch.undo()
    with dg.DagsterInstance.ephemeral() as fresh:
        assert len(tick(fresh, settings).run_requests or []) == 3
