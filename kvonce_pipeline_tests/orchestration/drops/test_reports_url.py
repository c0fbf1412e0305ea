"""The drop jobs and the cross-payload store with ``KVONCE_REPORTS_DIR`` a URL (``s3://...``) and the drop
folder local: the real sensor function ticks over real files on an ephemeral instance, each run is launched
as the daemon launches it, against a real S3-compatible server (moto's, on loopback, for this module),
and everything published is compared with the same runs on a local reports folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest

from kvonce_pipeline.cli import main
from kvonce_pipeline.domains.kvonce import artifacts, envelope, store
from kvonce_pipeline.engine import storage
from kvonce_pipeline.orchestration.drops import assets as drop_assets_module
from kvonce_pipeline.orchestration.drops.definitions import defs as drop_defs
from kvonce_pipeline.orchestration.resources import KvonceSettings

from ...s3_server import BUCKET, objects_under
from .test_domains import drop_runs, key_for, launch, mixed, put, tick
from .test_sensor import line

pytestmark = pytest.mark.slow

#: Two payloads of one scope that both write ``alpha``: a violation only the store (and the later
#: payload, judged against it) can see. Span ids, so the cross-payload finding names both spans.
FIRST = (line(0, "success", "alpha", value="v1", traceId="a" * 32, spanId="1" * 16)
         + line(1, "retry", "beta") + line(2, "success", "beta", value="b1"))
SECOND = line(7, "success", "gamma", value="g1") + line(9, "success", "alpha", value="v2", traceId="b" * 32,
                                                        spanId="2" * 16)
#: Fields of an envelope that differ between any two runs: when it was written and which run wrote it.
RUN_FIELDS = ("writtenAt", "correlation")


def _store_job(instance: dg.DagsterInstance, settings: KvonceSettings, name: str = "kvonce_store_job",
               config: dict[str, Any] | None = None) -> dg.ExecuteInProcessResult:
    job = dg.Definitions.merge(drop_defs, dg.Definitions(resources={"kvonce": settings})).resolve_job_def(name)
    return job.execute_in_process(instance=instance, run_config=config, raise_on_error=False)


def _drops(sides: list[tuple[dg.DagsterInstance, KvonceSettings]], drop_dir: Path,
           ) -> list[list[dg.ExecuteInProcessResult]]:
    """A mixed KvOnce + Inventory drop in scope ``inv``, then the two colliding payloads of ``default``,
    each one ticked and launched (as the daemon would) on every side before the next is dropped, so each
    side registers them in the same order; returns each side's runs."""
    runs: list[list[dg.ExecuteInProcessResult]] = [[] for _ in sides]
    cursors: list[str | None] = [None for _ in sides]
    for folder, name, data in ((drop_dir / "inv", "both.json", mixed()), (drop_dir, "a.ndjson", FIRST),
                               (drop_dir, "b.ndjson", SECOND)):
        folder.mkdir(exist_ok=True)
        put(folder, name, data)
        for side, (instance, settings) in enumerate(sides):
            result = tick(instance, settings, cursors[side])
            cursors[side] = result.cursor
            [request] = drop_runs(result)
            runs[side].append(launch(instance, settings, request))
    return runs


def _local_files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _remote_files(s3: Any, url: str) -> dict[str, bytes]:
    root = url.removeprefix("s3://")
    return {path[len(root) + 1:]: s3.cat_file(path) for path in sorted(objects_under(s3, root))}


def _without_run_fields(name: str, data: bytes) -> Any:
    if name.rsplit("/", 1)[-1] != envelope.ENVELOPE:
        return data
    return {k: v for k, v in orjson.loads(data).items() if k not in RUN_FIELDS}


def _metadata(run: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.asset_key.to_user_string(): e.materialization.metadata for e in run.get_asset_materialization_events()}


def test_drop_runs_and_the_store_publish_what_local_reports_hold(s3: Any, tmp_path: Path) -> None:  # noqa: F811
    drop_dir = tmp_path / "drops"
    drop_dir.mkdir()
    url = f"s3://{BUCKET}/drop-reports/same"
    local_settings = KvonceSettings(drop_dir=str(drop_dir), reports_dir=str(tmp_path / "local"))
    remote_settings = KvonceSettings(drop_dir=str(drop_dir), reports_dir=url)
    with dg.DagsterInstance.ephemeral() as local_instance, dg.DagsterInstance.ephemeral() as instance:
        local_runs, runs = _drops([(local_instance, local_settings), (instance, remote_settings)], drop_dir)
        inputs = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in drop_dir.rglob("*") if path.is_file()}
        assert [r.success for r in runs] == [r.success for r in local_runs] == [True, True, False]
        assert _store_job(local_instance, local_settings).success
        stored = _store_job(instance, remote_settings)
        assert stored.success

    # every published object is the local run's file, byte for byte (an envelope: but for its run's id and time)
    local, remote = _local_files(tmp_path / "local" / "trace"), _remote_files(s3, f"{url}/trace")
    assert sorted(remote) == sorted(local)
    assert {n: _without_run_fields(n, b) for n, b in remote.items()} == \
        {n: _without_run_fields(n, b) for n, b in local.items()}
    first, second, mixed_key = key_for("a.ndjson", FIRST), key_for("b.ndjson", SECOND), "inv~" + key_for(
        "both.json", mixed())
    for partition in (first, second, mixed_key):
        for name in (artifacts.COLLECTED, *artifacts.PUBLISH_ORDER, store.KEYFACTS, envelope.ENVELOPE):
            assert f"{partition}/{name}" in remote, (partition, name)
    assert {f"{mixed_key}/inventory/inventory-validation.json", f"{mixed_key}/trace-summary.json",
            f"{mixed_key}/collected-otlp.json"} <= set(remote)
    assert not [name for name in remote if name.rsplit("/", 1)[-1].startswith(".")], "no private copy is published"

    # the cross-payload finding: in the later payload's published report, both spans named ...
    report = orjson.loads(remote[f"{second}/{artifacts.VALIDATION}"])
    [issue] = report["issues"]
    assert issue["type"] == "multiple-success" and issue["crossPayload"]["otherPartition"] == first
    assert (issue["traceId"], issue["spanId"]) == ("b" * 32, "2" * 16)
    assert (issue["crossPayload"]["otherTraceId"], issue["crossPayload"]["otherSpanId"]) == ("a" * 32, "1" * 16)
    assert orjson.loads(remote[f"{second}/{envelope.ENVELOPE}"])["valid"] is False
    # ... and in the store's, which is published for each scope
    doc = orjson.loads(remote[f"{store.STORE_DIR}/{store.STORE_REPORT}"])
    [finding] = doc["findings"]
    assert (finding["first"]["partition"], finding["second"]["partition"]) == (first, second)
    assert (finding["first"]["spanId"], finding["second"]["spanId"]) == ("1" * 16, "2" * 16)
    assert f"{store.STORE_DIR}/inv/{store.STORE_REPORT}" in remote

    # the metadata names the published objects
    violating = _metadata(runs[2])
    assert violating["drops/kvonce_events"]["path"].value == f"{url}/trace/{second}/{artifacts.EVENTS}"
    assert _metadata(runs[0])["drops/collected_otlp"]["path"].value == f"{url}/trace/{mixed_key}/collected-otlp.json"
    [store_meta] = _metadata(stored).values()
    assert store_meta["path"].value == f"{url}/trace/{store.STORE_DIR}/{store.STORE_REPORT}"
    assert store_meta["scopes"].value["inv"]["path"] == f"{url}/trace/{store.STORE_DIR}/inv/{store.STORE_REPORT}"
    # the dropped files are only read
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in inputs} == inputs


def test_a_reset_in_the_bucket_starts_the_scope_afresh_and_the_cli_sees_it(s3: Any, tmp_path: Path) -> None:  # noqa: F811
    drop_dir = tmp_path / "drops"
    drop_dir.mkdir()
    reports = f"s3://{BUCKET}/drop-reports/reset"
    trace = f"{reports}/trace"
    settings = KvonceSettings(drop_dir=str(drop_dir), reports_dir=reports)
    first = key_for("a.ndjson", FIRST)
    with dg.DagsterInstance.ephemeral() as instance:
        put(drop_dir, "a.ndjson", FIRST)
        result = tick(instance, settings)
        assert launch(instance, settings, drop_runs(result)[0]).success
        assert _store_job(instance, settings).success
        reset = _store_job(instance, settings, "kvonce_store_reset_job",
                           {"ops": {"drops__kvonce_store": {"config": {"reset_scope": "default"}}}})
        assert reset.success
        s3.invalidate_cache()
        record = orjson.loads(s3.cat_file(f"{trace}/{store.STORE_DIR}/{store.RESET_FILE}"))
        assert record["scope"] == "default" and record["excluded"] == [first]
        # after the reset, the same key written again is no violation: the earlier payload is not folded
        put(drop_dir, "b.ndjson", SECOND)
        again = tick(instance, settings, result.cursor)
        run = launch(instance, settings, drop_runs(again)[0])
        assert run.success, "the reset record is read from the bucket"
        assert orjson.loads(s3.cat_file(f"{trace}/{key_for('b.ndjson', SECOND)}/{artifacts.VALIDATION}"))["valid"]
        assert _store_job(instance, settings).success
        s3.invalidate_cache()
        doc = orjson.loads(s3.cat_file(f"{trace}/{store.STORE_DIR}/{store.STORE_REPORT}"))
        assert [p["partition"] for p in doc["payloads"]] == [key_for("b.ndjson", SECOND)] and doc["valid"]
        assert s3.exists(f"{trace}/{first}/{artifacts.VALIDATION}"), "the reset keeps the earlier payload's reports"


def test_the_store_cli_lists_and_resets_a_scope_in_the_bucket(s3: Any, tmp_path: Path,  # noqa: F811
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    reports = f"s3://{BUCKET}/drop-reports/cli"
    trace = f"{reports}/trace"
    partition = key_for("a.ndjson", FIRST)
    s3.pipe(f"{trace}/{partition}/{store.KEYFACTS}".removeprefix("s3://"),
            orjson.dumps({"schemaVersion": store.FACTS_SCHEMA, "keys": {}}))
    assert main(["store", "list", "--reports-dir", reports]) == 0
    assert f"default: 1 payload(s), 1 folded by its store ({trace}/{store.STORE_DIR}/{store.STORE_REPORT})" \
        in capsys.readouterr().out
    assert main(["store", "reset", "--scope", "default", "--reports-dir", reports]) == 0
    s3.invalidate_cache()
    assert orjson.loads(s3.cat_file(f"{trace}/{store.STORE_DIR}/{store.RESET_FILE}"))["excluded"] == [partition]
    assert orjson.loads(s3.cat_file(f"{trace}/{store.STORE_DIR}/{store.STORE_REPORT}"))["summary"]["payloads"] == 0
    capsys.readouterr()
    assert main(["store", "list", "--reports-dir", reports]) == 0
    assert "default: 1 payload(s), 0 folded by its store" in capsys.readouterr().out


def test_a_store_run_that_lost_a_race_fails_without_overwriting(s3: Any, tmp_path: Path,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two store runs of one scope at once (what the queue's kvonce/store-scope limit prevents): the one
    whose conditional write comes second fails naming the object, and the other's report stands."""
    reports = f"s3://{BUCKET}/drop-reports/race"
    report_url = f"{reports}/trace/{store.STORE_DIR}/{store.STORE_REPORT}"
    settings = KvonceSettings(drop_dir=str(tmp_path / "drops"), reports_dir=reports)
    fold = store.fold

    def fold_while_another_run_publishes(*args: Any, **kwargs: Any) -> store.Fold:
        s3.pipe(report_url.removeprefix("s3://"), b'{"the other run": true}\n')
        return fold(*args, **kwargs)

    monkeypatch.setattr(drop_assets_module.store, "fold", fold_while_another_run_publishes)
    with dg.DagsterInstance.ephemeral() as instance:
        result = _store_job(instance, settings)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.step_failure_data.user_failure_data.description)  # type: ignore[union-attr]
    assert f"cannot write {report_url}: it was created by another writer" in message, message
    s3.invalidate_cache()
    assert s3.cat_file(report_url) == b'{"the other run": true}\n'


def test_a_violating_drop_publishes_its_report_then_fails_and_replaces_an_earlier_run(s3: Any,  # noqa: F811
                                                                                       tmp_path: Path) -> None:
    drop_dir = tmp_path / "drops"
    drop_dir.mkdir()
    reports = f"s3://{BUCKET}/drop-reports/violating"
    settings = KvonceSettings(drop_dir=str(drop_dir), reports_dir=reports)
    data = FIRST + line(5, "success", "alpha", value="again")
    path = put(drop_dir, "bad.ndjson", data)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    partition = key_for("bad.ndjson", data)
    stale = f"{reports}/trace/{partition}/{artifacts.VALIDATION}".removeprefix("s3://")
    s3.pipe(stale, b'{"an earlier run": true}\n')
    with dg.DagsterInstance.ephemeral() as instance:
        run = launch(instance, settings, drop_runs(tick(instance, settings))[0])
    assert not run.success
    [check] = [c for c in run.get_asset_check_evaluations() if c.check_name == "kvonce_conformance"]
    assert check.passed is False
    s3.invalidate_cache()
    report = orjson.loads(s3.cat_file(stale))
    assert report["valid"] is False and report["summary"]["byRule"]["multiple-success"] == 1
    assert report["summary"]["input"]["source"] == str(path), "the report names the dropped file"
    assert orjson.loads(s3.cat_file(stale.replace(artifacts.VALIDATION, envelope.ENVELOPE)))["valid"] is False
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before and os.listdir(drop_dir) == ["bad.ndjson"]


def test_span_ids_are_read_from_the_start_of_a_published_events_object(s3: Any,  # noqa: F811
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the bytes up to the wanted lines (and a read-ahead block) are fetched, not the object."""
    events = f"s3://{BUCKET}/drop-reports/ids/{artifacts.EVENTS}"
    blob = b"".join(orjson.dumps({"i": i, "traceId": f"t{i}", "spanId": f"s{i}", "pad": "x" * 60}) + b"\n"
                    for i in range(100_000))  # 10 MB
    s3.pipe(events.removeprefix("s3://"), blob)
    handles: list[Any] = []
    opened = storage.open_read

    @contextmanager
    def recorded(url: str, block_size: int) -> Iterator[Any]:
        with opened(url, block_size) as handle:
            yield handle
            handles.append(handle.cache)  # before closing the file drops it

    monkeypatch.setattr(store.storage, "open_read", recorded)
    assert store.span_ids_at(events, {3, 1}) == {1: {"traceId": "t1", "spanId": "s1"},
                                                 3: {"traceId": "t3", "spanId": "s3"}}
    [cache] = handles
    assert cache.total_requested_bytes <= 2 * 1024 * 1024 < len(blob)
    assert store.span_ids_at(events + ".gone", {0}) == {}


def test_an_unusable_drop_publishes_its_report_and_envelope_naming_the_dropped_file(s3: Any,  # noqa: F811
                                                                                   tmp_path: Path) -> None:
    drop_dir = tmp_path / "drops"
    drop_dir.mkdir()
    reports = f"s3://{BUCKET}/drop-reports/unusable"
    settings = KvonceSettings(drop_dir=str(drop_dir), reports_dir=reports)
    data = b'{"timestamp": "2025-10-04T06:00:00Z", "type": "success", "key": \n'
    path = put(drop_dir, "broken.ndjson", data)
    folder = f"{reports}/trace/{key_for('broken.ndjson', data)}"
    with dg.DagsterInstance.ephemeral() as instance:
        run = launch(instance, settings, drop_runs(tick(instance, settings))[0])
    assert not run.success
    s3.invalidate_cache()
    report = orjson.loads(s3.cat_file(f"{folder}/{artifacts.VALIDATION}"))
    assert report["valid"] is False and report["inputError"]["source"] == str(path)
    doc = orjson.loads(s3.cat_file(f"{folder}/{envelope.ENVELOPE}"))
    assert doc["status"] == "unusable" and doc["inputError"]["source"] == str(path)
    assert not s3.exists(f"{folder}/{artifacts.EVENTS}")
    assert not [name for name in s3.ls(folder) if name.rsplit("/", 1)[-1].startswith(".")]


def test_with_the_drop_folder_and_the_reports_in_the_bucket_no_local_folder_is_needed(
        s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The deployment without a shared volume: payloads dropped as objects, the sensor ticking over the
    prefix, the runs and the store publishing to another prefix. The cross-payload finding is found
    across two objects, and nothing is written to a local folder but the runs' private, removed ones."""
    drops_url, url = f"s3://{BUCKET}/bucket-only/drops", f"s3://{BUCKET}/bucket-only/reports"
    monkeypatch.chdir(tmp_path)  # a relative default folder, if any were used, would appear here
    settings = KvonceSettings(drop_dir=drops_url, reports_dir=url)
    cursor: str | None = None
    runs = []
    etags: dict[str, str] = {}
    with dg.DagsterInstance.ephemeral() as instance:
        for name, data in (("a.ndjson", FIRST), ("b.ndjson", SECOND)):
            path = f"{drops_url.removeprefix('s3://')}/{name}"
            s3.pipe_file(path, data)
            etags[path] = s3.info(path)["ETag"]
            result = tick(instance, settings, cursor)
            cursor = result.cursor
            [request] = drop_runs(result)
            runs.append(launch(instance, settings, request))
        assert [r.success for r in runs] == [True, False]  # the later payload writes alpha again
        assert _store_job(instance, settings).success
    remote = _remote_files(s3, f"{url}/trace")
    first, second = key_for("a.ndjson", FIRST), key_for("b.ndjson", SECOND)
    for partition in (first, second):
        assert f"{partition}/{artifacts.VALIDATION}" in remote and f"{partition}/{store.KEYFACTS}" in remote
    report = orjson.loads(remote[f"{second}/{artifacts.VALIDATION}"])
    assert report["summary"]["input"]["source"] == f"{drops_url}/b.ndjson"
    [issue] = report["issues"]
    assert issue["crossPayload"]["otherPartition"] == first and issue["crossPayload"]["otherSpanId"] == "1" * 16
    [finding] = orjson.loads(remote[f"{store.STORE_DIR}/{store.STORE_REPORT}"])["findings"]
    assert (finding["first"]["partition"], finding["second"]["partition"]) == (first, second)
    assert [p for p in tmp_path.rglob("*")] == [], "no local folder was written"
    assert {path: info["ETag"] for path, info in objects_under(s3, drops_url.removeprefix("s3://")).items()} == etags, \
        "the dropped objects are only read"
