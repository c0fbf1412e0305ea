"""The drop folder in a bucket (``KVONCE_DROP_DIR=s3://...``): the sensor and the drop runs against a real
S3-compatible server (moto's, on loopback: the fixtures of ``engine/test_storage.py`` and
``orchestration/test_resources.py``), compared with the same payloads in a local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest

from kvonce_pipeline.domains.kvonce import artifacts, envelope
from kvonce_pipeline.engine import drops
from kvonce_pipeline.orchestration.drops.assets import TAG_ARRIVED
from kvonce_pipeline.orchestration.resources import KvonceSettings

from ...s3_server import objects_under
from .test_sensor import VALID, apply, drop_requests, key_for, line, materialize, put, tick

SCOPED = line(5, "success", "gamma", value="1") + line(6, "retry", "delta")
#: name -> bytes: one payload in the default scope, one in scope ``orders``, and what must be ignored
PAYLOADS = {"a.ndjson": VALID, "orders/b.ndjson": SCOPED}
IGNORED = {".hidden.ndjson": VALID, "c.ndjson.tmp": SCOPED, "orders/.x.ndjson.abc.tmp": VALID}


@pytest.fixture
def prefix(s3_prefix: str) -> str:
    """A fresh drop folder in the bucket, removed afterwards."""
    return s3_prefix


def put_objects(s3: Any, prefix: str, files: dict[str, bytes]) -> None:  # noqa: F811
    for name, data in files.items():
        s3.pipe_file(f"{prefix}/{name}", data)


def put_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        put((folder / name).parent, Path(name).name, data)


def etags(s3: Any, prefix: str) -> dict[str, str]:  # noqa: F811
    return {name: info["ETag"] for name, info in objects_under(s3, prefix).items()}


@pytest.fixture
def get_count(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """GetObject requests the process sends to the store: s3fs's one call into botocore, counted and passed on."""
    import s3fs

    counts = {"get_object": 0}
    real = s3fs.S3FileSystem._call_s3

    async def counting(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "get_object":
            counts["get_object"] += 1
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    return counts


def _requests(result: dg.SensorResult) -> list[tuple[str, str | None, str | None, dict[str, str]]]:
    """What a tick asks for, the arrival time aside (a file's mtime, an object's upload time)."""
    return sorted((r.job_name, r.partition_key, r.run_key, {k: v for k, v in r.tags.items() if k != TAG_ARRIVED})
                  for r in result.run_requests or [])


def test_a_bucket_prefix_gives_the_same_partitions_and_runs_as_a_local_folder(s3, prefix, tmp_path,  # noqa: F811
                                                                               get_count) -> None:
    put_objects(s3, prefix, {**PAYLOADS, **IGNORED, "orders/deep/d.ndjson": VALID})
    local = tmp_path / "local-drops"
    put_files(local, {**PAYLOADS, **IGNORED})
    (local / "orders" / "deep").mkdir()
    with dg.DagsterInstance.ephemeral() as remote_instance, dg.DagsterInstance.ephemeral() as local_instance:
        remote = tick(remote_instance, KvonceSettings(drop_dir=f"s3://{prefix}"))
        on_disk = tick(local_instance, KvonceSettings(drop_dir=str(local)))
        assert _requests(remote) == _requests(on_disk)
        expected = sorted([key_for("a.ndjson", VALID), "orders~" + key_for("b.ndjson", SCOPED)])
        assert sorted(r.partition_key for r in remote.run_requests) == expected
        [add] = remote.dynamic_partitions_requests
        assert sorted(add.partition_keys) == expected
        assert all(r.tags[TAG_ARRIVED].endswith("Z") for r in remote.run_requests)
        # the ignored names were never read, the nested folder was refused, not entered
        assert get_count["get_object"] == len(PAYLOADS)
        cursor = orjson.loads(remote.cursor)
        assert sorted(cursor["files"]) == ["a.ndjson", "orders/b.ndjson"]
        assert "orders/deep" in cursor["refused"]

        # the next tick lists again but downloads nothing it knows by size and ETag
        get_count["get_object"] = 0
        again = tick(remote_instance, KvonceSettings(drop_dir=f"s3://{prefix}"), remote.cursor)
        assert again.run_requests in (None, []) and get_count["get_object"] == 0
        # a replaced object is read again (once) and is a new partition; the other is not read
        put_objects(s3, prefix, {"a.ndjson": SCOPED})
        third = tick(remote_instance, KvonceSettings(drop_dir=f"s3://{prefix}"), again.cursor)
        assert [r.partition_key for r in drop_requests(third)] == [key_for("a.ndjson", SCOPED)]
        assert get_count["get_object"] == 1


def _reports(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_drop_run_from_the_bucket_writes_the_reports_of_a_local_drop_run(s3, prefix, tmp_path) -> None:  # noqa: F811
    put_objects(s3, prefix, PAYLOADS)
    local = tmp_path / "local-drops"
    put_files(local, PAYLOADS)
    before = etags(s3, prefix)
    outputs = {}
    for label, drop_dir in (("remote", f"s3://{prefix}"), ("local", str(local))):
        reports = tmp_path / f"reports-{label}"
        settings = KvonceSettings(drop_dir=drop_dir, reports_dir=str(reports))
        with dg.DagsterInstance.ephemeral() as instance:
            result = tick(instance, settings)
            apply(instance, result)
            runs = [materialize(instance, settings, r) for r in drop_requests(result)]
            assert [run.success for run in runs] == [True, True]
            if label == "remote":
                for run in runs:
                    for event in run.get_asset_materialization_events():
                        meta = event.materialization.metadata
                        assert meta["source_path"].value in (f"s3://{prefix}/a.ndjson",
                                                             f"s3://{prefix}/orders/b.ndjson")
        outputs[label] = _reports(reports / "trace")
    remote, on_disk = outputs["remote"], outputs["local"]
    assert sorted(remote) == sorted(on_disk)
    for name in envelope.ARTIFACT_NAMES:  # the envelope aside (run ids), and the reports naming their source
        for key in (key_for("a.ndjson", VALID), "orders~" + key_for("b.ndjson", SCOPED)):
            path = f"{key}/{name}"
            if name in (artifacts.VALIDATION, artifacts.SUMMARY):
                continue
            assert remote[path] == on_disk[path], path
    key = key_for("a.ndjson", VALID)
    url = f"s3://{prefix}/a.ndjson"
    report = orjson.loads(remote[f"{key}/{artifacts.VALIDATION}"])
    local_report = orjson.loads(on_disk[f"{key}/{artifacts.VALIDATION}"])
    assert report["summary"]["input"]["source"] == url
    local_report["summary"]["input"]["source"] = url
    assert report == local_report
    assert str(local / "a.ndjson").encode() in on_disk[f"{key}/{artifacts.SUMMARY}"]
    assert remote[f"{key}/{artifacts.SUMMARY}"] == on_disk[f"{key}/{artifacts.SUMMARY}"].replace(
        str(local / "a.ndjson").encode(), url.encode())
    doc = orjson.loads(remote[f"{key}/{envelope.ENVELOPE}"])
    assert doc["source"]["path"] == url and doc["status"] == "checked"
    assert etags(s3, prefix) == before, "the drop objects are only read"
    assert not any(drops.is_ignored_name(Path(name).name) for name in remote)  # no private copy left behind


def test_an_object_replaced_with_other_bytes_fails_its_run_clearly(s3, prefix, tmp_path) -> None:  # noqa: F811
    put_objects(s3, prefix, {"a.ndjson": VALID})
    settings = KvonceSettings(drop_dir=f"s3://{prefix}", reports_dir=str(tmp_path / "reports"))
    with dg.DagsterInstance.ephemeral() as instance:
        result = tick(instance, settings)
        apply(instance, result)
        put_objects(s3, prefix, {"a.ndjson": SCOPED})
        replaced = etags(s3, prefix)
        [request] = drop_requests(result)
        run = materialize(instance, settings, request)
    assert not run.success
    [failure] = [e for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = str(failure.step_failure_data.error)
    assert f"s3://{prefix}" in message and f"no payload with the content of partition {request.partition_key}" in message
    folder = tmp_path / "reports" / "trace" / request.partition_key
    doc = orjson.loads((folder / envelope.ENVELOPE).read_bytes())
    assert doc["status"] == "unusable" and doc["source"]["path"] == f"s3://{prefix}/a.ndjson"
    assert etags(s3, prefix) == replaced


def test_objects_are_routed_to_their_domains_as_files_are_and_their_runs_name_the_url(s3, prefix,  # noqa: F811
                                                                                       tmp_path) -> None:
    from kvonce_pipeline.orchestration.drops import domains as drop_domains

    from .test_domains import INVENTORY_OTLP, launch, mixed

    files = {"inv.json": INVENTORY_OTLP.read_bytes(), "orders/both.json": mixed(), **PAYLOADS}
    put_objects(s3, prefix, files)
    local = tmp_path / "local-drops"
    put_files(local, files)
    before = etags(s3, prefix)
    with dg.DagsterInstance.ephemeral() as instance, dg.DagsterInstance.ephemeral() as local_instance:
        settings = KvonceSettings(drop_dir=f"s3://{prefix}", reports_dir=str(tmp_path / "reports"))
        result = tick(instance, settings)
        assert _requests(result) == _requests(tick(local_instance, KvonceSettings(drop_dir=str(local))))
        routed = {r.tags[drop_domains.TAG_DOMAINS]: r for r in result.run_requests if r.job_name == "trace_drop_job"}
        assert sorted(routed) == ["inventory", "kvonce,inventory"]
        apply(instance, result)
        run = launch(instance, settings, routed["inventory"])
    assert run.success
    collected = next(e for e in run.get_asset_materialization_events()
                     if e.asset_key == drop_domains.DROP_COLLECTED_KEY).materialization.metadata
    assert collected["source_path"].value == f"s3://{prefix}/inv.json"
    assert etags(s3, prefix) == before


def test_an_empty_prefix_waits_and_a_missing_bucket_is_said_on_the_tick(s3, prefix) -> None:  # noqa: F811
    with dg.DagsterInstance.ephemeral() as instance:
        empty = tick(instance, KvonceSettings(drop_dir=f"s3://{prefix}"))
        assert empty.skip_reason.skip_message == f"no new payload in s3://{prefix}"
        missing = tick(instance, KvonceSettings(drop_dir="s3://no-such-bucket/drops"), empty.cursor)
    assert missing.skip_reason.skip_message == "drop folder s3://no-such-bucket/drops: the bucket no-such-bucket does not exist"
    assert missing.cursor == empty.cursor and not s3.exists("no-such-bucket")


def test_an_ndjson_log_named_for_its_domain_gets_the_same_verdict_from_the_bucket(s3, prefix,  # noqa: F811
                                                                                  tmp_path) -> None:
    from .test_domains import INVENTORY_NDJSON, checks, launch

    data = INVENTORY_NDJSON.read_bytes()
    reports = {}
    for label, drop_dir in (("remote", f"s3://{prefix}"), ("local", str(tmp_path / "local-drops"))):
        if label == "remote":
            put_objects(s3, prefix, {"stock.inventory.ndjson": data})
        else:
            put_files(Path(drop_dir), {"stock.inventory.ndjson": data})
        settings = KvonceSettings(drop_dir=drop_dir, reports_dir=str(tmp_path / f"reports-{label}"))
        with dg.DagsterInstance.ephemeral() as instance:
            result = tick(instance, settings)
            apply(instance, result)
            [request] = [r for r in result.run_requests if r.partition_key]
            assert request.tags["kvonce/domains"] == "inventory"
            run = launch(instance, settings, request)
        assert not run.success and [c for c, ok in checks(run).items() if not ok] == [
            ("drops/inventory_validation", "inventory_conformance")]
        reports[label] = orjson.loads((tmp_path / f"reports-{label}" / "trace" / request.partition_key / "inventory"
                                       / "inventory-validation.json").read_bytes())
    assert reports["remote"]["summary"]["byRule"] == reports["local"]["summary"]["byRule"]
    assert reports["remote"]["summary"]["input"]["source"] == f"s3://{prefix}/stock.inventory.ndjson"
    # the log itself is read (a private download checked against the sha256 the sensor recorded), not
    # the collected copy's rendering: findings name the log's lines, exactly as from a local folder
    assert [i["origin"] for i in reports["remote"]["issues"]] == [i["origin"] for i in reports["local"]["issues"]]
    assert reports["remote"]["issues"] and all(i["origin"].startswith("line ") and " span " not in i["origin"]
                                               for i in reports["remote"]["issues"])
