"""``kvonce collector`` killed under load: every 200 survives, retries are not stored twice.

A real ``kvonce collector`` process on 127.0.0.1 (``--port 0``) takes real HTTP requests from
several client threads; it is SIGKILLed while they are sending, restarted on the same drop folder,
the clients retry what got no 200 (and a few requests that did, as a client that lost the answer
would), and the collector is stopped cleanly. Every span of every request must then be in the
payload files exactly once.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..conftest import VENV_BIN
from .test_collector import KV_SPANS, payload_files, sdk_spans

REQUESTS = 240
CLIENTS = 4
KILL_AFTER = 80  # 200s answered before the SIGKILL


def start_collector(drops: Path, flush_seconds: str) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    process = subprocess.Popen(
        [str(VENV_BIN / "kvonce"), "collector", "--port", "0", "--no-grpc", "--drop-dir", str(drops),
         "--flush-seconds", flush_seconds],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = process.stdout.readline()
    match = re.search(r"listening on http://(127\.0\.0\.1):(\d+)/v1/traces", line)
    if not match:
        process.kill()
        raise AssertionError(line + process.communicate()[1])
    return process, (match.group(1), int(match.group(2)))


def send(address: tuple[str, int], body: bytes, connection: http.client.HTTPConnection | None = None
         ) -> tuple[int | None, http.client.HTTPConnection | None]:
    """One POST on a keep-alive connection; ``None`` status when no answer came (connection lost)."""
    try:
        if connection is None:
            connection = http.client.HTTPConnection(*address, timeout=10)
        connection.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
        response = connection.getresponse()
        response.read()
        return response.status, connection
    except (OSError, http.client.HTTPException):
        if connection is not None:
            connection.close()
        return None, None


def span_ids(message: ExportTraceServiceRequest) -> list[bytes]:
    return [span.trace_id + span.span_id
            for rs in message.resource_spans for ss in rs.scope_spans for span in ss.spans]


@pytest.mark.parametrize("flush_seconds", ["3600", "0.05"], ids=["journal-only", "flushing"])
def test_sigkill_under_load_keeps_every_200_exactly_once(tmp_path: Path, flush_seconds: str) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    bodies = [encode_spans(sdk_spans(KV_SPANS, key_prefix=f"r{n}-")).SerializeToString() for n in range(REQUESTS)]
    status: dict[int, int | None] = {}
    answered = threading.Semaphore(0)
    process, address = start_collector(drops, flush_seconds)
    try:
        def client(first: int) -> None:
            connection = None
            for n in range(first, REQUESTS, CLIENTS):
                status[n], connection = send(address, bodies[n], connection)
                if status[n] == 200:
                    answered.release()
            if connection is not None:
                connection.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for _ in range(KILL_AFTER):
            assert answered.acquire(timeout=30), "the collector stopped answering"
        process.send_signal(signal.SIGKILL)  # mid-load: the clients are still sending
        process.wait(timeout=10)
        for thread in threads:
            thread.join(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    acknowledged = [n for n in range(REQUESTS) if status.get(n) == 200]
    unanswered = [n for n in range(REQUESTS) if status.get(n) != 200]
    assert len(acknowledged) >= KILL_AFTER and unanswered, "the kill did not land mid-load"
    assert not any(p.name.endswith(".tmp") for p in payload_files(drops))

    process, address = start_collector(drops, flush_seconds)  # recovers the journals first
    try:
        # retries: everything that got no 200, and a few that did (a client that lost the answer)
        for n in unanswered + acknowledged[-5:]:
            assert send(address, bodies[n])[0] == 200
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr

    leftovers = [p.name for p in drops.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no journal, no temporary
    found: Counter[bytes] = Counter()
    for path in payload_files(drops):
        found.update(span_ids(ExportTraceServiceRequest.FromString(path.read_bytes())))
    for n in range(REQUESTS):
        ids = span_ids(ExportTraceServiceRequest.FromString(bodies[n]))
        assert [found[i] for i in ids] == [1] * len(ids), (n, status.get(n))
    assert sum(found.values()) == REQUESTS * len(KV_SPANS)


def test_recovery_drops_a_torn_record_and_never_writes_a_batch_twice(tmp_path: Path) -> None:
    """The crash points of a flush, with real journal files: before the payload file (write it,
    without the torn last record) and between its rename and the journal's delete (only delete)."""
    from kvonce_pipeline.collector.drop_batch import DropBatcher, find_journals, recover_journals

    drops = tmp_path / "drops"
    blobs = [encode_spans(sdk_spans(KV_SPANS, key_prefix=f"j{n}-")).SerializeToString() for n in range(3)]
    batcher = DropBatcher(drops, flush_seconds=3600)
    for blob in blobs:
        batcher.commit(batcher.add(blob, len(KV_SPANS)))
    (journal,) = find_journals(drops)
    with open(journal, "ab") as out:
        out.write(b"\x00\x00\x10\x00\x00\x00\x00\x05torn")  # a record whose request was never answered
    (target, records, written_now) = recover_journals(drops)[0]  # a killed collector's restart
    assert written_now and [b for b, _ in records] == blobs and not journal.exists()
    assert target.read_bytes() == b"".join(blobs)

    second = DropBatcher(drops, flush_seconds=3600)  # crash after the rename, before the delete
    second.commit(second.add(blobs[0], len(KV_SPANS)))
    (journal,) = find_journals(drops)
    kept = journal.read_bytes()
    second.flush()
    journal.write_bytes(kept)
    before = {p.name: p.read_bytes() for p in payload_files(drops)}
    assert [written for _, _, written in recover_journals(drops)] == [False]
    assert {p.name: p.read_bytes() for p in payload_files(drops)} == before and not find_journals(drops)
