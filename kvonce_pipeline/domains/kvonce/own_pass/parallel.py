"""The second core: the helpers that write part of a run's artifacts in another process.

* :class:`FedProjection` (a whole OTLP document, the usual case for big inputs): a fresh
  interpreter, started before the document is read, receives the events over a pipe while the
  decoder makes them (msgpack frames from the reader's tap, :data:`kvonce_pipeline.engine.decode.spans.Tap`)
  and writes the events file, the state sequence and the per-key projection; the parent makes
  the verdict and publishes everything. Measured on the 1M-event trace it overlaps the files with
  the decoding, which no helper started after the decoding can.
* :class:`ForkedProjection`: when the feed is void (the document was out of time order and had to
  be sorted first), a forked child shares the final list copy-on-write and folds the per-key
  projection and the verdict while the parent writes the events and the state sequence.
* :class:`ProjectionWorker`: for streamed inputs (NDJSON, JSON Lines, length-delimited
  protobuf), and where ``fork`` is not safe (not Linux), a fresh interpreter reads the NDJSON
  lines the parent writes to ``kvonce-events.ndjson`` anyway, from a pipe, and writes the state
  sequence and the projection itself.

Every helper's files are byte for byte what the sequential pass writes (the tests compare). The
fed worker's and the forked child's wait under temporary names until the parent, its own part
done, publishes them; the stream worker renames its two files itself once the parent has sent
the end of the events.

Protocol on the stream worker's stdin: NDJSON event lines, then the line ``\\x00end``; on the fed
worker's: frames of a 4-byte little-endian length and a msgpack array of :class:`WireEvent`,
then a frame of length 0. A pipe that closes without the end makes either discard its files.
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

import msgspec
import orjson

from ....engine.atomic import TEMP_SUFFIX
from ....engine.errors import OutputError
from ....engine.timestamps import format_timestamp
from .. import artifacts

END = b"\x00end\n"


class ProjectionWorker:
    """The parent's handle: :meth:`feed` batches of NDJSON lines, then :meth:`finish`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._process = subprocess.Popen(
            [sys.executable, "-m", "kvonce_pipeline.domains.kvonce.own_pass.parallel", str(out_dir)],
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
            reported = self._reported_output_error()
            if reported is not None:  # it could not write its files (disk full): say that, as the CLI does
                raise reported from None
            raise RuntimeError(f"the projection worker stopped: {self._stderr()}") from None

    def finish(self) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(END)
        self._process.stdin.close()
        output = self._process.stdout.read()
        code = self._process.wait()
        if code != 0 or not output:
            raise RuntimeError(f"the projection worker failed (exit {code}): {self._stderr()}")
        return _outcome(output, code, "worker")

    def _reported_output_error(self) -> OutputError | None:
        """After the pipe broke: the ``OutputError`` the worker reported before it stopped, if any."""
        close_and_wait(self._process, timeout=30)
        try:
            assert self._process.stdout is not None
            output = self._process.stdout.read()
            outcome = orjson.loads(output) if output else {}
        except (OSError, ValueError):
            return None
        return OutputError(outcome["outputError"]) if isinstance(outcome, dict) and "outputError" in outcome else None

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
    from ..events import Event
    from .one_pass import BATCH, BackgroundWriter, projection_file
    from ..projection import ProjectionBuilder, StateSequence

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
        projection, projection_written = projection_file(builder.per_key_fold, out_dir / artifacts.PROJECTION,
                                                       entries=False)
    except _Incomplete:
        return 3
    except OutputError as error:  # the parent raises it (see ProjectionWorker.feed and finish)
        sys.stdout.buffer.write(orjson.dumps({"outputError": str(error)}))
        sys.stdout.buffer.flush()
        os._exit(0)
    state_file = states.written
    sys.stdout.buffer.write(orjson.dumps({
        "stats": projection["stats"],
        "state": {"sha256": state_file.sha256, "size": state_file.size},
        "projection": {"sha256": projection_written.sha256, "size": projection_written.size},
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


class _StagedProjection:
    """A projection file made by another process under a temporary name, published by the parent.

    The file waits under its staged name until the parent's own files are written, so the run
    publishes all or nothing; a staged file whose process died is swept like any temporary.
    """

    out_dir: Path
    target: Path
    staged: Path

    def _stage(self, out_dir: Path, how: str) -> None:

        self.out_dir = out_dir
        self.target = out_dir / artifacts.PROJECTION
        self.staged = out_dir / f".{artifacts.PROJECTION}.{os.getpid()}.{how}{TEMP_SUFFIX}"

    def publish(self) -> None:
        """Put the file in place (after the outcome is in and the parent's own files are written)."""
        from ....engine.atomic import fsync_directory

        try:
            os.replace(self.staged, self.target)
        except OSError as exc:
            raise OutputError(f"cannot write {self.target}: {exc.strerror or exc}") from exc
        fsync_directory(self.out_dir)

    def _sweep(self) -> None:
        from ....engine.atomic import sweep_stale_temps

        try:
            self.staged.unlink()
        except FileNotFoundError:
            pass
        sweep_stale_temps(self.out_dir, self.staged.name)  # the other process's own temporary, if killed


def _outcome(output: bytes, exit_code: int, what: str) -> dict[str, Any]:
    """The other process's JSON result, or the error it met (``OutputError`` stays one)."""
    outcome = orjson.loads(output) if output else {}
    if "outputError" in outcome:
        raise OutputError(outcome["outputError"])
    if exit_code != 0 or "stats" not in outcome:
        detail = outcome.get("error") or f"exit status {exit_code}"
        raise RuntimeError(f"the projection {what} failed: {detail}")
    return outcome


class ForkedProjection(_StagedProjection):
    """``kvonce-projection.json`` and the verdict of an in-memory event list, from a forked child.

    Create it before starting any thread of this run: the child keeps only the forking thread.
    The child runs nothing but this package's projection code and file writes (no logging, no
    imports, no printing), so locks other threads of the parent held at the fork (Dagster's,
    logging's) are never taken in the child. It reports one JSON object through a pipe and
    leaves with ``os._exit`` (no atexit handlers or finalizers of the parent run twice).
    """

    def __init__(self, events: list[Any], out_dir: Path, validator: Any, input_summary: dict[str, Any] | None) -> None:
        from ....engine.atomic import fsync_directory  # noqa: F401 - imported before the fork, used by publish()
        from .one_pass import (
            project_per_key,  # imported before the fork: the child imports nothing
        )

        self._stage(out_dir, "fork")
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
        try:
            outcome = _outcome(b"".join(chunks), os.waitstatus_to_exitcode(status), "child")
        except RuntimeError:
            self._sweep()
            raise
        return outcome

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

class WireEvent(msgspec.Struct, array_like=True, gc=False):
    """An :class:`~kvonce_pipeline.domains.kvonce.events.Event` on its way to the fed worker (the same attribute
    names, so the writers and folds take it as one) with its formatted timestamp, as a msgpack array."""

    stamp: Any
    time_unix_nano: Any
    type: Any
    key: Any
    value: Any
    reason: Any
    context: Any
    trace_id: Any
    span_id: Any
    actor: Any
    origin: Any


class FedProjection(_StagedProjection):
    """The events file, the state sequence and ``kvonce-projection.json`` from a worker fed the
    events while they are decoded.

    For a whole OTLP document the decoder's walk over the spans is the longest serial step. This
    worker, a fresh interpreter (started by :meth:`start`, or at the first :meth:`tap`), receives
    each run of events the walk makes (msgpack, with the formatted timestamp) and writes the
    three large files while the walk goes on; when the list is final (:meth:`seal`) the parent
    makes the verdict, then publishes all files. Forking once the document is decoded
    (:class:`ForkedProjection`) cannot start before the walk ends, and it costs both sides
    copy-on-write faults: every object either touches shares a page with the other (measured
    435,000 faults, about 2 s of the parent's pass on the 1M-event trace).

    The tap sees events in document order. When they are not in time order, or the decoder
    starts over (the typed decoder gave up), the feed is void: :meth:`seal` says so and the
    caller aborts this worker and writes the files from the final list the usual way. The files
    wait under temporary names until :meth:`publish`.
    """

    def __init__(self, out_dir: Path) -> None:
        import queue


        self._stage(out_dir, "fed")
        #: ``(staged, target)`` of the events file and the state sequence (the projection's are
        #: ``staged`` and ``target``).
        self._others = [(target.parent / f".{target.name}.{os.getpid()}.fed{TEMP_SUFFIX}", target)
                        for target in (out_dir / artifacts.STATE_SEQUENCE, out_dir / artifacts.EVENTS)]
        self._process: subprocess.Popen[bytes] | None = None
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._encode = msgspec.msgpack.Encoder().encode
        self.sent = 0
        self._last_time = 0
        self.void = False

    def tap(self, start: int, events: list[Any]) -> None:
        """Take a run of events from the decoder (:data:`kvonce_pipeline.engine.decode.spans.Tap`)."""
        if self.void:
            return
        if start != self.sent:
            self.void = True  # the decoder started over
            return
        last = self._last_time
        stamps: list[str | None] = []
        stamp_of = format_timestamp
        for event in events:
            time_ns = event.time_unix_nano
            if time_ns is None:
                stamps.append(None)
                continue
            if time_ns < last:
                self.void = True  # out of time order: the final list is sorted first
                return
            last = time_ns
            stamps.append(stamp_of(time_ns))
        self._last_time = last
        try:
            payload = self._encode([(stamp, e.time_unix_nano, e.type, e.key, e.value, e.reason, e.context,
                                     e.trace_id, e.span_id, e.actor, e.origin) for stamp, e in zip(stamps, events)])
        except Exception:  # noqa: BLE001 - a value msgpack cannot carry: the usual way is exact
            self.void = True
            return
        if self._process is None:
            self.start()
        self._queue.put(len(payload).to_bytes(4, "little") + payload)
        self.sent += len(events)

    def seal(self, count: int) -> bool:
        """If the worker was sent exactly the ``count`` events of the final list, in order, tell it
        the feed is over (it finishes while the parent writes) and return True; else False."""
        if self.void or self._process is None or self.sent != count or self._error is not None:
            return False
        self._queue.put(bytes(4))  # a frame of length 0: the end
        self._queue.put(None)
        return True

    def finish(self) -> dict[str, Any]:
        """Wait for the worker (after :meth:`seal`); its result (stats, files)."""
        assert self._process is not None and self._thread is not None and self._process.stdout is not None
        self._thread.join()
        output = self._process.stdout.read()
        code = self._process.wait()
        errors = self._process.stderr.read().decode(errors="replace")[-2000:] if self._process.stderr else ""
        self._process = None
        try:
            if self._error is not None:
                raise RuntimeError(f"the projection worker stopped: {self._error} {errors}")
            if code != 0 and errors:
                raise RuntimeError(f"the projection worker failed (exit {code}): {errors}")
            return _outcome(output, code, "worker")
        except RuntimeError:
            self._sweep()
            raise

    def abort(self) -> None:
        """Stop the worker if it runs and remove what it wrote."""
        if self._process is not None:
            self._process.kill()
            self._queue.put(None)
            if self._thread is not None:
                self._thread.join()
            close_and_wait(self._process, timeout=30)
            self._process = None
        self._sweep()

    def publish(self) -> None:
        """Put the files in place: the state sequence, the projection (which names it), the events."""
        from ....engine.atomic import fsync_directory

        (states, state_target), (events, events_target) = self._others
        for staged, target in ((states, state_target), (self.staged, self.target), (events, events_target)):
            try:
                os.replace(staged, target)
            except OSError as exc:
                raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
            fsync_directory(target.parent)

    def _sweep(self) -> None:
        from ....engine.atomic import sweep_stale_temps

        for staged, _ in self._others:
            try:
                staged.unlink()
            except FileNotFoundError:
                pass
            sweep_stale_temps(staged.parent, staged.name)
        super()._sweep()

    def start(self) -> None:
        """Start the worker now (otherwise the first :meth:`tap` does)."""
        if self._process is not None:
            return
        for staged, _ in self._others:
            staged.parent.mkdir(parents=True, exist_ok=True)
        (states, _), (events, _) = self._others
        self._process = subprocess.Popen(
            [sys.executable, "-m", "kvonce_pipeline.domains.kvonce.own_pass.parallel", "--fed", str(events), str(states), str(self.staged)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        )
        assert self._process.stdin is not None
        _widen_pipe(self._process.stdin.fileno())
        self._thread = threading.Thread(target=self._feed, name="projection feed", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        """Write the frames from a thread: a pipe write releases the GIL, and the walk never waits."""
        assert self._process is not None and self._process.stdin is not None
        stdin = self._process.stdin
        while (frame := self._queue.get()) is not None:
            if self._error is None:
                try:
                    view = memoryview(frame)
                    while view:
                        view = view[stdin.write(view):]
                except OSError as error:
                    self._error = error
        try:
            stdin.close()
        except OSError:
            pass


def _widen_pipe(fd: int, size: int = 1 << 20) -> None:
    """Give a pipe a megabyte of buffer (Linux; elsewhere, or beyond the system's limit, keep it).

    With the default 64 KiB the feeding thread blocks within every frame and must then win the
    GIL back from the walk (up to the 5 ms switch interval) to go on; a megabyte holds a few
    frames. A margin, not a measured gain: on the 1M-event trace the worker's real stall was
    waiting for the end of the feed (now sent as soon as the list is final, :meth:`FedProjection.seal`).
    """
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (ImportError, AttributeError, OSError):
        pass


def _fed_worker(events_path: Path, states_path: Path, projection_path: Path) -> int:
    """The fed worker: frames of :class:`WireEvent` arrays on stdin, its result as JSON on stdout."""
    from .one_pass import write_fed_files

    gc.disable()  # no cycles here, and a collection would walk every per-key entry
    decode = msgspec.msgpack.Decoder(list[WireEvent]).decode
    stdin = sys.stdin.buffer

    def events() -> Any:
        while True:
            header = stdin.read(4)
            if len(header) < 4:
                raise _Incomplete
            size = int.from_bytes(header, "little")
            if not size:
                return
            frame = stdin.read(size)
            if len(frame) < size:
                raise _Incomplete
            yield from decode(frame)

    try:
        payload = write_fed_files(events(), events_path, states_path, projection_path)
    except _Incomplete:
        return 3  # the parent went away: nothing was written
    except OutputError as error:
        payload = orjson.dumps({"outputError": str(error)})
    sys.stdout.buffer.write(payload)
    sys.stdout.buffer.flush()
    os._exit(0)  # the per-key entries need no freeing: the process ends here


if __name__ == "__main__":
    if sys.argv[1] == "--fed":
        sys.exit(_fed_worker(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
    sys.exit(_worker(Path(sys.argv[1])))
