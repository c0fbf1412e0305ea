"""A real S3-compatible server on loopback for the tests and the bucket benchmarks: moto's
``moto_server`` (a dev dependency), started on a free port, stopped on exit.

Why a server process and not moto's in-process mock: the code under test reaches the store the
way it reaches S3 (s3fs over HTTP, ``FSSPEC_S3_ENDPOINT_URL``), also from subprocesses such as the
``kvonce`` command, and conditional writes and range reads go over the wire as they do on AWS.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at this moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def local_s3_server(timeout: float = 30.0) -> Iterator[str]:
    """Start ``moto_server`` on 127.0.0.1 and yield its endpoint URL once it accepts connections;
    stop it on exit. Raises RuntimeError when it does not start within ``timeout`` seconds."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
