"""The OTLP/HTTP trace receiver: ``POST /v1/traces`` in, payload files in the drop folder out.

A stdlib ``ThreadingHTTPServer`` (one thread per connection, HTTP/1.1 keep-alive, which is what the
OpenTelemetry exporters' ``requests`` sessions use): no extra dependency, and the work per request
is protobuf parsing plus the KvOnce mapping, not I/O. What a request may be and what we answer is in
:mod:`kvonce_pipeline.otlp_http`; batching and files in :mod:`kvonce_pipeline.drop_batch`; retries
recognised in :mod:`kvonce_pipeline.span_dedupe`.

The guarantee: a span answered with 200 is in the open batch *and* in its fsynced journal in the
drop folder (or, with ``flush_seconds == 0``, already in a file), and :meth:`Receiver.stop` (called
on SIGINT/SIGTERM) stops taking requests, waits for the ones in progress, then writes the open
batch. After a crash (SIGKILL, power loss), :meth:`Receiver.start` first turns the journals left
behind into payload files (:func:`~kvonce_pipeline.drop_batch.recover_journals`) and remembers the
span ids of recent files, so a client retrying a request it saw no answer to is not stored twice.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from .drop_batch import (
    DEFAULT_MAX_BATCH_BYTES,
    FILE_PREFIX,
    FILE_SUFFIX,
    BatchUnavailable,
    DropBatcher,
    WrittenFile,
    recover_journals,
)
from .limits import Limits
from .otlp_grpc import GrpcReceiver
from .otlp_http import (
    DecodedRequest,
    HttpError,
    Media,
    bearer_matches,
    content_coding,
    decode_request,
    decompress,
    error_body,
    media_type,
    success_body,
)
from .span_dedupe import DEFAULT_WINDOW_SECONDS, RecentSpanIds, span_keys, without_spans

log = logging.getLogger("kvonce.collector")

TRACES_PATH = "/v1/traces"
HEALTH_PATHS = ("/health", "/healthz")
#: Seconds a client is asked to wait (``Retry-After``) when the receiver cannot take data now.
RETRY_AFTER_SECONDS = 2
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
    max_body_bytes: int = Limits.max_body_bytes
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


#: Open connections served at once; more are answered 503 and closed at once (one thread each).
MAX_CONNECTIONS = 256
#: Seconds a connection has to send a request's line and headers, counted from the end of the
#: previous request (so an idle keep-alive connection is closed after it too): a client sending a
#: header byte every few seconds (slowloris) cannot hold a thread for longer.
HEADER_SECONDS = 15.0
#: Requests reading or decoding a body at once; the others wait with their bodies in the kernel's
#: buffers. Memory held by bodies in flight is so at most about 2 x this x the body cap (the
#: compressed body and what it inflates to).
MAX_BODIES_IN_FLIGHT = 8
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_READ_BLOCK = 1024 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an idle keep-alive connection must not keep the process alive
    allow_reuse_address = True
    request_queue_size = 128
    receiver: "Receiver"

    def server_activate(self) -> None:
        super().server_activate()
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.bodies = threading.BoundedSemaphore(MAX_BODIES_IN_FLIGHT)
        self._deadlines: dict[socket.socket, float] = {}
        self._deadlines_lock = threading.Lock()
        self._reaper = threading.Thread(target=self._reap, name="kvonce-collector-deadlines", daemon=True)
        self._reaper.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 2\r\n"
                                b"Connection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.expect_headers(request, None)
            self.connections.release()

    def expect_headers(self, connection: socket.socket, seconds: float | None) -> None:
        """Start (``seconds``) or end (``None``) the header deadline of ``connection``."""
        with self._deadlines_lock:
            if seconds is None:
                self._deadlines.pop(connection, None)
            else:
                self._deadlines[connection] = time.monotonic() + seconds

    def _reap(self) -> None:
        """Once a second: shut the connections whose headers are late (their blocked read ends)."""
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self._deadlines_lock:
                late = [conn for conn, deadline in self._deadlines.items() if deadline < now]
                for conn in late:
                    del self._deadlines[conn]
            for conn in late:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Server6(_Server):
    address_family = socket.AF_INET6


class Receiver:
    """One running receiver. Use as a context manager, or :meth:`start` then :meth:`stop`."""

    def __init__(self, config: ReceiverConfig) -> None:
        self.config = config
        self.batcher = DropBatcher(config.drop_dir, flush_seconds=config.flush_seconds,
                                   max_batch_bytes=config.max_batch_bytes)
        self._seen = RecentSpanIds(window_seconds=config.dedupe_window_seconds)
        self._intake = threading.Lock()  # dedupe check + batch append are one step
        self._cond = threading.Condition()
        self._inflight = 0
        self._draining = False
        self._stopped = False
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
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
        is taken, :class:`~kvonce_pipeline.errors.OutputError` if a journal cannot be recovered."""
        self.recover()
        server_class = _Server6 if ":" in self.config.host else _Server
        httpd = server_class((self.config.host, self.config.port), _Handler)
        httpd.receiver = self
        self._httpd = httpd
        if self.config.grpc_port is not None:
            try:
                self.grpc = GrpcReceiver(self, self.config.host, self.config.grpc_port)
            except (OSError, RuntimeError) as exc:
                httpd.server_close()
                raise OSError(f"OTLP/gRPC port {self.config.grpc_port}: {exc}") from None
        self.batcher.start()
        if self.grpc is not None:
            self.grpc.start()
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="kvonce-collector-http", daemon=True)
        self._thread.start()
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
        assert self._httpd is not None, "the receiver is not started"
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

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

        Raises :class:`~kvonce_pipeline.errors.OutputError` if the last batch cannot be written.
        Safe to call twice.
        """
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._draining = True
        if self.grpc is not None:
            self.grpc.stop(self.config.drain_seconds)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        with self._cond:
            if not self._cond.wait_for(lambda: self._inflight == 0, timeout=self.config.drain_seconds):
                log.warning("kvonce collector: %d requests still in progress after %.0f s; they will "
                            "not be acknowledged", self._inflight, self.config.drain_seconds)
        self.batcher.close()

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
        elif not self.batcher.healthy:
            status = "degraded"
        else:
            status = "ok"
        last = self.batcher.recent_files[-1].path.name if self.batcher.recent_files else None
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
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kvonce-collector"
    sys_version = ""
    timeout = 30  # seconds: a stalled client or an idle keep-alive connection is dropped
    server: _Server

    def handle_one_request(self) -> None:
        self.server.expect_headers(self.connection, HEADER_SECONDS)
        super().handle_one_request()

    def parse_request(self) -> bool:
        """The request line and headers are in: end their deadline, then refuse what a strict
        server refuses before any body is read (ambiguous framing is how requests are smuggled)."""
        self.server.expect_headers(self.connection, None)
        if not super().parse_request():
            return False
        problem = self._framing_problem()
        if problem is not None:
            status, message = problem
            self.close_connection = True
            self.send_error(status, message)
            self.server.receiver.refuse(status)
            log.warning("kvonce collector: %d %s from %s", status, message, self.client_address[0])
            return False
        return True

    def _framing_problem(self) -> tuple[int, str] | None:
        lengths = self.headers.get_all("Content-Length") or []
        codings = self.headers.get_all("Transfer-Encoding") or []
        if self.request_version == "HTTP/1.1" and not self.headers.get_all("Host"):
            return 400, "HTTP/1.1 request without a Host header"
        if len(self.headers.get_all("Host") or []) > 1:
            return 400, "more than one Host header"
        if codings and lengths:
            return 400, "both Transfer-Encoding and Content-Length: the body's end is ambiguous"
        if codings and [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
            return 501, f"Transfer-Encoding {', '.join(codings)!r:.60} is not supported (only chunked)"
        if lengths:
            if len(lengths) > 1:
                return 400, "more than one Content-Length header"
            text = lengths[0].strip()
            if not (text.isascii() and text.isdigit()) or len(text) > 18:
                return 400, f"bad Content-Length {lengths[0]!r:.40}: it must be decimal digits only"
        return None

    # -- routing -----------------------------------------------------------------------------
    def _path(self) -> str:
        return urlsplit(self.path).path.rstrip("/") or "/"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self._path()
        if path in HEALTH_PATHS:
            health = self.server.receiver.health()
            self._send(200 if health["status"] == "ok" else 503, orjson.dumps(health), Media.JSON.value)
        elif path == TRACES_PATH:
            self._fail(405, f"{self.command} is not allowed on {TRACES_PATH}: use POST", None)
        else:
            self._fail(404, f"no such endpoint {path!r:.80}: send traces to POST {TRACES_PATH}", None)

    do_HEAD = do_GET

    def _other_method(self) -> None:
        if self._path() == TRACES_PATH:
            self._fail(405, f"{self.command} is not allowed on {TRACES_PATH}: use POST", None, close=True)
        else:
            self._fail(404, f"no such endpoint {self._path()!r:.80}", None, close=True)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method

    def do_POST(self) -> None:  # noqa: N802
        path = self._path()
        if path != TRACES_PATH:
            self._fail(404, f"no such endpoint {path!r:.80}: send traces to POST {TRACES_PATH}", None, close=True)
            return
        receiver = self.server.receiver
        request_id = receiver._enter()
        if request_id is None:
            self._fail(503, "the receiver is shutting down", None, close=True, retry_after=RETRY_AFTER_SECONDS)
            return
        try:
            self._export(receiver, request_id)
        except (TimeoutError, ConnectionError) as exc:
            log.info("kvonce collector: request #%d from %s: connection lost (%s)", request_id,
                     self.client_address[0], exc)
            self.close_connection = True
        finally:
            receiver._leave()

    # -- the export request ------------------------------------------------------------------
    def _export(self, receiver: Receiver, request_id: int) -> None:
        config = receiver.config
        label = f"request #{request_id} ({self.command} {TRACES_PATH} from {self.client_address[0]})"
        media: Media | None = None
        body_read = False
        try:
            self._check_auth(config.token)
            media = media_type(self.headers.get("Content-Type"))
            coding = content_coding(self.headers.get("Content-Encoding"))
            with self.server.bodies:
                body = self._read_body(config.max_body_bytes)
                body_read = True
                data = decompress(body, coding, config.max_body_bytes, config.max_compression_ratio)
                del body
                try:
                    decoded = decode_request(data, media, source=label, max_context_depth=config.max_context_depth)
                except HttpError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any decoder failure is the request's, never a dropped answer
                    raise HttpError(400, f"cannot decode the request ({type(exc).__name__}: {exc!s:.200})") from None
                del data
            stored, duplicates = receiver.accept(decoded)
        except HttpError as error:
            receiver.refuse(error.status)
            message = error.message if error.message.startswith(label) else f"{label}: {error.message}"
            level = logging.INFO if error.status in (401, 503) else logging.WARNING
            log.log(level, "kvonce collector: %d %s", error.status, message)
            self._fail(error.status, message, media, close=not body_read, retry_after=error.retry_after)
            return
        log.debug("kvonce collector: %s: %d spans stored, %d duplicates", label, stored, duplicates)
        assert media is not None
        self._send(200, success_body(media, message=decoded.note), media.value)

    def _check_auth(self, token: str | None) -> None:
        if not token:
            return
        if not bearer_matches(self.headers.get("Authorization", ""), token):
            raise HttpError(401, "missing or wrong 'Authorization: Bearer <token>' (KVONCE_COLLECTOR_TOKEN)")

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise HttpError(411, "Content-Length (or chunked transfer encoding) is required")
        length = int(length_text.strip())  # digits only: checked with the headers
        if length > limit:
            raise HttpError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes")
        body = bytearray()  # grown as bytes arrive: a Content-Length alone reserves no memory
        while len(body) < length:
            block = self.rfile.read(min(_READ_BLOCK, length - len(body)))
            if not block:
                raise ConnectionError(f"body ended after {len(body)} of {length} bytes")
            body += block
        return bytes(body)

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise HttpError(400, "malformed chunked body: a chunk-size line is cut short or too long")
            field = line.split(b";", 1)[0].strip(b" \t\r\n")
            if not _CHUNK_SIZE.fullmatch(field):  # int(x, 16) would take "-1", "0x10", "+a", "1_0"
                raise HttpError(400, f"malformed chunked body: chunk size {field[:20]!r} is not hex digits")
            size = int(field, 16)
            if size == 0:
                break
            total += size
            if total > limit:
                raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
            data = self.rfile.read(size)
            if len(data) != size or self.rfile.read(2) != b"\r\n":
                raise ConnectionError("chunked body cut short")
            parts.append(data)
        for _ in range(100):  # trailer fields: ignored, at most 100 of them
            if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                break
        else:
            raise HttpError(400, "malformed chunked body: more than 100 trailer fields")
        return b"".join(parts)

    # -- responses ---------------------------------------------------------------------------
    def _fail(self, status: int, message: str, media: Media | None, *, close: bool = False,
              retry_after: int | None = None) -> None:
        body, content_type = error_body(media, status, message)
        headers: list[tuple[str, str]] = []
        if status == 405:
            headers.append(("Allow", "POST"))
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="kvonce-collector"'))
        if retry_after is not None:
            headers.append(("Retry-After", str(retry_after)))
        self._send(status, body, content_type, headers=headers, close=close)

    def _send(self, status: int, body: bytes, content_type: str, *,
              headers: list[tuple[str, str]] | None = None, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers or ():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("kvonce collector: %s %s", self.client_address[0], format % args)
