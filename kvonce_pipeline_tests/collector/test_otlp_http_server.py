"""OTLP/HTTP under attack, as a hostile client on loopback would try it: each case is a real socket
against a real receiver (or a real ``kvonce collector`` process), with bounded waits."""

from __future__ import annotations

import gzip
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from kvonce_pipeline.collector import otlp_http_server
from kvonce_pipeline.collector.otlp_http import MAX_GZIP_MEMBERS, HttpError, decompress
from kvonce_pipeline.collector.receiver import Receiver

from ..conftest import VENV_BIN
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
    """Every status line in ``reply`` (a body need not end with a line break, so not line by line)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)]


BODY = encode_spans(sdk_spans(KV_SPANS)).SerializeToString()
HEAD = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"


@pytest.mark.parametrize("size", [b"-1", b"-2", b"0x10", b"+a", b"1_0", b" ", b"f" * 21])
def test_a_chunk_size_that_is_not_hex_digits_is_400_and_reads_nothing_more(start_receiver, size: bytes) -> None:
    receiver = start_receiver()
    reply = raw(receiver, HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + b"x" * 4096)
    assert statuses(reply) == [400] and b"illegal chunk header" in reply


@pytest.mark.parametrize("size", [b"fffffffffffffffff", b"2000001"])
def test_a_chunk_announced_above_the_cap_is_413_at_once(start_receiver, size: bytes) -> None:
    receiver = start_receiver(max_body_bytes=1024 * 1024)
    started = time.monotonic()
    reply = raw(receiver, HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + b"x" * 4096)
    assert statuses(reply) == [413] and b"exceeds the limit" in reply
    assert time.monotonic() - started < 5, "refused when announced, not after a silence"


@pytest.mark.parametrize(("headers", "status"), [
    (b"Content-Length: 4\r\nContent-Length: 5\r\n", 400),
    (b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"Content-Length: +4\r\n", 400),
    (b"Content-Length: 4_0\r\n", 400),
    (b"Content-Length: -4\r\n", 400),
    (b"Transfer-Encoding: xchunked\r\n", 501),
    (b"Transfer-Encoding: gzip, chunked\r\n", 501),
], ids=["two-lengths", "length-and-chunked", "plus-sign", "underscore", "negative",
        "xchunked", "gzip-chunked"])
def test_every_smuggling_shape_is_refused_and_the_hidden_request_never_answered(start_receiver, headers: bytes,
                                                                               status: int) -> None:
    receiver = start_receiver()
    hidden = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    request = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n" + headers + b"\r\n"
    reply = raw(receiver, request + b"abcd" + hidden)
    assert statuses(reply) == [status], reply[:300]  # one answer: the smuggled GET is never read
    assert receiver.health()["requestsAccepted"] == 0


def test_a_repeated_identical_length_is_one_length_and_the_next_request_is_answered(start_receiver) -> None:
    """RFC 9110 8.6 lets a recipient read identical repeated lengths as one (Go's server, which the
    OpenTelemetry Collector runs on, does): the body's end is not ambiguous, so nothing is smuggled."""
    receiver = start_receiver()
    reply = raw(receiver, HEAD + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"
                          b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(reply) == [400, 200], reply[:400]  # "abcd" is not protobuf; the GET is its own request


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
    monkeypatch.setattr(otlp_http_server, "HEADER_SECONDS", 2.0)
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
    monkeypatch.setattr(otlp_http_server, "MAX_CONNECTIONS", 4)
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


# --- memory held by bodies in flight, and a body that stops -------------------------------------

def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_parallel_bombs_and_held_bodies_stay_within_the_documented_bound(tmp_path: Path) -> None:
    """8 gzip bombs at once beside 16 connections each holding 10 MB of an announced 19 MiB body
    (before: peak RSS 1.5 GB). The bound (docs/collector.md): 2 x MAX_BODIES_IN_FLIGHT x the cap,
    plus what each waiting connection has buffered, above the idle process."""
    process = subprocess.Popen([str(VENV_BIN / "kvonce"), "collector", "--port", "0", "--no-grpc",
                                "--drop-dir", str(tmp_path / "drops")], stdout=subprocess.PIPE, text=True)
    try:
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", process.stdout.readline())
        assert match, "the collector did not start"
        port = int(match.group(1))
        status, _, _ = post(f"http://127.0.0.1:{port}", b"", method="GET", path="/health")
        assert status == 200
        idle = _peak_rss_mib(process.pid)
        held = []
        for _ in range(16):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn.sendall(HEAD + f"Content-Length: {19 << 20}\r\n\r\n".encode())
            held.append(conn)
        for conn in held:
            conn.settimeout(0.5)
            try:
                conn.sendall(b"\0" * (10 << 20))
            except TimeoutError:
                pass  # the server stopped reading this one: its bytes wait in the kernel
        bomb = gzip.compress(b"\0" * (200 << 20), compresslevel=9)  # ~200 KB inflating to 200 MB
        results: list[int] = []

        def send_bomb() -> None:
            results.append(post(f"http://127.0.0.1:{port}", bomb, {"Content-Type": "application/x-protobuf",
                                                                  "Content-Encoding": "gzip"})[0])

        threads = [threading.Thread(target=send_bomb) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        for conn in held:  # the holders give up; the bombs get their turn
            conn.close()
        for thread in threads:
            thread.join(30)
        assert results == [413] * 8
        from kvonce_pipeline.engine.limits import Limits
        bound = 2 * otlp_http_server.MAX_BODIES_IN_FLIGHT * Limits.max_request_bytes / (1 << 20) + 16 * 0.5
        grown = _peak_rss_mib(process.pid) - idle
        assert grown < bound, f"peak RSS grew {grown:.0f} MiB, the bound is {bound:.0f} MiB"
        assert post(f"http://127.0.0.1:{port}", b"", method="GET", path="/health")[0] == 200
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_a_body_that_stops_is_answered_408_after_the_idle_time(start_receiver,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_http_server, "BODY_IDLE_SECONDS", 1.0)
    receiver = start_receiver()
    started = time.monotonic()
    reply = raw(receiver, HEAD + b"Content-Length: 1000\r\n\r\n" + b"x" * 10, timeout=10)
    assert statuses(reply) == [408] and time.monotonic() - started < 6
    assert receiver.health()["refused"] == {"408": 1}


# --- clients that hold what they should not ------------------------------------------------------

def _trickle(conn: socket.socket, stop_after: float, every: float = 0.3) -> None:
    """Send a body byte every ``every`` seconds for ``stop_after`` seconds (or until refused)."""
    end = time.monotonic() + stop_after
    while time.monotonic() < end:
        try:
            conn.sendall(b"x")
        except OSError:
            return
        time.sleep(every)


def test_a_body_that_trickles_is_cut_by_the_total_deadline(start_receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_http_server, "BODY_SECONDS", 1.0)
    monkeypatch.setattr(otlp_http_server, "MIN_BODY_RATE", 1 << 30)  # no allowance for bytes received
    receiver = start_receiver()
    host, port = receiver.address
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(HEAD + b"Content-Length: 1000\r\n\r\n")
        started = time.monotonic()
        _trickle(conn, 2.5)  # a byte every 0.3 s: the idle time (30 s) alone would never end it
        conn.settimeout(5)
        reply = conn.recv(65536)
    assert statuses(reply) == [408] and b"too slowly" in reply
    assert time.monotonic() - started < 6


def test_a_request_that_waits_too_long_for_a_body_slot_gets_503(start_receiver,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_http_server, "MAX_BODIES_IN_FLIGHT", 1)
    monkeypatch.setattr(otlp_http_server, "SLOT_WAIT_SECONDS", 1.0)
    receiver = start_receiver()
    host, port = receiver.address
    with socket.create_connection((host, port), timeout=10) as holder:
        holder.sendall(HEAD + b"Content-Length: 1000\r\n\r\nxx")  # takes the only slot and keeps it
        time.sleep(0.3)
        started = time.monotonic()
        reply = raw(receiver, HEAD + f"Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY)
    assert statuses(reply) == [503] and b"Retry-After" in reply.replace(b"retry-after", b"Retry-After")
    assert time.monotonic() - started < 5


def test_a_get_with_a_body_is_answered_and_closed(start_receiver) -> None:
    """A body nobody reads must not keep the connection (and its keep-alive timer) busy."""
    receiver = start_receiver()
    host, port = receiver.address
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nabc")
        conn.settimeout(5)
        reply = b""
        while block := conn.recv(65536):
            reply += block
    assert statuses(reply) == [200] and b"connection: close" in reply.lower()


def test_a_request_still_running_past_the_drain_time_gets_503_not_500(start_receiver) -> None:
    receiver = start_receiver(drain_seconds=0.5)
    host, port = receiver.address
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(HEAD + b"Content-Length: 1000\r\n\r\nxx")  # in progress: its body never completes
        time.sleep(0.3)
        stopper = threading.Thread(target=receiver.stop)
        stopper.start()
        conn.settimeout(10)
        reply = b""
        while block := conn.recv(65536):
            reply += block
        stopper.join(20)
    assert statuses(reply) == [503] and b"stopped before this request was done" in reply


def test_a_request_the_protocol_refused_is_counted_once(start_receiver) -> None:
    receiver = start_receiver()
    raw(receiver, HEAD + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\nabcd"
                         b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert receiver.health()["refused"] == {"400": 1}


def test_a_websocket_upgrade_is_an_ordinary_request(start_receiver) -> None:
    receiver = start_receiver()
    reply = raw(receiver, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert statuses(reply) == [200]
