"""The OTLP trace receiver: requests in, payload files in the drop folder out.

One :class:`Receiver` owns the durable intake (de-duplication, journal, batches) and health; its
listeners only decode and hand requests over: OTLP/HTTP on uvicorn
(:mod:`kvonce_pipeline.collector.otlp_http_server`) and OTLP/gRPC on grpcio (:mod:`kvonce_pipeline.collector.otlp_grpc`).
What a request may be and what we answer is in :mod:`kvonce_pipeline.collector.otlp_http`; batching and files
in :mod:`kvonce_pipeline.collector.drop_batch`; retries recognised in :mod:`kvonce_pipeline.collector.span_dedupe`.

The guarantee: a span answered with 200 is in the open batch *and* in its fsynced journal in the
drop folder (or, with ``flush_seconds == 0``, already in a file), and :meth:`Receiver.stop` (called
on SIGINT/SIGTERM) stops taking requests, waits for the ones in progress, then writes the open
batch. After a crash (SIGKILL, power loss), :meth:`Receiver.start` first turns the journals left
behind into payload files (:func:`~kvonce_pipeline.collector.drop_batch.recover_journals`) and remembers the
span ids of recent files, so a client retrying a request it saw no answer to is not stored twice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.limits import Limits
from .drop_batch import (
    DEFAULT_MAX_BATCH_BYTES,
    FILE_PREFIX,
    FILE_SUFFIX,
    BatchUnavailable,
    DropBatcher,
    WrittenFile,
    recover_journals,
)
from .otlp_grpc import GrpcReceiver
from .otlp_http import DecodedRequest, HttpError
from .otlp_http_server import RETRY_AFTER_SECONDS, TRACES_PATH, HttpServer
from .uploader import Uploader
from .span_dedupe import DEFAULT_WINDOW_SECONDS, RecentSpanIds, span_keys, without_spans

log = logging.getLogger("kvonce.collector")

#: At start-up, the span ids of payload files written within the duplicate window are remembered,
#: reading at most this many bytes of them (newest first).
MAX_RESEED_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ReceiverConfig:
    """Everything the receiver needs; see ``kvonce collector --help`` for the user-facing form."""

    drop_dir: Path
    host: str = "127.0.0.1"
    port: int = 4318
    flush_seconds: float = 2.0
    max_body_bytes: int = Limits.max_request_bytes
    max_context_depth: int = Limits.max_context_depth
    max_compression_ratio: int = Limits.max_compression_ratio
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    #: ``Authorization: Bearer <token>`` required on ``/v1/traces`` when set.
    token: str | None = None
    dedupe_window_seconds: float = DEFAULT_WINDOW_SECONDS
    #: How long :meth:`Receiver.stop` waits for requests in progress before writing the last batch.
    drain_seconds: float = 15.0
    #: OTLP/gRPC on this port of ``host`` (0: a free one); ``None``: no gRPC listener.
    grpc_port: int | None = None
    #: A drop folder URL (``s3://bucket/drops``): ``drop_dir`` is then the local spool folder, and each
    #: finished payload file is uploaded there and removed (:mod:`kvonce_pipeline.collector.uploader`).
    upload_url: str | None = None


class Receiver:
    """One running receiver. Use as a context manager, or :meth:`start` then :meth:`stop`."""

    def __init__(self, config: ReceiverConfig) -> None:
        self.config = config
        self.batcher = DropBatcher(config.drop_dir, flush_seconds=config.flush_seconds,
                                   max_batch_bytes=config.max_batch_bytes)
        self._seen = RecentSpanIds(window_seconds=config.dedupe_window_seconds)
        self.uploader = Uploader(config.drop_dir, config.upload_url) if config.upload_url else None
        self._intake = threading.Lock()  # dedupe check + batch append are one step
        self._cond = threading.Condition()
        self._inflight = 0
        self._draining = False
        self._stopped = False
        self.http: HttpServer | None = None
        self.grpc: GrpcReceiver | None = None
        self._started = time.monotonic()
        self._request_ids = 0
        self.requests_accepted = 0
        self.spans_accepted = 0
        self.spans_duplicate = 0
        self.refused: dict[int, int] = {}
        #: ``(payload file, spans)`` written at start-up from the journals of a killed collector.
        self.recovered: list[tuple[Path, int]] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Receiver":
        """Recover journals, bind and serve in a background thread. Raises ``OSError`` if the address
        is taken, :class:`~kvonce_pipeline.engine.errors.OutputError` if a journal cannot be recovered."""
        self.recover()
        if self.uploader is not None:
            self.uploader.check()  # a URL without its backend is a ConfigError before anything is taken
            self.uploader.start()  # the spool's leftovers (and what recovery just wrote) go first
        try:
            http = HttpServer(self, self.config.host, self.config.port)
        except BaseException:
            if self.uploader is not None:
                self.uploader.stop()
            raise
        if self.config.grpc_port is not None:
            try:
                self.grpc = GrpcReceiver(self, self.config.host, self.config.grpc_port)
            except (OSError, RuntimeError) as exc:
                http.stop()
                if self.uploader is not None:
                    self.uploader.stop()
                raise OSError(f"OTLP/gRPC port {self.config.grpc_port}: {exc}") from None
        self.http = http
        self.batcher.start()
        try:
            if self.grpc is not None:
                self.grpc.start()
            http.start()
        except BaseException:
            if self.grpc is not None:
                self.grpc.begin_stop(0).wait(5)
            http.stop()
            self.batcher.close()
            if self.uploader is not None:
                self.uploader.stop()
            raise
        return self

    def recover(self) -> list[tuple[Path, int]]:
        """Write what a killed collector acknowledged (its journals) into payload files, and
        remember the span ids of recent payload files so retried requests are not stored twice."""
        drop_dir = self.config.drop_dir
        if not drop_dir.is_dir():
            return []
        for target, records, written_now in recover_journals(drop_dir):
            spans = sum(n for _, n in records)
            if written_now:
                self.recovered.append((target, spans))
                log.warning("kvonce collector: recovered %s (%d acknowledged spans from the journal of a "
                            "collector that was stopped abruptly)", target.name, spans)
        self._reseed(drop_dir)
        return self.recovered

    def _reseed(self, drop_dir: Path) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        horizon = time.time() - self.config.dedupe_window_seconds
        recent: list[tuple[float, Path]] = []
        for path in drop_dir.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"):
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            if mtime >= horizon:
                recent.append((mtime, path))
        budget = MAX_RESEED_BYTES
        for _, path in sorted(recent, reverse=True):
            try:
                data = path.read_bytes()
                message = ExportTraceServiceRequest.FromString(data)
            except Exception:  # noqa: BLE001 (not ours to judge here: conformance reports it)
                continue
            self._seen.claim(span_keys(message))
            budget -= len(data)
            if budget <= 0:
                break

    @property
    def address(self) -> tuple[str, int]:
        assert self.http is not None, "the receiver is not started"
        return self.http.address

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def endpoint(self) -> str:
        """What to give an exporter: ``http://host:port/v1/traces``."""
        return self.url + TRACES_PATH

    def stop(self) -> None:
        """Stop taking requests, let those in progress finish, write the open batch.

        Raises :class:`~kvonce_pipeline.engine.errors.OutputError` if the last batch cannot be written.
        Safe to call twice.
        """
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._draining = True
        # New requests are refused from here (503 / UNAVAILABLE, which clients retry); those in
        # progress on either listener share one drain time; what is left then is answered 503 too.
        grpc_stopped = self.grpc.begin_stop(self.config.drain_seconds) if self.grpc is not None else None
        with self._cond:
            if not self._cond.wait_for(lambda: self._inflight == 0, timeout=self.config.drain_seconds):
                log.warning("kvonce collector: %d requests still in progress after %g s; they are answered "
                            "503 / UNAVAILABLE and their clients retry", self._inflight, self.config.drain_seconds)
        if self.http is not None:
            self.http.stop()
        if grpc_stopped is not None:
            grpc_stopped.wait(5)
        try:
            self.batcher.close()
        finally:
            if self.uploader is not None:
                self.uploader.stop()  # the last batch too; what fails stays in the spool for the next start

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- requests ----------------------------------------------------------------------------
    def _enter(self) -> int | None:
        """Count a request in progress; ``None`` when draining (it must not be acknowledged)."""
        with self._cond:
            if self._draining:
                return None
            self._inflight += 1
            self._request_ids += 1
            return self._request_ids

    def _leave(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def accept(self, decoded: DecodedRequest) -> tuple[int, int]:
        """Put a validated request's new spans into the batch and make them durable (journal
        fsync) before returning ``(stored, duplicates)``.

        Raises ``HttpError(503)`` when the batch cannot take it (the client keeps it and retries).
        """
        keys = span_keys(decoded.message)
        with self._intake:
            fresh = self._seen.claim(keys)
            duplicates = fresh.count(False)
            stored = len(keys) - duplicates
            if stored:
                blob = decoded.blob if not duplicates else without_spans(decoded.message, fresh).SerializeToString()
                try:
                    ticket = self.batcher.add(blob, stored)
                except BatchUnavailable as exc:
                    self._seen.release(keys, fresh)
                    raise HttpError(503, str(exc), retry_after=RETRY_AFTER_SECONDS) from None
            self.requests_accepted += 1
            self.spans_accepted += stored
            self.spans_duplicate += duplicates
        if stored:
            try:  # outside the intake lock: concurrent requests share one fsync (group commit)
                self.batcher.commit(ticket)
            except BatchUnavailable as exc:
                # the spans stay in the batch (and its ids claimed): a retry gets 200 without a copy
                raise HttpError(503, str(exc), retry_after=RETRY_AFTER_SECONDS) from None
        if duplicates:
            log.info("kvonce collector: dropped %d span(s) already accepted (a client retry)", duplicates)
        return stored, duplicates

    def refuse(self, status: int) -> None:
        with self._cond:
            self.refused[status] = self.refused.get(status, 0) + 1

    # -- reporting ---------------------------------------------------------------------------
    @property
    def files(self) -> list[WrittenFile]:
        """The most recent payload files written (up to 1000)."""
        return list(self.batcher.recent_files)

    def health(self) -> dict[str, Any]:
        if self._draining:
            status = "stopping"
        elif not self.batcher.healthy or (self.uploader is not None and self.uploader.last_error is not None):
            status = "degraded"
        else:
            status = "ok"
        last = self.batcher.recent_files[-1].path.name if self.batcher.recent_files else None
        upload = {} if self.uploader is None else {
            "uploadUrl": self.uploader.url, "filesUploaded": self.uploader.uploaded,
            "filesToUpload": len(self.uploader.pending()), "lastUploadError": self.uploader.last_error}
        return {
            "status": status,
            "uptimeSeconds": round(time.monotonic() - self._started, 3),
            "flushSeconds": self.config.flush_seconds,
            "requestsAccepted": self.requests_accepted,
            "spansAccepted": self.spans_accepted,
            "spansDuplicate": self.spans_duplicate,
            "spansPending": self.batcher.pending_spans,
            "spansWritten": self.batcher.spans_written,
            "filesWritten": self.batcher.files_written,
            "lastFile": last,
            "refused": {str(k): v for k, v in sorted(self.refused.items())},
            "lastError": self.batcher.last_error,
            **upload,
        }
