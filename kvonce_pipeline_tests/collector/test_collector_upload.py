"""``kvonce collector`` with a drop folder URL: batches are written to a local spool folder as before
(journals, recovery), then each finished file is uploaded as one object and removed only after the
upload succeeded. Against moto's S3 server on loopback (the fixtures of ``engine/test_storage.py`` and
``orchestration/test_resources.py``); the uploaded objects are then taken by the real drop sensor."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from kvonce_pipeline import cli
from kvonce_pipeline.collector.collector import build_config
from kvonce_pipeline.collector.drop_batch import DropBatcher, find_journals
from kvonce_pipeline.collector.receiver import Receiver, ReceiverConfig
from kvonce_pipeline.collector.uploader import Uploader
from kvonce_pipeline.orchestration.drops.sensors import kvonce_drop_sensor
from kvonce_pipeline.orchestration.resources import KvonceSettings

from ..s3_server import objects_under
from .test_collector import KV_SPANS, PAYLOAD_NAME, payload_files, post, sdk_spans

PROTO = {"Content-Type": "application/x-protobuf"}


def body(prefix: str) -> bytes:
    return encode_spans(sdk_spans(KV_SPANS, key_prefix=prefix)).SerializeToString()


def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def prefix(s3_prefix: str) -> str:
    return s3_prefix


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        try:
            receiver.stop()
        except Exception:  # noqa: BLE001 - a test that stopped it already, or broke it on purpose
            pass


def objects(s3: Any, prefix: str) -> dict[str, bytes]:  # noqa: F811
    return {path.rsplit("/", 1)[1]: s3.cat_file(path) for path in objects_under(s3, prefix)}


def test_each_finished_file_becomes_one_object_and_the_sensor_takes_it(s3, prefix, tmp_path,  # noqa: F811
                                                                       receivers) -> None:
    spool = tmp_path / "spool"
    receiver = Receiver(ReceiverConfig(drop_dir=spool, port=0, flush_seconds=0, upload_url=f"s3://{prefix}")).start()
    receivers.append(receiver)
    assert post(receiver.url, body("a-"), PROTO)[0] == 200
    assert post(receiver.url, body("b-"), PROTO)[0] == 200
    until(lambda: len(objects(s3, prefix)) == 2)
    until(lambda: payload_files(spool) == [])  # removed once uploaded
    uploaded = objects(s3, prefix)
    assert {name: hashlib.sha256(data).hexdigest() for name, data in uploaded.items()} == {
        written.path.name: written.sha256 for written in receiver.files}
    health = receiver.health()
    assert health["status"] == "ok" and health["filesUploaded"] == 2 and health["filesToUpload"] == 0
    receiver.stop()
    assert list(spool.iterdir()) == []  # no journal, no temporary, no payload left
    with dg.DagsterInstance.ephemeral() as instance:
        tick = kvonce_drop_sensor(dg.build_sensor_context(
            instance=instance, resources={"kvonce": KvonceSettings(drop_dir=f"s3://{prefix}")}))
    assert isinstance(tick, dg.SensorResult)
    assert sorted(r.tags["kvonce/source_name"] for r in tick.run_requests) == sorted(uploaded)


def test_leftovers_and_a_killed_collectors_journal_are_uploaded_at_start(s3, prefix, tmp_path,  # noqa: F811
                                                                         receivers) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    leftover = body("left-")  # sdk spans get fresh ids: these bytes once
    (spool / "otlp-20261204T100000.000Z-000001.pb").write_bytes(leftover)  # written, never uploaded
    killed = DropBatcher(spool, flush_seconds=3600)  # acknowledged, journaled, never written: a kill
    killed.commit(killed.add(body("journal-"), len(KV_SPANS)))
    assert len(find_journals(spool)) == 1
    receiver = Receiver(ReceiverConfig(drop_dir=spool, port=0, flush_seconds=3600, upload_url=f"s3://{prefix}"))
    receivers.append(receiver.start())
    uploaded = objects(s3, prefix)  # by the time start() returns
    assert len(uploaded) == 2 and uploaded["otlp-20261204T100000.000Z-000001.pb"] == leftover
    [(recovered, spans)] = receiver.recovered
    assert spans == len(KV_SPANS) and recovered.name in uploaded
    assert payload_files(spool) == [] and find_journals(spool) == []


def test_a_name_another_collector_took_is_never_overwritten(s3, prefix, tmp_path) -> None:  # noqa: F811
    """Two collectors on one prefix: a file whose name holds other bytes goes up under a later name (the
    other's object untouched); a name holding these very bytes (our upload before a crash) is done."""
    spool = tmp_path / "spool"
    spool.mkdir()
    theirs, ours, again = body("theirs-"), body("ours-"), body("again-")
    taken = "otlp-20261204T100000.000Z-000001.pb"
    s3.pipe_file(f"{prefix}/{taken}", theirs)
    their_etag = s3.info(f"{prefix}/{taken}")["ETag"]
    (spool / taken).write_bytes(ours)
    done = "otlp-20261204T100000.000Z-000002.pb"
    s3.pipe_file(f"{prefix}/{done}", again)  # uploaded, then the collector died before removing the file
    (spool / done).write_bytes(again)
    uploader = Uploader(spool, f"s3://{prefix}")
    assert uploader.upload_pending() == 2 and uploader.last_error is None
    stored = objects(s3, prefix)
    assert stored[taken] == theirs and s3.info(f"{prefix}/{taken}")["ETag"] == their_etag
    [renamed] = [name for name, data in stored.items() if data == ours]
    assert renamed != taken and PAYLOAD_NAME.fullmatch(renamed) and renamed.endswith("-000001.pb")
    assert stored[done] == again and len(stored) == 3, "no second copy of the file uploaded before the crash"
    assert payload_files(spool) == []


def test_a_failed_upload_keeps_the_file_and_is_retried(s3, tmp_path, receivers) -> None:  # noqa: F811
    spool = tmp_path / "spool"
    bucket = "collector-late-bucket"
    receiver = Receiver(ReceiverConfig(drop_dir=spool, port=0, flush_seconds=0, upload_url=f"s3://{bucket}/drops"))
    receivers.append(receiver.start())
    try:
        assert post(receiver.url, body("a-"), PROTO)[0] == 200  # durable in the spool before it is answered
        until(lambda: receiver.health()["lastUploadError"] is not None)
        health = receiver.health()
        assert health["status"] == "degraded" and f"s3://{bucket}/drops" in health["lastUploadError"]
        [kept] = payload_files(spool)
        data = kept.read_bytes()
        s3.mkdir(bucket)
        until(lambda: payload_files(spool) == [])
        assert objects(s3, f"{bucket}/drops") == {kept.name: data}
        assert receiver.health()["status"] == "ok"
    finally:
        if s3.exists(bucket):
            s3.rm(bucket, recursive=True)


def test_the_cli_takes_a_drop_folder_url_with_a_spool_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parse = cli.build_parser().parse_args
    config = build_config(parse(["collector", "--drop-dir", "s3://bucket/drops/", "--spool-dir", str(tmp_path)]))
    assert (config.drop_dir, config.upload_url) == (tmp_path, "s3://bucket/drops")
    monkeypatch.setenv("KVONCE_DROP_DIR", "s3://bucket/other")
    monkeypatch.setenv("KVONCE_COLLECTOR_SPOOL_DIR", str(tmp_path / "spool"))
    config = build_config(parse(["collector"]))
    assert (config.drop_dir, config.upload_url) == (tmp_path / "spool", "s3://bucket/other")
    monkeypatch.delenv("KVONCE_DROP_DIR")
    assert build_config(parse(["collector"])).upload_url is None  # a local drop folder: as before
