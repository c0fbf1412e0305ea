"""Batching accepted requests into payload files in the drop folder.

Each file is one OTLP protobuf ``ExportTraceServiceRequest``: the serialized requests of a batch
concatenated in arrival order (``resource_spans`` is a repeated field, so the concatenation of
valid requests is itself a valid request, and ``kvonce conformance`` reads it as ``otlp-proto``).

* Names: ``otlp-<UTC yyyymmddThhmmss.fffZ>-<seq>.pb``; they sort in write order.
* Files appear whole: written through :func:`~kvonce_pipeline.atomic.atomic_writer` (a temporary
  ``.<name>.<random>.tmp`` beside it, fsync, rename). A watcher must ignore dot-files.
* When: every ``flush_seconds`` (a timer thread), as soon as the open batch reaches
  ``max_batch_bytes``, and on :meth:`DropBatcher.close`. ``flush_seconds == 0`` writes each request
  to its own file *before* the request is acknowledged (durable on 200, slower).
* Failure: a batch that cannot be written stays in memory, in order, and is retried on the next
  tick; meanwhile :meth:`DropBatcher.add` refuses new data (:class:`BatchUnavailable`, which the
  receiver turns into 503 + ``Retry-After`` so exporters keep the data and retry).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_writer
from .errors import OutputError
from .limits import MIB

log = logging.getLogger("kvonce.collector")

#: 64 MiB of protobuf per file: with one request of up to 64 MiB on top, a file stays under the
#: drop-folder sensor's 256 MiB limit (``Limits.max_drop_file_bytes``).
DEFAULT_MAX_BATCH_BYTES = 64 * MIB
#: 256 MiB held in memory while the drop folder cannot be written; past it, new data gets 503.
DEFAULT_MAX_PENDING_BYTES = 256 * MIB
FILE_PREFIX = "otlp-"
FILE_SUFFIX = ".pb"


class BatchUnavailable(Exception):
    """New data cannot be taken now (closed, or writes are failing); the client should retry."""


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    spans: int
    size: int
    sha256: str


def payload_name(now_ns: int, seq: int) -> str:
    """``otlp-20261128T174200.123Z-000001.pb``: UTC time to the millisecond, then a sequence."""
    seconds, rest = divmod(now_ns, 1_000_000_000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return f"{FILE_PREFIX}{stamp}.{rest // 1_000_000:03d}Z-{seq:06d}{FILE_SUFFIX}"


class DropBatcher:
    """Collects serialized requests and writes them to the drop folder as payload files."""

    def __init__(self, directory: Path, *, flush_seconds: float = 2.0,
                 max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> None:
        if flush_seconds < 0:
            raise ValueError("flush_seconds must be zero or more")
        self.directory = directory
        self.flush_seconds = flush_seconds
        self.max_batch_bytes = max_batch_bytes
        self.max_pending_bytes = max(max_pending_bytes, max_batch_bytes)
        self._lock = threading.Lock()          # guards the open batch and the counters
        self._write_lock = threading.Lock()    # one writer at a time: files keep arrival order
        self._pending: list[tuple[bytes, int]] = []
        self._pending_bytes = 0
        self._pending_spans = 0
        self._seq = 0
        self._closed = False
        self.last_error: str | None = None
        #: The last files written (a long-running receiver must not grow a list forever).
        self.recent_files: deque[WrittenFile] = deque(maxlen=1000)
        self.files_written = 0
        self.spans_written = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "DropBatcher":
        """Start the flush timer (none when every request is written synchronously)."""
        if self.flush_seconds > 0 and self._timer is None:
            self._timer = threading.Thread(target=self._run_timer, name="kvonce-drop-flush", daemon=True)
            self._timer.start()
        return self

    def close(self) -> None:
        """Refuse new data, stop the timer, and write what is left.

        Raises :class:`OutputError` if the last batch cannot be written: that data was
        acknowledged, so the caller must say loudly that it is lost.
        """
        with self._lock:
            self._closed = True
        self._stop.set()
        self._wake.set()
        if self._timer is not None:
            self._timer.join()
        self.flush(raise_errors=True)

    def _run_timer(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.flush()

    # -- data --------------------------------------------------------------------------------
    @property
    def pending_spans(self) -> int:
        return self._pending_spans

    @property
    def healthy(self) -> bool:
        return self.last_error is None

    def add(self, blob: bytes, spans: int) -> None:
        """Take one validated request (protobuf bytes). When this returns, the data is either in
        the open batch or, with ``flush_seconds == 0``, in a file. Raises :class:`BatchUnavailable`
        when it cannot be taken; nothing was kept then."""
        if self.flush_seconds == 0:
            with self._lock:
                if self._closed:
                    raise BatchUnavailable("the receiver is shutting down")
            try:
                with self._write_lock:
                    self._write([(blob, spans)])
            except OutputError as error:
                self.last_error = str(error)
                raise BatchUnavailable(f"cannot write to the drop folder: {error}") from None
            self.last_error = None
            return
        with self._lock:
            if self._closed:
                raise BatchUnavailable("the receiver is shutting down")
            if self.last_error is not None:
                raise BatchUnavailable(f"cannot write to the drop folder: {self.last_error}")
            if self._pending_bytes + len(blob) > self.max_pending_bytes and self._pending:
                raise BatchUnavailable("too much data waiting to be written")
            self._pending.append((blob, spans))
            self._pending_bytes += len(blob)
            self._pending_spans += spans
            full = self._pending_bytes >= self.max_batch_bytes
        if full:
            self._wake.set()

    def flush(self, *, raise_errors: bool = False) -> list[WrittenFile]:
        """Write the open batch now (split into files of about ``max_batch_bytes``)."""
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                self._pending_bytes = self._pending_spans = 0
            if not batch:
                return []
            written: list[WrittenFile] = []
            try:
                for chunk in _chunks(batch, self.max_batch_bytes):
                    written.append(self._write(chunk))
                    del batch[: len(chunk)]
            except OutputError as error:
                with self._lock:  # keep what was not written, in front of anything newer
                    self._pending[:0] = batch
                    self._pending_bytes += sum(len(b) for b, _ in batch)
                    self._pending_spans += sum(s for _, s in batch)
                first = self.last_error is None
                self.last_error = str(error)
                if first:
                    log.error("kvonce collector: cannot write a payload file (%s); %d spans kept in "
                              "memory, new requests get 503 until a write succeeds", error, self._pending_spans)
                if raise_errors:
                    raise
                return written
            if self.last_error is not None:
                log.warning("kvonce collector: writing payload files again")
            self.last_error = None
            return written

    def _write(self, chunk: list[tuple[bytes, int]]) -> WrittenFile:
        """One payload file for ``chunk``; caller holds the write lock."""
        self._seq += 1
        path = self.directory / payload_name(time.time_ns(), self._seq)
        while path.exists():  # another collector on the same folder, in the same millisecond
            self._seq += 1
            path = self.directory / payload_name(time.time_ns(), self._seq)
        spans = sum(s for _, s in chunk)
        with atomic_writer(path) as out:
            for blob, _ in chunk:
                out.write(blob)
        written = WrittenFile(path, spans, out.size, out.hexdigest())
        with self._lock:
            self.recent_files.append(written)
            self.files_written += 1
            self.spans_written += spans
        log.info("kvonce collector: wrote %s (%d spans, %d bytes)", path.name, spans, out.size)
        return written


def _chunks(batch: list[tuple[bytes, int]], limit: int) -> list[list[tuple[bytes, int]]]:
    chunks: list[list[tuple[bytes, int]]] = []
    current: list[tuple[bytes, int]] = []
    size = 0
    for item in batch:
        if current and size + len(item[0]) > limit:
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += len(item[0])
    if current:
        chunks.append(current)
    return chunks
