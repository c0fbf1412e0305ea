"""Batching accepted requests into payload files in the drop folder.

Each file is one OTLP protobuf ``ExportTraceServiceRequest``: the serialized requests of a batch
concatenated in arrival order (``resource_spans`` is a repeated field, so the concatenation of
valid requests is itself a valid request, and ``kvonce conformance`` reads it as ``otlp-proto``).

* Names: ``otlp-<UTC yyyymmddThhmmss.fffZ>-<seq>.pb``; they sort in write order.
* Files appear whole: written through :func:`~kvonce_pipeline.engine.atomic.atomic_writer` (a temporary
  ``.<name>.<random>.tmp`` beside it, fsync, rename). A watcher must ignore dot-files.
* When: every ``flush_seconds`` (a timer thread), as soon as the open batch reaches
  ``max_batch_bytes``, and on :meth:`DropBatcher.close`. ``flush_seconds == 0`` writes each request
  to its own file *before* the request is acknowledged (durable on 200, slower).
* Failure: a batch that cannot be written stays in memory, in order, and is retried on the next
  tick; meanwhile :meth:`DropBatcher.add` refuses new data (:class:`BatchUnavailable`, which the
  receiver turns into 503 + ``Retry-After`` so exporters keep the data and retry).
* Crash safety (``flush_seconds > 0``): every request taken is also appended to a journal in the
  drop folder, and :meth:`DropBatcher.commit` fsyncs it (group commit) before the request is
  answered. The open batch is a list of *segments*, one per future payload file; each segment has
  its payload name from the start and its own journal ``.kvonce-collector.<payload name>.journal``.
  A segment is written as: payload file (atomic), then its journal is deleted. A journal found at
  start-up (:func:`recover_journals`) is therefore either not yet written (its payload name does
  not exist: write it now, without a torn last record) or already written (delete the journal):
  a crash at any point neither loses nor duplicates a batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..engine.atomic import atomic_writer, fsync_directory
from ..engine.errors import OutputError
from ..engine.limits import MIB

log = logging.getLogger("kvonce.collector")

#: 64 MiB of protobuf per file: with one request of up to 64 MiB on top, a file stays under the
#: drop-folder sensor's 256 MiB limit (``Limits.max_drop_file_bytes``).
DEFAULT_MAX_BATCH_BYTES = 64 * MIB
#: 256 MiB held in memory while the drop folder cannot be written; past it, new data gets 503.
DEFAULT_MAX_PENDING_BYTES = 256 * MIB
FILE_PREFIX = "otlp-"
FILE_SUFFIX = ".pb"
#: ``.kvonce-collector.<payload name>.journal``: a dot-file, which the drop-folder sensor ignores.
JOURNAL_PREFIX = ".kvonce-collector."
JOURNAL_SUFFIX = ".journal"
#: A journal record: length of the blob, number of spans, CRC-32 of the blob (big-endian), blob.
_RECORD = struct.Struct(">III")


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


def journal_path(payload: Path) -> Path:
    return payload.with_name(f"{JOURNAL_PREFIX}{payload.name}{JOURNAL_SUFFIX}")


def read_journal(path: Path) -> list[tuple[bytes, int]]:
    """The complete records of a journal, in order. A torn or corrupt record ends it: that request
    was never acknowledged (acknowledgement waits for the fsync of the whole record)."""
    data = path.read_bytes()
    records: list[tuple[bytes, int]] = []
    offset = 0
    while offset + _RECORD.size <= len(data):
        length, spans, crc = _RECORD.unpack_from(data, offset)
        start = offset + _RECORD.size
        blob = data[start:start + length]
        if len(blob) != length or zlib.crc32(blob) != crc:
            break
        records.append((blob, spans))
        offset = start + length
    return records


class _Segment:
    """Part of the open batch that becomes one payload file, with its journal.

    ``commit`` (group commit): a request waits until the journal is fsynced up to the end of its
    record, or until the segment's payload file is written (then the journal is gone)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.journal = journal_path(target)
        self.records: list[tuple[bytes, int]] = []
        self.bytes = 0
        self.spans = 0
        self._fd: int | None = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._written = 0   # bytes appended (under the batcher's lock)
        self._synced = 0    # bytes known durable
        self._sync_lock = threading.Lock()

    def append(self, blob: bytes, spans: int) -> int:
        """Append one record (caller holds the batcher's lock); returns the offset to commit."""
        assert self._fd is not None
        record = _RECORD.pack(len(blob), spans, zlib.crc32(blob)) + blob
        written = os.write(self._fd, record)
        while written < len(record):  # a short write (rare: a signal, a full disk)
            more = os.write(self._fd, record[written:])
            if more <= 0:
                raise OSError("short write to the journal")
            written += more
        self._written += len(record)
        self.records.append((blob, spans))
        self.bytes += len(blob)
        self.spans += spans
        return self._written

    def commit(self, upto: int) -> None:
        with self._sync_lock:
            if self._synced >= upto:
                return  # another request's fsync, or the payload file, covered it
            target = self._written
            assert self._fd is not None
            os.fsync(self._fd)
            self._synced = max(self._synced, target)

    def discard(self) -> None:
        """The payload file is written (fsynced, renamed): the journal is no longer needed."""
        with self._sync_lock:
            self._synced = 1 << 62
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
        with contextlib.suppress(OSError):
            os.unlink(self.journal)


def find_journals(directory: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [directory / n for n in names if n.startswith(JOURNAL_PREFIX + FILE_PREFIX) and n.endswith(JOURNAL_SUFFIX)]


def recover_journals(directory: Path) -> list[tuple[Path, list[tuple[bytes, int]], bool]]:
    """Turn the journals a killed collector left into payload files (before listening).

    Returns ``(payload path, records, written now)`` per journal, in write order. A journal whose
    payload file exists was already written (the crash came between the rename and the delete); it
    is only deleted. Raises :class:`OutputError` if a payload file cannot be written.
    """
    recovered = []
    for journal in find_journals(directory):
        target = journal.with_name(journal.name[len(JOURNAL_PREFIX):-len(JOURNAL_SUFFIX)])
        try:
            records = read_journal(journal)
        except OSError as exc:
            raise OutputError(f"cannot read the journal {journal}: {exc.strerror or exc}") from exc
        written_now = False
        if records and not target.exists():
            with atomic_writer(target) as out:
                for blob, _ in records:
                    out.write(blob)
            written_now = True
        with contextlib.suppress(OSError):
            os.unlink(journal)
        recovered.append((target, records, written_now))
    if recovered:
        fsync_directory(directory)
    return recovered


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
        self._segments: list[_Segment] = []    # the open batch, one segment per future file
        self._open: _Segment | None = None     # the segment new requests go to
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
        """Start the flush timer (none when every request is written synchronously). A drop folder
        that cannot be written makes the batcher unhealthy from the start, not at the first flush."""
        self.probe()
        if self.flush_seconds > 0 and self._timer is None:
            self._timer = threading.Thread(target=self._run_timer, name="kvonce-drop-flush", daemon=True)
            self._timer.start()
        return self

    def close(self) -> None:
        """Refuse new data, stop the timer, and write what is left.

        Raises :class:`OutputError` if the last batch cannot be written: that data was
        acknowledged, so the caller must say loudly that it is lost (its journal stays in the drop
        folder and the next start writes it).
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
        """True when files can be written. While unhealthy with nothing waiting to be written, each
        call tries the folder again, so health turns back to ok once the disk has room."""
        if self.last_error is not None:
            with self._lock:
                idle = not self._segments
            if idle:
                self.probe()
        return self.last_error is None

    def probe(self) -> bool:
        """Create, sync and remove a dot-file in the drop folder: can files be written there now?"""
        path = self.directory / f"{JOURNAL_PREFIX}probe.{os.getpid()}.{threading.get_ident()}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"\0" * 512)
                os.fsync(fd)
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
        except OSError as exc:
            self.last_error = f"cannot write in the drop folder {self.directory}: {exc.strerror or exc}"
            return False
        self.last_error = None
        return True

    def _next_target(self) -> Path:
        """A payload name not taken by a file or a journal (caller holds the lock)."""
        while True:
            self._seq += 1
            path = self.directory / payload_name(time.time_ns(), self._seq)
            if not path.exists() and not journal_path(path).exists():
                return path

    def add(self, blob: bytes, spans: int) -> "tuple[_Segment, int] | None":
        """Take one validated request (protobuf bytes). When this returns, the data is either in
        the open batch and its journal (pass the returned ticket to :meth:`commit` before
        acknowledging) or, with ``flush_seconds == 0``, in a file (``None``). Raises
        :class:`BatchUnavailable` when it cannot be taken; nothing was kept then."""
        if self.flush_seconds == 0:
            with self._lock:
                if self._closed:
                    raise BatchUnavailable("the receiver is shutting down")
            try:
                with self._write_lock:
                    with self._lock:
                        target = self._next_target()
                    self._write(target, [(blob, spans)])
            except OutputError as error:
                self.last_error = str(error)
                raise BatchUnavailable(f"cannot write to the drop folder: {error}") from None
            self.last_error = None
            return None
        with self._lock:
            if self._closed:
                raise BatchUnavailable("the receiver is shutting down")
            if self.last_error is not None and self._segments:
                # data is waiting for the folder: the flush timer retries it; with nothing waiting,
                # this request itself tries the folder again (below), and cleans up if it fails
                raise BatchUnavailable(f"cannot write to the drop folder: {self.last_error}")
            if self._pending_bytes + len(blob) > self.max_pending_bytes and self._segments:
                raise BatchUnavailable("too much data waiting to be written")
            segment = self._open
            try:
                if segment is None:
                    self.directory.mkdir(parents=True, exist_ok=True)  # as atomic_writer does
                    segment = _Segment(self._next_target())
                    self._segments.append(segment)
                    self._open = segment
                    fsync_directory(self.directory)  # the journal's name must survive a power cut
                offset = segment.append(blob, spans)
            except OSError as exc:
                # a record may be half in the journal: nothing more goes after it
                self._open = None
                if segment is not None and not segment.records:
                    # nothing acknowledged in it: close and remove it, so a refused request leaves
                    # no journal and no descriptor behind
                    self._segments.remove(segment)
                    segment.discard()
                self.last_error = f"cannot write the journal in the drop folder: {exc.strerror or exc}"
                raise BatchUnavailable(self.last_error) from None
            self.last_error = None  # the folder takes data again
            self._pending_bytes += len(blob)
            self._pending_spans += spans
            full = segment.bytes >= self.max_batch_bytes
            if full:
                self._open = None  # the next request starts the next file
        if full:
            self._wake.set()
        return segment, offset

    def commit(self, ticket: "tuple[_Segment, int] | None") -> None:
        """Make the request of ``ticket`` durable (fsync of the journal, shared by concurrent
        requests) before it is acknowledged. Raises :class:`BatchUnavailable` if it cannot."""
        if ticket is None:
            return
        segment, offset = ticket
        try:
            segment.commit(offset)
        except OSError as exc:
            raise BatchUnavailable(f"cannot sync the journal in the drop folder: {exc.strerror or exc}") from None

    def flush(self, *, raise_errors: bool = False) -> list[WrittenFile]:
        """Write the open batch now (one file per segment of about ``max_batch_bytes``)."""
        with self._write_lock:
            with self._lock:
                batch, self._segments, self._open = self._segments, [], None
                self._pending_bytes = self._pending_spans = 0
            if not batch:
                return []
            written: list[WrittenFile] = []
            try:
                while batch:
                    segment = batch[0]
                    if segment.records:
                        written.append(self._write(segment.target, segment.records))
                    segment.discard()  # after the rename: a crash in between leaves a journal
                    del batch[0]       # whose payload exists, which recovery only deletes
            except OutputError as error:
                with self._lock:  # keep what was not written, in front of anything newer
                    self._segments[:0] = batch
                    self._pending_bytes += sum(seg.bytes for seg in batch)
                    self._pending_spans += sum(seg.spans for seg in batch)
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

    def _write(self, path: Path, chunk: list[tuple[bytes, int]]) -> WrittenFile:
        """One payload file for ``chunk``; caller holds the write lock."""
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
