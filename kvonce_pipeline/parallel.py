"""The projection on the second core: a forked child, or a worker process fed the events file's bytes.

When the events are already in memory (a whole OTLP document, decoded at once) the parent forks
(:class:`ForkedProjection`): the child sees the same list copy-on-write, so nothing is sent,
parsed or pickled, and it writes the projection files while the parent writes the events and
the verdict. Streamed inputs have no list to share; for them, and where ``fork`` is not safe to
use (not Linux), the projection runs in a fresh interpreter (:class:`ProjectionWorker`):

Profiling the one-pass writer on a 1M-event trace put the projection (fold, state entry, JSON)
at about 40% of the pass, and it needs nothing from the other stages but the events. The worker
is a fresh interpreter (no fork of a multi-gigabyte parent, no pickle) that reads the NDJSON
lines the parent writes to ``kvonce-events.ndjson`` anyway, from a pipe, and writes the state
sequence and the projection itself, byte for byte what :func:`kvonce_pipeline.stages.write_projection`
writes (the tests compare). Its result (stats, sha256 and sizes) comes back as one JSON line.

Protocol on the worker's stdin: NDJSON event lines, then the line ``\\x00end``. A pipe that
closes without it (the parent failed) makes the worker discard its temporary files.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

from .atomic import TEMP_SUFFIX
from .errors import OutputError

END = b"\x00end\n"


class ProjectionWorker:
    """The parent's handle: :meth:`feed` batches of NDJSON lines, then :meth:`finish`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._process = subprocess.Popen(
            [sys.executable, "-m", "kvonce_pipeline.parallel", str(out_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1024 * 1024,
        )
        self._error: BaseException | None = None

    def feed(self, lines: bytes) -> None:
        """Called from a writer thread: pipe writes release the GIL."""
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(lines)
        except (BrokenPipeError, OSError) as error:
            self._error = error
            raise RuntimeError(f"the projection worker stopped: {self._stderr()}") from None

    def finish(self) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(END)
        self._process.stdin.close()
        output = self._process.stdout.read()
        code = self._process.wait()
        if code != 0 or not output:
            raise RuntimeError(f"the projection worker failed (exit {code}): {self._stderr()}")
        return orjson.loads(output)

    def abort(self) -> None:
        """The parent failed: close the pipe without the end marker; the worker discards its files."""
        close_and_wait(self._process, timeout=30)

    def _stderr(self) -> str:
        try:
            assert self._process.stderr is not None
            return self._process.stderr.read().decode(errors="replace")[-2000:]
        except (OSError, ValueError):
            return ""


def close_and_wait(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """End a worker that stops at the end of its stdin: close it, wait, kill after ``timeout`` s."""
    try:
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()
    except OSError:
        pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _Incomplete(Exception):
    """The parent closed the pipe without the end marker."""


def _worker(out_dir: Path) -> int:
    from . import artifacts
    from .events import Event
    from .projection import ProjectionBuilder, StateSequence
    from .stages import BATCH, BackgroundWriter, _write_projection_file

    gc.disable()  # no cycles here, and a collection would walk every per-key entry
    builder = ProjectionBuilder()
    per_key, sequence, loads = builder.per_key_fold.fold, StateSequence(builder.states), orjson.loads
    stdin = sys.stdin.buffer
    finished = False
    try:
        with BackgroundWriter(out_dir / artifacts.STATE_SEQUENCE) as states:
            index = 0
            for line in stdin:
                if line == END:
                    finished = True
                    break
                obj = loads(line)
                event = Event(None, obj["type"], obj["key"], obj.get("value"), obj.get("reason"), obj.get("context"))
                stamp = obj["timestamp"]
                per_key(event, stamp)
                sequence.add(index, event, stamp)
                index += 1
                if not index % BATCH:
                    states.write(sequence.take())
            if not finished:
                raise _Incomplete
            states.write(sequence.close())
    except _Incomplete:
        return 3
    result = _write_projection_file(builder, out_dir, states.written)
    state_file, projection_file = result.state_sequence_file, result.projection_file
    sys.stdout.buffer.write(orjson.dumps({
        "stats": result.projection["stats"],
        "state": {"sha256": state_file.sha256, "size": state_file.size},
        "projection": {"sha256": projection_file.sha256, "size": projection_file.size},
    }))
    sys.stdout.buffer.flush()
    os._exit(0)  # the per-key entries need no freeing: the process ends here


class Feeder:
    """Hands batches to the worker from a thread, so a full pipe never stalls the decoder."""

    def __init__(self, worker: ProjectionWorker, depth: int = 8) -> None:
        import queue

        self._worker = worker
        self._queue: Any = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="projection feeder", daemon=True)
        self._thread.start()

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if self._error is None:
                try:
                    self._worker.feed(chunk)
                except BaseException as error:  # noqa: BLE001 - re-raised in the producer
                    self._error = error


def can_fork() -> bool:
    """Linux only: elsewhere ``fork`` of a threaded process is unsafe (macOS) or missing (Windows)."""
    return hasattr(os, "fork") and sys.platform.startswith("linux")


class ForkedProjection:
    """``kvonce-projection.json`` and the verdict of an in-memory event list, from a forked child.

    Create it before starting any thread of this run: the child keeps only the forking thread.
    The child runs nothing but this package's projection code and file writes (no logging, no
    imports, no printing), so locks other threads of the parent held at the fork (Dagster's,
    logging's) are never taken in the child. It reports one JSON object through a pipe and
    leaves with ``os._exit`` (no atexit handlers or finalizers of the parent run twice).
    """

    def __init__(self, events: list[Any], out_dir: Path, validator: Any, input_summary: dict[str, Any] | None) -> None:
        from . import artifacts
        from .atomic import fsync_directory  # noqa: F401 - imported before the fork, used by publish()
        from .stages import project_per_key  # imported before the fork: the child imports nothing

        self.out_dir = out_dir
        self.target = out_dir / artifacts.PROJECTION
        #: The child's finished file waits here (a temporary name of the parent's, swept if it dies)
        #: until the parent's own files are written: the run publishes all or nothing.
        self.staged = out_dir / f".{artifacts.PROJECTION}.{os.getpid()}.fork{TEMP_SUFFIX}"
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(read_fd)
            code = 1
            try:
                payload = project_per_key(events, self.staged, validator, input_summary)
                code = 0
            except OutputError as error:
                payload = orjson.dumps({"outputError": str(error)})
            except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises
                payload = orjson.dumps({"error": f"{type(error).__name__}: {error}"})
            finally:
                try:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(write_fd, view):]
                finally:
                    os._exit(code)
        os.close(write_fd)
        self._pid: int | None = pid
        self._fd = read_fd

    def finish(self) -> dict[str, Any]:
        """Wait for the child; its result, or the error it met (``OutputError`` stays one)."""
        chunks = []
        while chunk := os.read(self._fd, 1 << 16):
            chunks.append(chunk)
        os.close(self._fd)
        assert self._pid is not None
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        outcome = orjson.loads(b"".join(chunks)) if chunks else {}
        if "outputError" in outcome:
            raise OutputError(outcome["outputError"])
        if os.waitstatus_to_exitcode(status) != 0 or "report" not in outcome:
            self._sweep()
            detail = outcome.get("error") or f"exit status {os.waitstatus_to_exitcode(status)}"
            raise RuntimeError(f"the projection child failed: {detail}")
        return outcome

    def publish(self) -> None:
        """Put the child's file in place (after :meth:`finish` and the parent's own files)."""
        from .atomic import fsync_directory

        try:
            os.replace(self.staged, self.target)
        except OSError as exc:
            raise OutputError(f"cannot write {self.target}: {exc.strerror or exc}") from exc
        fsync_directory(self.out_dir)

    def abort(self) -> None:
        """The run failed: stop the child if it still runs and remove what it wrote."""
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self._pid, 0)
            self._pid = None
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._sweep()

    def _sweep(self) -> None:
        from .atomic import sweep_stale_temps

        try:
            self.staged.unlink()
        except FileNotFoundError:
            pass
        sweep_stale_temps(self.out_dir, self.staged.name)  # the child's own temporary, if it was killed


if __name__ == "__main__":
    sys.exit(_worker(Path(sys.argv[1])))
