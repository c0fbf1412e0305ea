"""Two Pandera checks on the second core, while the Dagster step's one pass runs on the first.

The one-pass writer keeps one core busy decoding and writing; its projection worker
(:mod:`kvonce_pipeline.parallel`) leaves the second one mostly idle (measured: 117 % CPU for the
CLI on the 1M trace). The ``collected_schema`` check needs only ``collected-kvonce-otlp.json``,
which exists before the pass starts: decoding its spans again and checking them (about 4 s on the
1M trace) costs no wall time there. The ``projection_schema`` check needs
``kvonce-projection.json``, which exists only after the pass; the worker is already running with
pandas and Pandera imported, so it decodes and checks the per-key table while the step checks the
events in its own process.

Like the projection worker it is a fresh interpreter (``python -m``; no fork of a large parent,
no Dagster import). Protocol: the collected path as argument; one JSON line back with the collected
outcome; then one JSON request line on stdin (``{"projection": path, "stats": {...}}``) answered
by one JSON line, or the end of stdin, on which it exits. Any failure comes back as
``{"error": ...}`` and the parent runs the check itself: the worker only ever saves time.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import orjson

_MODULE = "kvonce_pipeline.orchestration.schema_worker"


class SchemaWorkerError(RuntimeError):
    """The worker could not answer; the caller checks in its own process instead."""


class SchemaWorker:
    """The parent's handle: start it on the collected file, then :meth:`collected`,
    :meth:`request_projection`, :meth:`projection`; :meth:`close` in every case."""

    def __init__(self, collected: Path) -> None:
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self._process = subprocess.Popen([sys.executable, "-m", _MODULE, str(collected)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._collected: Any = None

    def collected(self) -> Any:
        """The :class:`~kvonce_pipeline.schemas.CollectedOutcome` (waits for it; read once, then cached)."""
        from ..schemas import CollectedOutcome, SchemaOutcome

        if self._collected is None:
            answer = self._answer()
            self._collected = CollectedOutcome(answer["spans"], answer["kvonce_spans"],
                                               SchemaOutcome(**answer["outcome"]))
        return self._collected

    def request_projection(self, path: Path, stats: dict[str, Any]) -> None:
        """Ask for the per-key check; the worker starts on it at once (answer with :meth:`projection`)."""
        self.collected()
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(orjson.dumps({"projection": str(path), "stats": stats}) + b"\n")
            self._process.stdin.close()
        except OSError as error:
            raise SchemaWorkerError(f"the schema worker stopped: {error}; {self._stderr_tail()}") from None

    def projection(self) -> Any:
        """The per-key :class:`~kvonce_pipeline.schemas.SchemaOutcome` requested before."""
        from ..schemas import SchemaOutcome

        return SchemaOutcome(**self._answer()["outcome"])

    def close(self) -> None:
        """End the worker whatever state it is in (it exits at the end of its stdin)."""
        try:
            if self._process.stdin is not None and not self._process.stdin.closed:
                self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._stderr.close()

    def _answer(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            code = self._process.wait()
            raise SchemaWorkerError(f"the schema worker ended (exit {code}): {self._stderr_tail()}")
        answer = orjson.loads(line)
        if "error" in answer:
            raise SchemaWorkerError(f"the schema worker failed: {answer['error']}")
        return answer

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace")[-2000:]
        except (OSError, ValueError):
            return ""


def _send(payload: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(payload) + b"\n")
    sys.stdout.buffer.flush()


def _release_memory() -> None:
    """Hand freed heap back to the system while the pass runs (glibc only; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _worker(collected: Path) -> int:
    import gc

    gc.disable()  # no reference cycles here; a collection would walk a million span structs
    from .. import schemas

    try:
        result = schemas.check_collected_file(collected)
        _send({"spans": result.spans, "kvonce_spans": result.kvonce_spans,
               "outcome": dataclasses.asdict(result.outcome)})
    except Exception as error:  # noqa: BLE001 - reported to the parent, which checks itself
        _send({"error": f"{type(error).__name__}: {error}"})
        return 0
    _release_memory()
    request = sys.stdin.buffer.readline()
    if not request:
        return 0
    try:
        asked = orjson.loads(request)
        outcome = schemas.check_projection_file(Path(asked["projection"]), asked["stats"])
        _send({"outcome": dataclasses.asdict(outcome)})
    except Exception as error:  # noqa: BLE001 - reported to the parent, which checks itself
        _send({"error": f"{type(error).__name__}: {error}"})
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    code = _worker(Path(sys.argv[1]))
    sys.stdout.flush()
    import os

    os._exit(code)  # the decoded tables need no freeing: the process ends here
