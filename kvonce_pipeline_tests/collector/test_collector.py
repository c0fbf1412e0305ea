"""``kvonce collector``: the OTLP/HTTP receiver, exercised with real parts.

The real OpenTelemetry SDK and ``OTLPSpanExporter`` send to a real receiver on 127.0.0.1 (ephemeral
port); error statuses come from real HTTP requests; the shutdown guarantee is checked on a real
``kvonce collector`` process with real signals. Every receiver a test starts, it stops.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kvonce_pipeline import cli
from kvonce_pipeline.collector.collector import build_config
from kvonce_pipeline.collector.drop_batch import payload_name
from kvonce_pipeline.collector.otlp_http import HttpError, decompress
from kvonce_pipeline.domains.kvonce.reader import read_trace
from kvonce_pipeline.collector.receiver import Receiver, ReceiverConfig

from ..conftest import SAMPLES, VENV_BIN

PAYLOAD_NAME = re.compile(r"^otlp-\d{8}T\d{6}\.\d{3}Z-\d{6}\.pb$")
BASE_NS = 1_759_557_600_000_000_000  # 2025-10-04T06:00:00Z

#: (type, key, extra attributes): a valid KvOnce run with retries, attempt contexts and a duplicate.
KV_SPANS: list[tuple[str, str, dict[str, Any]]] = [
    ("success", "alpha", {"kvonce.event.value": "v1", "kvonce.event.context.attempt": 1}),
    ("retry", "beta", {"kvonce.event.context.attempt": 1}),
    ("retry", "beta", {"kvonce.event.context.attempt": 2}),
    ("success", "beta", {"kvonce.event.value": "v2", "kvonce.event.context.attempt": 3}),
    ("failure", "alpha", {"kvonce.event.reason": "duplicate"}),
]
#: What ``kvonce conformance`` reads back from KV_SPANS: (type, key, value, reason, context).
KV_EVENTS = [
    ("success", "alpha", "v1", None, {"attempt": 1}),
    ("retry", "beta", None, None, {"attempt": 1}),
    ("retry", "beta", None, None, {"attempt": 2}),
    ("success", "beta", "v2", None, {"attempt": 3}),
    ("failure", "alpha", None, "duplicate", None),
]


# -- helpers ---------------------------------------------------------------------------------
def sdk_spans(specs: list[tuple[str, str, dict[str, Any]]], *, key_prefix: str = "",
              foreign: int = 0) -> list[ReadableSpan]:
    """Spans made by the real SDK (real random ids), ``foreign`` of them without kvonce attributes."""
    provider = TracerProvider(resource=Resource.create({"service.name": "kvonce-writer"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("kvonce.tests")
    for offset, (event_type, key, extra) in enumerate(specs):
        start = BASE_NS + offset * 1_000_000
        attributes = {"kvonce.event.type": event_type, "kvonce.event.key": key_prefix + key, **extra}
        tracer.start_span(f"kvonce.{event_type}", start_time=start, attributes=attributes).end(start + 1000)
    for n in range(foreign):
        tracer.start_span(f"GET /items/{n}", attributes={"http.request.method": "GET"}).end()
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans


def export(endpoint: str, spans: list[ReadableSpan], *, compression: Compression = Compression.NoCompression,
           headers: dict[str, str] | None = None) -> SpanExportResult:
    """One export through the real OTLP/HTTP exporter."""
    exporter = OTLPSpanExporter(endpoint=endpoint, compression=compression, headers=headers, timeout=10)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def post(url: str, body: bytes, headers: dict[str, str] | None = None, *, method: str = "POST",
         path: str = "/v1/traces") -> tuple[int, http.client.HTTPMessage, bytes]:
    """A raw HTTP request with http.client; returns ``(status, headers, body)``."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, path, body=body if method in ("POST", "PUT") else None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def spans_in(files: list[Path]) -> int:
    total = 0
    for path in files:
        message = ExportTraceServiceRequest.FromString(path.read_bytes())
        total += sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
    return total


def payload_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def conformance_events(payload: Path, out: Path) -> tuple[int, list[dict[str, Any]]]:
    """Run ``kvonce conformance`` on a payload; returns the exit code and the events it read."""
    code = cli.main(["conformance", "--input", str(payload), "--output-dir", str(out)])
    events = [json.loads(line) for line in (out / "kvonce-events.ndjson").read_text().splitlines()]
    return code, events


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    """Start receivers on 127.0.0.1:0 writing to ``tmp_path/drops``; all are stopped afterwards."""
    started: list[Receiver] = []

    def start(**overrides: Any) -> Receiver:
        settings: dict[str, Any] = {"drop_dir": tmp_path / "drops", "host": "127.0.0.1", "port": 0,
                                    "flush_seconds": 3600.0}
        settings.update(overrides)
        receiver = Receiver(ReceiverConfig(**settings)).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        try:
            receiver.stop()
        except Exception:  # a test that broke the drop folder on purpose
            pass


# -- the real exporter -----------------------------------------------------------------------
@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate],
                         ids=["plain", "gzip", "deflate"])
def test_real_exporter_payload_passes_conformance(start_receiver, tmp_path: Path, compression: Compression) -> None:
    receiver = start_receiver()
    assert export(receiver.endpoint, sdk_spans(KV_SPANS), compression=compression) is SpanExportResult.SUCCESS
    receiver.stop()

    files = payload_files(tmp_path / "drops")
    assert len(files) == 1 and PAYLOAD_NAME.match(files[0].name), files
    code, events = conformance_events(files[0], tmp_path / "out")
    assert code == 0
    assert [(e["type"], e["key"], e.get("value"), e.get("reason"), e.get("context")) for e in events] == KV_EVENTS
    assert all(re.fullmatch(r"[0-9a-f]{32}", e["traceId"]) and e["actor"] == "kvonce-writer" for e in events)


def test_violating_run_is_collected_and_reported(start_receiver, tmp_path: Path) -> None:
    """The receiver keeps what it is sent; judging is the pipeline's job (exit 1, not 400)."""
    receiver = start_receiver()
    twice = [("success", "k", {"kvonce.event.value": "a"}), ("success", "k", {"kvonce.event.value": "b"})]
    assert export(receiver.endpoint, sdk_spans(twice)) is SpanExportResult.SUCCESS
    receiver.stop()
    code, _ = conformance_events(payload_files(tmp_path / "drops")[0], tmp_path / "out")
    assert code == 1


def test_json_request_keeps_hex_ids(start_receiver, tmp_path: Path) -> None:
    """OTLP/JSON ids are hex: converted to protobuf they must still be the same ids."""
    receiver = start_receiver()
    sample = SAMPLES / "kvonce-otlp.json"
    status, headers, body = post(receiver.url, sample.read_bytes(), {"Content-Type": "application/json"})
    assert (status, headers["Content-Type"], json.loads(body)) == (200, "application/json", {})
    receiver.stop()

    collected = read_trace(payload_files(tmp_path / "drops")[0])
    original = read_trace(sample)
    assert [e.to_json() for e in collected.events] == [e.to_json() for e in original.events]


def test_protobuf_response_is_an_export_response(start_receiver) -> None:
    receiver = start_receiver()
    body = encode_spans(sdk_spans(KV_SPANS)).SerializeToString()
    status, headers, reply = post(receiver.url, body, {"Content-Type": "application/x-protobuf"})
    assert status == 200 and headers["Content-Type"] == "application/x-protobuf"
    assert not ExportTraceServiceResponse.FromString(reply).HasField("partial_success")


def test_a_leading_unknown_field_cannot_make_the_payload_unreadable(start_receiver, tmp_path: Path) -> None:
    """Unknown fields are legal protobuf; a file must still start with resourceSpans to be read."""
    receiver = start_receiver()
    body = b"\x78\x01" + encode_spans(sdk_spans(KV_SPANS)).SerializeToString()  # field 15 = 1 first
    assert post(receiver.url, body, {"Content-Type": "application/x-protobuf"})[0] == 200
    receiver.stop()
    assert len(read_trace(payload_files(tmp_path / "drops")[0]).events) == len(KV_SPANS)


def test_chunked_bodies_are_read_and_a_missing_length_gets_411(start_receiver, tmp_path: Path) -> None:
    receiver = start_receiver()
    body = encode_spans(sdk_spans(KV_SPANS)).SerializeToString()
    connection = http.client.HTTPConnection("127.0.0.1", receiver.address[1], timeout=10)
    try:
        connection.request("POST", "/v1/traces", body=iter([body[:10], body[10:]]), encode_chunked=True,
                           headers={"Content-Type": "application/x-protobuf", "Transfer-Encoding": "chunked"})
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    connection = http.client.HTTPConnection("127.0.0.1", receiver.address[1], timeout=10)
    try:
        connection.putrequest("POST", "/v1/traces")
        connection.putheader("Content-Type", "application/x-protobuf")
        connection.endheaders()
        assert connection.getresponse().status == 411
    finally:
        connection.close()
    receiver.stop()
    assert spans_in(payload_files(tmp_path / "drops")) == len(KV_SPANS)


# -- partial success and duplicates ----------------------------------------------------------
def test_spans_without_kvonce_attributes_are_accepted_and_kept(start_receiver, tmp_path: Path) -> None:
    """Not rejected (rejected_spans 0): stored as sent, with a warning when a request has no events."""
    receiver = start_receiver()
    only_foreign = encode_spans(sdk_spans([], foreign=3)).SerializeToString()
    status, _, reply = post(receiver.url, only_foreign, {"Content-Type": "application/x-protobuf"})
    response = ExportTraceServiceResponse.FromString(reply)
    assert status == 200 and response.HasField("partial_success")
    assert response.partial_success.rejected_spans == 0
    assert "none an event of an installed domain" in response.partial_success.error_message
    assert "kvonce.event.type or inventory.event.type" in response.partial_success.error_message

    mixed = encode_spans(sdk_spans(KV_SPANS, foreign=2)).SerializeToString()
    status, _, reply = post(receiver.url, mixed, {"Content-Type": "application/x-protobuf"})
    assert status == 200 and not ExportTraceServiceResponse.FromString(reply).HasField("partial_success")
    receiver.stop()

    files = payload_files(tmp_path / "drops")
    assert spans_in(files) == 3 + len(KV_SPANS) + 2
    trace = read_trace(files[0])
    assert (len(trace.events), trace.stats.skipped_spans) == (len(KV_SPANS), 5)


def _inventory_spans(key: Any = "sku-1") -> list[ReadableSpan]:
    """Inventory events by the real SDK: a projection and an allocation of ``key``."""
    provider = TracerProvider(resource=Resource.create({"service.name": "stock"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("inventory.tests")
    for offset, (kind, extra) in enumerate([("projection", {"inventory.event.state": '{"onHand": 5}'}),
                                            ("allocation", {"inventory.event.delta": '{"allocated": 2}'})]):
        start = BASE_NS + offset * 1_000_000
        tracer.start_span(f"inventory.{kind}", start_time=start,
                          attributes={"inventory.event.type": kind, "inventory.event.key": key, **extra}).end(start + 1)
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans


def test_another_domains_spans_are_events_and_are_validated_as_such(start_receiver, tmp_path: Path) -> None:
    """Inventory's spans are events (no "none an event" note) and are read back as Inventory's; one no
    reader could read (an array as the key) is a 400 naming the span, and nothing is stored for it."""
    from kvonce_pipeline.engine import registry
    from kvonce_pipeline.engine.domain_decode import read_domain_events

    receiver = start_receiver()
    good = encode_spans(_inventory_spans()).SerializeToString()
    status, _, reply = post(receiver.url, good, {"Content-Type": "application/x-protobuf"})
    assert status == 200 and not ExportTraceServiceResponse.FromString(reply).HasField("partial_success")
    bad = encode_spans(_inventory_spans(key=("a", "b"))).SerializeToString()
    status, _, reply = post(receiver.url, bad, {"Content-Type": "application/x-protobuf"})
    error = Status.FromString(reply).message
    assert status == 400 and "inventory.event.key" in error and "span r0/s0/p0" in error
    receiver.stop()
    files = payload_files(tmp_path / "drops")
    assert spans_in(files) == 2  # the good request only
    read = read_domain_events(files[0], [registry.get("inventory")])
    assert [(e.type, e.key) for e in read.events["inventory"]] == [("projection", "sku-1"), ("allocation", "sku-1")]


def test_a_resent_request_is_stored_once(start_receiver, tmp_path: Path) -> None:
    """An exporter retry of an accepted request must not turn into a second success."""
    receiver = start_receiver()
    spans = sdk_spans(KV_SPANS)
    body = encode_spans(spans).SerializeToString()
    for _ in range(2):
        assert post(receiver.url, body, {"Content-Type": "application/x-protobuf"})[0] == 200
    # the same spans plus one new one: only the new one is stored
    extra = sdk_spans([("success", "gamma", {"kvonce.event.value": "v3"})])
    assert export(receiver.endpoint, spans + extra) is SpanExportResult.SUCCESS
    receiver.stop()

    assert receiver.spans_duplicate == 2 * len(KV_SPANS)
    files = payload_files(tmp_path / "drops")
    assert spans_in(files) == len(KV_SPANS) + 1
    code, events = conformance_events(files[0], tmp_path / "out")
    assert code == 0 and [e["key"] for e in events].count("alpha") == 2


# -- error statuses, each with a real request ------------------------------------------------
def _status_message(reply: bytes, content_type: str) -> str:
    if content_type == "application/x-protobuf":
        return Status.FromString(reply).message
    return json.loads(reply)["message"]


@pytest.mark.parametrize(
    ("content_type", "encoding", "body", "expected"),
    [
        ("application/x-protobuf", None, b"\x0a\xff\xff\xff", "not a valid OTLP protobuf message"),
        ("application/json", None, b'{"resourceSpans": [', "not valid JSON"),
        ("application/json", None,
         b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz","spanId":"a1b2c3d4e5f60001",'
         b'"attributes":[{"key":"kvonce.event.type","value":{"stringValue":"success"}}]}]}]}]}',
         "traceId 'xyz' is not 32 hex digits: payload files hold OTLP protobuf"),
        ("application/json", None,
         b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":['
         b'{"key":"kvonce.event.type","value":{"intValue":"7"}},'
         b'{"key":"kvonce.event.key","value":{"stringValue":"k"}}]}]}]}]}',
         "attribute kvonce.event.type must be a string"),
        ("application/json", "gzip", b"this is not gzip", "not valid gzip data"),
        ("application/x-protobuf", "gzip", gzip.compress(b"\x0a\x00" * 100)[:-12], "truncated"),
    ],
    ids=["bad-protobuf", "bad-json", "bad-trace-id", "non-string-type", "bad-gzip", "truncated-gzip"],
)
def test_undecodable_data_gets_400_naming_the_problem(start_receiver, tmp_path: Path, content_type: str,
                                                      encoding: str | None, body: bytes, expected: str) -> None:
    receiver = start_receiver()
    headers = {"Content-Type": content_type, **({"Content-Encoding": encoding} if encoding else {})}
    status, reply_headers, reply = post(receiver.url, body, headers)
    assert status == 400
    assert reply_headers["Content-Type"] == content_type  # the answer in the request's encoding
    message = _status_message(reply, content_type)
    assert expected in message and "request #" in message
    receiver.stop()
    drops = tmp_path / "drops"
    assert not drops.exists() or payload_files(drops) == []


def test_settings_come_from_options_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parse = cli.build_parser().parse_args
    monkeypatch.setenv("KVONCE_DROP_DIR", str(tmp_path / "env-drops"))
    monkeypatch.setenv("KVONCE_MAX_BODY_BYTES", "12345")
    config = build_config(parse(["collector"]))
    assert (config.drop_dir, config.max_body_bytes, config.host, config.port, config.grpc_port, config.token) == (
        tmp_path / "env-drops", 12345, "127.0.0.1", 4318, 4317, None)
    config = build_config(parse(["collector", "--drop-dir", str(tmp_path / "d"), "--max-body-mib", "2", "--no-grpc"]))
    assert (config.drop_dir, config.max_body_bytes, config.grpc_port) == (tmp_path / "d", 2 * 1024 * 1024, None)
    monkeypatch.setenv("KVONCE_MAX_REQUEST_BYTES", "1MiB")  # the request cap's own variable wins
    assert build_config(parse(["collector"])).max_body_bytes == 1024 * 1024
    monkeypatch.delenv("KVONCE_MAX_REQUEST_BYTES")
    monkeypatch.delenv("KVONCE_MAX_BODY_BYTES")
    assert build_config(parse(["collector"])).max_body_bytes == 20 * 1024 * 1024  # the OTel Collector's default


def test_401_without_the_bearer_token(start_receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVONCE_COLLECTOR_TOKEN", "s3cret")
    config = build_config(cli.build_parser().parse_args(["collector"]))
    assert config.token == "s3cret"
    receiver = start_receiver(token=config.token)
    body = encode_spans(sdk_spans(KV_SPANS)).SerializeToString()
    proto = {"Content-Type": "application/x-protobuf"}

    status, headers, _ = post(receiver.url, body, proto)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert post(receiver.url, body, {**proto, "Authorization": "Bearer wrong"})[0] == 401
    assert export(receiver.endpoint, sdk_spans(KV_SPANS)) is SpanExportResult.FAILURE
    assert export(receiver.endpoint, sdk_spans(KV_SPANS),
                  headers={"Authorization": "Bearer s3cret"}) is SpanExportResult.SUCCESS
    assert receiver.refused[401] == 3


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_405_for_other_methods(start_receiver, method: str) -> None:
    receiver = start_receiver()
    status, headers, _ = post(receiver.url, b"{}", {"Content-Type": "application/json"}, method=method)
    assert status == 405 and headers["Allow"] == "POST"


def test_404_for_other_paths(start_receiver) -> None:
    receiver = start_receiver()
    assert post(receiver.url, b"{}", {"Content-Type": "application/json"}, path="/v1/metrics")[0] == 404


def test_413_past_the_size_limit(start_receiver) -> None:
    receiver = start_receiver(max_body_bytes=64 * 1024)
    status, _, reply = post(receiver.url, b" " * (64 * 1024 + 1), {"Content-Type": "application/json"})
    assert status == 413 and "exceeds the limit" in json.loads(reply)["message"]


def test_413_for_a_gzip_bomb_after_decompression(start_receiver) -> None:
    """8 MiB of zeros gzip to ~8 KiB: under the limit on the wire, refused once inflated past it."""
    receiver = start_receiver(max_body_bytes=1024 * 1024)
    bomb = gzip.compress(bytes(8 * 1024 * 1024))
    assert len(bomb) < 1024 * 1024
    status, _, reply = post(receiver.url, bomb, {"Content-Type": "application/x-protobuf",
                                                 "Content-Encoding": "gzip"})
    assert status == 413 and "after gzip decompression" in Status.FromString(reply).message


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Content-Type": "text/plain"}, "unsupported Content-Type 'text/plain'"),
    ({}, "unsupported Content-Type '(none)'"),
    ({"Content-Type": "application/json", "Content-Encoding": "br"}, "unsupported Content-Encoding 'br'"),
], ids=["text-plain", "no-content-type", "brotli"])
def test_415_for_other_media_types_and_codings(start_receiver, headers: dict[str, str], expected: str) -> None:
    receiver = start_receiver()
    status, _, reply = post(receiver.url, b"{}", headers)
    assert status == 415 and expected in json.loads(reply)["message"]


def test_health_endpoint(start_receiver) -> None:
    receiver = start_receiver()
    assert export(receiver.endpoint, sdk_spans(KV_SPANS)) is SpanExportResult.SUCCESS
    status, headers, body = post(receiver.url, b"", method="GET", path="/health")
    health = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert (health["status"], health["spansAccepted"], health["spansPending"]) == ("ok", len(KV_SPANS), len(KV_SPANS))


# -- flushing and durability -----------------------------------------------------------------
def test_timer_flush_writes_whole_files(start_receiver, tmp_path: Path) -> None:
    receiver = start_receiver(flush_seconds=0.1)
    for n in range(3):
        assert export(receiver.endpoint, sdk_spans(KV_SPANS, key_prefix=f"r{n}-")) is SpanExportResult.SUCCESS
    deadline = time.monotonic() + 20
    while receiver.batcher.spans_written < 3 * len(KV_SPANS) and time.monotonic() < deadline:
        time.sleep(0.05)
    files = payload_files(tmp_path / "drops")
    assert spans_in(files) == 3 * len(KV_SPANS)  # written by the timer, before any stop
    assert all(PAYLOAD_NAME.match(p.name) for p in files)
    assert not [p for p in (tmp_path / "drops").iterdir() if p.name.endswith(".tmp")]


def test_flush_seconds_zero_writes_before_acknowledging(start_receiver, tmp_path: Path) -> None:
    receiver = start_receiver(flush_seconds=0)
    assert export(receiver.endpoint, sdk_spans(KV_SPANS)) is SpanExportResult.SUCCESS
    assert spans_in(payload_files(tmp_path / "drops")) == len(KV_SPANS)  # no stop, no wait


def test_unwritable_drop_folder_gets_503_not_200(start_receiver, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the drop folder should be")
    receiver = start_receiver(drop_dir=blocked, flush_seconds=0)
    body = encode_spans(sdk_spans(KV_SPANS)).SerializeToString()
    status, headers, reply = post(receiver.url, body, {"Content-Type": "application/x-protobuf"})
    assert status == 503 and headers["Retry-After"] == "2"
    assert "cannot write to the drop folder" in Status.FromString(reply).message
    health_status, _, health = post(receiver.url, b"", method="GET", path="/health")
    assert health_status == 503 and json.loads(health)["status"] == "degraded"
    assert receiver.spans_accepted == 0


def test_acknowledged_spans_survive_a_failing_drop_folder(start_receiver, tmp_path: Path) -> None:
    """A batch that cannot be written stays in memory (and in its journal); new data gets 503 until
    the folder is back."""
    drops = tmp_path / "drops"
    receiver = start_receiver(drop_dir=drops)
    first = encode_spans(sdk_spans(KV_SPANS)).SerializeToString()
    assert post(receiver.url, first, {"Content-Type": "application/x-protobuf"})[0] == 200
    moved = tmp_path / "drops-away"
    drops.rename(moved)  # the open journal moves with it; payload files cannot be written
    drops.write_text("a file where the drop folder should be")
    assert receiver.batcher.flush() == [] and not receiver.batcher.healthy
    assert json.loads(post(receiver.url, b"", method="GET", path="/health")[2])["status"] == "degraded"
    second = encode_spans(sdk_spans(KV_SPANS, key_prefix="late-")).SerializeToString()
    assert post(receiver.url, second, {"Content-Type": "application/x-protobuf"})[0] == 503

    drops.unlink()
    moved.rename(drops)
    assert len(receiver.batcher.flush()) == 1 and receiver.batcher.healthy
    assert post(receiver.url, second, {"Content-Type": "application/x-protobuf"})[0] == 200  # the retry
    receiver.stop()
    assert spans_in(payload_files(drops)) == 2 * len(KV_SPANS)
    assert sorted(p.name for p in drops.iterdir() if p.name.startswith(".")) == []  # journals deleted


def test_concurrent_exporters_lose_nothing(start_receiver, tmp_path: Path) -> None:
    receiver = start_receiver(flush_seconds=0.05)
    results: list[SpanExportResult] = []

    def client(n: int) -> None:
        exporter = OTLPSpanExporter(endpoint=receiver.endpoint, timeout=10)
        for batch in range(10):
            results.append(exporter.export(sdk_spans(KV_SPANS, key_prefix=f"c{n}-b{batch}-")))
        exporter.shutdown()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    receiver.stop()
    assert results.count(SpanExportResult.SUCCESS) == 40
    assert spans_in(payload_files(tmp_path / "drops")) == receiver.spans_accepted == 40 * len(KV_SPANS)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_flushes_the_open_batch(tmp_path: Path, signum: int) -> None:
    """A real ``kvonce collector`` process: what it acknowledged is on disk after the signal."""
    drops = tmp_path / "drops"
    drops.mkdir()
    stale = drops / ".otlp-20250101T000000.000Z-000001.pb.999999999.abc123.tmp"  # a killed writer's
    stale.write_bytes(b"\x0a\x02half")
    process = subprocess.Popen(
        [str(VENV_BIN / "kvonce"), "collector", "--port", "0", "--grpc-port", "0", "--drop-dir", str(drops),
         "--flush-seconds", "3600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+/v1/traces), OTLP/gRPC on http://(127\.0\.0\.1:\d+)",
                          line)
        assert match, line + process.stderr.read()
        assert export(match.group(1), sdk_spans(KV_SPANS[:3])) is SpanExportResult.SUCCESS
        grpc_exporter = GrpcSpanExporter(endpoint=match.group(2), insecure=True, timeout=10)
        try:  # the rest over OTLP/gRPC, into the same open batch
            assert grpc_exporter.export(sdk_spans(KV_SPANS[3:])) is SpanExportResult.SUCCESS
        finally:
            grpc_exporter.shutdown()
        assert payload_files(drops) == []  # still in the open batch
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert not stale.exists() and "removed 1 temporary file(s)" in stderr
    files = payload_files(drops)
    assert len(files) == 1 and spans_in(files) == len(KV_SPANS)
    assert f"{len(KV_SPANS)} spans accepted, {len(KV_SPANS)} written in 1 files" in stderr
    assert conformance_events(files[0], tmp_path / "out")[0] == 0


def test_cli_refuses_a_bad_port_and_an_unusable_drop_folder(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["collector", "--port", "70000"]) == 2
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert cli.main(["collector", "--port", "0", "--drop-dir", str(blocked / "drops")]) == 2
    assert "cannot use the drop folder" in capsys.readouterr().err


def test_a_drop_folder_url_without_a_spool_folder_is_refused_clearly_not_made_a_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The collector writes files before it uploads them: ``s3://b/d`` must not become ``./s3:/b/d``."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["collector", "--port", "0", "--drop-dir", "s3://bucket/drops"]) == 2
    assert "the drop folder s3://bucket/drops is a URL: the collector writes payload files into a local folder " \
        "first and uploads each finished one; give that folder with --spool-dir" in capsys.readouterr().err
    monkeypatch.setenv("KVONCE_DROP_DIR", "s3://bucket/drops/")
    assert cli.main(["collector", "--port", "0"]) == 2
    assert "is a URL" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- units the statuses rest on ----------------------------------------------------------------
def test_decompress_reads_concatenated_gzip_members_and_deflate() -> None:
    assert decompress(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 100) == b"abcd"
    assert decompress(zlib.compress(b"xyz"), "deflate", 100) == b"xyz"
    with pytest.raises(HttpError) as excinfo:
        decompress(gzip.compress(b"a" * 101), "gzip", 100)
    assert excinfo.value.status == 413


def test_payload_names_sort_by_time_then_sequence() -> None:
    names = [payload_name(BASE_NS + 1_000_000, 2), payload_name(BASE_NS, 1), payload_name(BASE_NS + 1_000_000, 1)]
    assert sorted(names) == [payload_name(BASE_NS, 1), payload_name(BASE_NS + 1_000_000, 1),
                             payload_name(BASE_NS + 1_000_000, 2)]
    assert payload_name(BASE_NS, 1) == "otlp-20251004T060000.000Z-000001.pb"


@pytest.mark.parametrize("raw", ["  s3cret  ", "s3cret\n", "\ts3cret\r\n"])
def test_a_token_from_the_environment_is_trimmed(start_receiver, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """``export KVONCE_COLLECTOR_TOKEN="$(cat token)"`` keeps a newline: the exporter's token must still match."""
    monkeypatch.setenv("KVONCE_COLLECTOR_TOKEN", raw)
    config = build_config(cli.build_parser().parse_args(["collector"]))
    assert config.token == "s3cret"
    receiver = start_receiver(token=config.token)
    body = encode_spans(sdk_spans(KV_SPANS)).SerializeToString()
    assert post(receiver.url, body, {"Content-Type": "application/x-protobuf",
                                     "Authorization": "Bearer s3cret"})[0] == 200


def test_a_token_with_inner_white_space_is_refused_at_start_up(tmp_path: Path) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "kvonce"), "collector", "--drop-dir", str(tmp_path),
                           "--port", "0"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KVONCE_COLLECTOR_TOKEN": "two words"})
    assert done.returncode != 0
    assert "KVONCE_COLLECTOR_TOKEN contains white space" in done.stderr
