"""OTLP/gRPC: the real SDK's gRPC exporter sends to a real receiver on 127.0.0.1 (a free port), and
what it stores is what the HTTP path stores."""

from __future__ import annotations

import gzip
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from kvonce_pipeline.collector import otlp_grpc, otlp_http_server
from kvonce_pipeline.collector.otlp_grpc import METHOD
from kvonce_pipeline.collector.receiver import Receiver

from .test_collector import (
    KV_EVENTS,
    KV_SPANS,
    conformance_events,
    export,
    payload_files,
    sdk_spans,
    spans_in,
    start_receiver,
)

__all__ = ["start_receiver"]  # the fixture, shared with the HTTP tests


def grpc_export(receiver: Receiver, spans: list[Any], *, compression: grpc.Compression | None = None,
                headers: dict[str, str] | None = None) -> SpanExportResult:
    assert receiver.grpc is not None
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{receiver.grpc.port}", insecure=True, compression=compression,
                                headers=headers, timeout=10)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def raw_call(receiver: Receiver, body: bytes, metadata: tuple[tuple[str, str], ...] = ()
             ) -> tuple[grpc.StatusCode, str, bytes | None, tuple[Any, ...]]:
    """One unary call with raw bytes: ``(code, details, reply, trailing metadata)``."""
    assert receiver.grpc is not None
    with grpc.insecure_channel(f"127.0.0.1:{receiver.grpc.port}") as channel:
        call: Callable[..., Any] = channel.unary_unary(METHOD)
        try:
            reply, outcome = call.with_call(body, metadata=metadata, timeout=10)
            return outcome.code(), outcome.details() or "", reply, tuple(outcome.trailing_metadata() or ())
        except grpc.RpcError as error:
            return error.code(), error.details() or "", None, tuple(error.trailing_metadata() or ())


def nothing_stored(drops: Path) -> bool:
    return not drops.exists() or payload_files(drops) == []


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip], ids=["plain", "gzip"])
def test_the_sdks_grpc_exporter_lands_the_same_payload_as_http(start_receiver, tmp_path: Path,
                                                               compression: grpc.Compression | None) -> None:
    receiver = start_receiver(grpc_port=0)
    assert grpc_export(receiver, sdk_spans(KV_SPANS), compression=compression) is SpanExportResult.SUCCESS
    receiver.stop()
    [payload] = payload_files(tmp_path / "drops")
    code, events = conformance_events(payload, tmp_path / "out")
    assert code == 0
    assert [(e["type"], e["key"], e.get("value"), e.get("reason"), e.get("context")) for e in events] == KV_EVENTS


def test_http_and_grpc_share_one_batch_and_one_dedupe(start_receiver, tmp_path: Path) -> None:
    receiver = start_receiver(grpc_port=0)
    spans = sdk_spans(KV_SPANS)
    assert export(receiver.endpoint, spans) is SpanExportResult.SUCCESS
    assert grpc_export(receiver, spans) is SpanExportResult.SUCCESS  # a retry over the other protocol
    receiver.stop()
    assert spans_in(payload_files(tmp_path / "drops")) == len(KV_SPANS)
    assert receiver.health()["spansDuplicate"] == len(KV_SPANS)


def test_a_token_is_checked_in_the_authorization_metadata(start_receiver, tmp_path: Path) -> None:
    receiver = start_receiver(grpc_port=0, token="s3cret")
    body = encode_spans(sdk_spans(KV_SPANS)).SerializeToString()
    code, details, _, _ = raw_call(receiver, body)
    assert code is grpc.StatusCode.UNAUTHENTICATED and "KVONCE_COLLECTOR_TOKEN" in details
    code, _, _, _ = raw_call(receiver, body, (("authorization", "Bearer wrong"),))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert grpc_export(receiver, sdk_spans(KV_SPANS), headers={"authorization": "Bearer s3cret"}) is \
        SpanExportResult.SUCCESS
    receiver.stop()
    assert spans_in(payload_files(tmp_path / "drops")) == len(KV_SPANS)


@pytest.mark.parametrize(("body", "expected"), [
    (b"\x0a\x05\xff\xff", "not a valid OTLP protobuf message"),
    (encode_spans(sdk_spans([("success", "k", {"kvonce.event.type": 5})])).SerializeToString(),
     "attribute kvonce.event.type must be a string"),
], ids=["truncated-protobuf", "bad-attribute"])
def test_undecodable_data_is_invalid_argument_naming_the_problem(start_receiver, tmp_path: Path, body: bytes,
                                                                 expected: str) -> None:
    receiver = start_receiver(grpc_port=0)
    code, details, _, _ = raw_call(receiver, body)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and expected in details, details
    assert receiver.health()["refused"] == {"400": 1}
    receiver.stop()
    assert nothing_stored(tmp_path / "drops")


def test_a_message_above_the_body_cap_is_refused_by_size_after_decompression(start_receiver, tmp_path: Path) -> None:
    receiver = start_receiver(grpc_port=0, max_body_bytes=64 * 1024)
    many = sdk_spans([("success", f"k{n}", {"kvonce.event.value": "v" * 200}) for n in range(600)])
    body = encode_spans(many).SerializeToString()
    assert len(body) > 64 * 1024 > len(gzip.compress(body))
    assert grpc_export(receiver, many, compression=grpc.Compression.Gzip) is SpanExportResult.FAILURE
    receiver.stop()
    assert nothing_stored(tmp_path / "drops")


def test_spans_without_kvonce_attributes_get_a_partial_success_note(start_receiver) -> None:
    receiver = start_receiver(grpc_port=0)
    body = encode_spans(sdk_spans([], foreign=2)).SerializeToString()
    code, _, reply, _ = raw_call(receiver, body)
    assert code is grpc.StatusCode.OK and reply is not None
    response = ExportTraceServiceResponse.FromString(reply)
    assert response.partial_success.rejected_spans == 0
    assert "none an event of an installed domain" in response.partial_success.error_message


def test_an_unwritable_drop_folder_is_unavailable_with_a_retry_delay(start_receiver, tmp_path: Path) -> None:
    """UNAVAILABLE is the code OTLP clients retry, after the RetryInfo delay."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the drop folder should be")
    receiver = start_receiver(drop_dir=blocked, flush_seconds=0, grpc_port=0)
    code, details, _, trailers = raw_call(receiver, encode_spans(sdk_spans(KV_SPANS)).SerializeToString())
    assert code is grpc.StatusCode.UNAVAILABLE and "cannot write to the drop folder" in details
    [info] = [value for key, value in trailers if key == "google.rpc.retryinfo-bin"]
    assert RetryInfo.FromString(info).retry_delay.seconds >= 1
    assert receiver.spans_accepted == 0


# --- connections: the same cap and deadline as OTLP/HTTP ------------------------------------------

def _closed_by_server(conn: socket.socket, within: float) -> bool:
    """Does the server close ``conn`` within ``within`` seconds? (What it sends first, its own
    HTTP/2 settings, is read and ignored.)"""
    deadline = time.monotonic() + within
    try:
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            if conn.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        pass
    return False


def test_a_connection_that_never_handshakes_is_closed_at_the_deadline(start_receiver,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_grpc, "HANDSHAKE_SECONDS", 1.0)
    receiver = start_receiver(grpc_port=0)
    assert receiver.grpc is not None
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", receiver.grpc.port), timeout=10) as silent:
        assert _closed_by_server(silent, 8.0), "a silent connection is not held past the handshake deadline"
    assert time.monotonic() - started < 8.0
    assert grpc_export(receiver, sdk_spans(KV_SPANS)) == SpanExportResult.SUCCESS


def test_grpc_connections_beyond_the_cap_are_closed_at_once(start_receiver,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_http_server, "MAX_CONNECTIONS", 3)
    receiver = start_receiver(grpc_port=0)
    assert receiver.grpc is not None
    address = ("127.0.0.1", receiver.grpc.port)
    held = [socket.create_connection(address, timeout=10) for _ in range(3)]
    try:
        time.sleep(0.3)
        with socket.create_connection(address, timeout=10) as extra:
            assert _closed_by_server(extra, 5.0), "one connection more than the cap is closed"
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.5)
    assert grpc_export(receiver, sdk_spans(KV_SPANS)) == SpanExportResult.SUCCESS
