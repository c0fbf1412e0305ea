"""The receiver's health and intake when the drop folder fails: a real ``kvonce collector`` on a tiny
tmpfs, and a drop folder that cannot be written at start-up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from ..conftest import VENV_BIN
from .test_collector import post, sdk_spans, start_receiver
from ..test_faults import needs_unshare

__all__ = ["start_receiver"]


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
