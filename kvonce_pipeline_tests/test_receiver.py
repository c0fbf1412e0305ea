"""The HTTP receiver under attack, as a hostile client on loopback would try it: each case is a real
socket against a real receiver, with bounded waits."""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from kvonce_pipeline import receiver as receiver_module
from kvonce_pipeline.otlp_http import MAX_GZIP_MEMBERS, HttpError, decompress
from kvonce_pipeline.receiver import Receiver

from .conftest import VENV_BIN
from .test_collector import KV_SPANS, payload_files, post, sdk_spans, start_receiver

__all__ = ["start_receiver"]


def raw(receiver: Receiver, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data`` as is and read until the server closes or stays silent for a moment."""
    host, port = receiver.address
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(data)
        conn.settimeout(2.0)
        reply = b""
        try:
            while block := conn.recv(65536):
                reply += block
        except (TimeoutError, ConnectionResetError):
            pass
    return reply


def statuses(reply: bytes) -> list[int]:
    return [int(line.split()[1]) for line in reply.split(b"\r\n") if line.startswith(b"HTTP/1.")]


BODY = encode_spans(sdk_spans(KV_SPANS)).SerializeToString()
HEAD = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"


@pytest.mark.parametrize("size", [b"-1", b"-2", b"0x10", b"+a", b"1_0", b" ", b"fffffffffffffffff"])
def test_a_chunk_size_that_is_not_hex_digits_is_400_and_reads_nothing_more(start_receiver, size: bytes) -> None:
    receiver = start_receiver()
    reply = raw(receiver, HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + b"x" * 4096)
    assert statuses(reply) == [400] and b"chunk size" in reply


@pytest.mark.parametrize(("headers", "status"), [
    (b"Content-Length: 4\r\nContent-Length: 5\r\n", 400),
    (b"Content-Length: 4\r\nContent-Length: 4\r\n", 400),
    (b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"Content-Length: +4\r\n", 400),
    (b"Content-Length: 4_0\r\n", 400),
    (b"Content-Length: -4\r\n", 400),
    (b"Transfer-Encoding: xchunked\r\n", 501),
    (b"Transfer-Encoding: gzip, chunked\r\n", 501),
], ids=["two-lengths", "repeated-length", "length-and-chunked", "plus-sign", "underscore", "negative",
        "xchunked", "gzip-chunked"])
def test_every_smuggling_shape_is_refused_and_the_hidden_request_never_answered(start_receiver, headers: bytes,
                                                                               status: int) -> None:
    receiver = start_receiver()
    hidden = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    request = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n" + headers + b"\r\n"
    reply = raw(receiver, request + b"abcd" + hidden)
    assert statuses(reply) == [status], reply[:300]  # one answer: the smuggled GET is never read
    assert receiver.health()["requestsAccepted"] == 0


def test_a_request_without_host_is_400(start_receiver) -> None:
    receiver = start_receiver()
    reply = raw(receiver, b"POST /v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\n"
                          b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
    assert statuses(reply) == [400] and b"Host" in reply


def test_many_gzip_members_cost_linear_time_and_are_capped() -> None:
    empty = gzip.compress(b"")
    for members in (MAX_GZIP_MEMBERS // 2, MAX_GZIP_MEMBERS):
        assert decompress(empty * members, "gzip", 1 << 20) == b""
    started = time.process_time()
    with pytest.raises(HttpError) as refused:
        decompress(empty * 300_000, "gzip", 20 << 20)  # 6 MB of empty members: 29 s of CPU before
    assert refused.value.status == 400 and "gzip members" in refused.value.message
    assert time.process_time() - started < 1.0
    data = bytes(range(256)) * 20_000
    one_by_one = b"".join(gzip.compress(data[i:i + 5000]) for i in range(0, len(data), 5000))
    assert decompress(one_by_one, "gzip", 20 << 20) == data  # legitimate members, across slice edges


def test_the_compression_ratio_limit_applies_to_requests(start_receiver) -> None:
    receiver = start_receiver(max_compression_ratio=50)
    bomb = gzip.compress(b"\n" * (16 << 20))
    status, _, reply = post(receiver.url, bomb, {"Content-Type": "application/x-protobuf",
                                                 "Content-Encoding": "gzip"})
    assert status == 413 and b"KVONCE_MAX_COMPRESSION_RATIO" in reply


def test_slowloris_connections_are_cut_at_the_header_deadline_and_health_stays_reachable(
        start_receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(receiver_module, "HEADER_SECONDS", 2.0)
    receiver = start_receiver()
    host, port = receiver.address
    slow = []
    for _ in range(20):
        conn = socket.create_connection((host, port), timeout=10)
        conn.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")
        slow.append(conn)
    try:
        deadline = time.monotonic() + 8
        for _ in range(3):  # a header byte now and then, as slowloris does
            time.sleep(1.0)
            for conn in slow:
                try:
                    conn.sendall(b"X")
                except OSError:
                    pass
        status, _, _ = post(receiver.url, b"", method="GET", path="/health")
        assert status == 200
        closed = 0
        for conn in slow:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                closed += conn.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 1
        assert closed == len(slow), "every slow connection was cut at its header deadline"
    finally:
        for conn in slow:
            conn.close()


def test_connections_beyond_the_cap_get_503_at_once(start_receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(receiver_module, "MAX_CONNECTIONS", 4)
    receiver = start_receiver()
    host, port = receiver.address
    held = [socket.create_connection((host, port), timeout=10) for _ in range(4)]
    try:
        time.sleep(0.3)
        reply = raw(receiver, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert statuses(reply) == [503]
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.5)
    assert statuses(raw(receiver, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")) == [200]


def test_auth_is_checked_before_the_body_is_read(start_receiver, tmp_path: Path) -> None:
    receiver = start_receiver(token="s3cret")
    started = time.monotonic()
    reply = raw(receiver, HEAD + b"Content-Length: 100000000\r\n\r\n" + b"x" * 1000)
    assert statuses(reply) == [401] and time.monotonic() - started < 5
    assert not (tmp_path / "drops").exists() or payload_files(tmp_path / "drops") == []


# --- a full disk: health tells the truth, refused requests leave nothing behind -------------------

from .test_faults import needs_unshare  # noqa: E402  (the same private-mount check as the CLI's disk tests)


def _collector_on_tiny_tmpfs(drops: Path) -> tuple[subprocess.Popen[str], str]:
    """A real ``kvonce collector`` in a private mount namespace whose drop folder is a 96 KiB tmpfs."""
    drops.mkdir()
    command = (f"mount -t tmpfs -o size=96k kvonce-drops {drops} && exec {VENV_BIN / 'kvonce'} collector "
               f"--port 0 --no-grpc --drop-dir {drops} --flush-seconds 3600")
    process = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = process.stdout.readline()
    match = re.search(r"listening on (http://127\.0\.0\.1:\d+)/v1/traces", line)
    if not match:
        process.kill()
        raise AssertionError(line + process.communicate()[1])
    return process, match.group(1)


@needs_unshare
def test_a_full_disk_turns_health_503_and_refused_requests_open_no_journal(tmp_path: Path) -> None:
    process, url = _collector_on_tiny_tmpfs(tmp_path / "drops")
    try:
        inside = Path(f"/proc/{process.pid}/root") / str(tmp_path / "drops").lstrip("/")

        def send() -> int:  # fresh span ids each time: a resent body would be a recognised retry
            body = encode_spans(sdk_spans([("success", f"k{n}", {"kvonce.event.value": "v" * 400})
                                           for n in range(40)])).SerializeToString()
            return post(url, body, {"Content-Type": "application/x-protobuf"})[0]

        codes = [send() for _ in range(30)]
        assert 200 in codes and codes[-1] == 503, codes  # some fit, then the disk is full
        def descriptors() -> int:
            time.sleep(0.5)  # the last connection's socket is closing
            return len(os.listdir(f"/proc/{process.pid}/fd"))

        fds_after_first_refusals = descriptors()
        more = [send() for _ in range(60)]
        assert set(more) == {503}
        # a connection's socket may still be open; one descriptor per refusal would be 60 more
        assert descriptors() <= fds_after_first_refusals + 2, "no descriptor per refusal"
        journals = [p for p in os.listdir(inside) if p.endswith(".journal")]
        assert len(journals) <= 2, journals  # the batch that holds acknowledged spans, not one per refusal
        status, _, health = post(url, b"", method="GET", path="/health")
        assert status == 503 and json.loads(health)["status"] == "degraded"
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_health_is_degraded_from_the_start_when_the_drop_folder_cannot_be_written(start_receiver,
                                                                                  tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the drop folder should be")
    receiver = start_receiver(drop_dir=blocked)
    status, _, health = post(receiver.url, b"", method="GET", path="/health")
    assert status == 503 and json.loads(health)["status"] == "degraded"
    assert "cannot write in the drop folder" in json.loads(health)["lastError"]
    blocked.unlink()  # the operator fixes it: health recovers without a restart
    status, _, health = post(receiver.url, b"", method="GET", path="/health")
    assert status == 200 and json.loads(health)["status"] == "ok"
