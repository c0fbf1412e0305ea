"""OTLP/HTTP on uvicorn: ``POST /v1/traces`` and ``GET /health`` as a small ASGI application.

Why uvicorn with its h11 parser (``docs/collector.md`` has the comparison): h11 is a strict,
pure-Python HTTP/1.1 state machine that refuses by itself what request smugglers rely on (two
different ``Content-Length`` values, a length that is not digits, any transfer coding but
``chunked``, chunk sizes that are not hex digits, a missing or repeated ``Host``), and uvicorn is
the server Dagster's own web UI runs on, so it adds no dependency and is maintained by the same
ecosystem. The request work is protobuf decoding, not parsing HTTP: with requests of hundreds of
spans, h11's per-request cost is a few percent of the total (the load benchmark's figures are in
``docs/collector.md``).

What uvicorn does not do and a public receiver needs is added here, in a subclass of its h11
protocol (uvicorn takes the protocol class as a setting): a **header deadline**
(:data:`HEADER_SECONDS` from a request's first byte, or from the connection's opening, to its last
header; an idle keep-alive connection is closed after the same time), a **connection cap**
(:data:`MAX_CONNECTIONS`; one more is answered 503 and closed at once), and error answers that say
which rule the request broke (uvicorn answers every parse error with a bare "Invalid HTTP request
received."; h11's own reason and status hint, 501 for an unknown transfer coding, are sent instead).
The rest is the ASGI application: auth before any body byte is read, :data:`MAX_BODIES_IN_FLIGHT`
bodies read and decoded at once, a body idle timeout, and the receiver's own contract from
:mod:`kvonce_pipeline.collector.otlp_http`. Decoding and the durable intake (fsync) run on a thread pool so
the event loop keeps answering ``/health`` and reading other requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import h11
import orjson
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

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

if TYPE_CHECKING:
    from .receiver import Receiver

log = logging.getLogger("kvonce.collector")

TRACES_PATH = "/v1/traces"
HEALTH_PATHS = ("/health", "/healthz")
#: Seconds a client is asked to wait (``Retry-After``) when the receiver cannot take data now.
RETRY_AFTER_SECONDS = 2
#: Open connections served at once; one more is answered 503 and closed before anything is read.
MAX_CONNECTIONS = 256
#: Seconds a connection has to send a request's line and headers, counted from the request's first
#: byte (or the connection's opening); an idle keep-alive connection is closed after them too. A
#: client sending a header byte every few seconds (slowloris) cannot hold a connection longer.
HEADER_SECONDS = 15.0
#: Longest silence while a body is being read (a client that stops sending mid-body).
BODY_IDLE_SECONDS = 30.0
#: The whole body must arrive within this, plus one second per :data:`MIN_BODY_RATE` bytes: a
#: client that sends a byte just often enough to beat the idle time cannot hold a body slot.
BODY_SECONDS = 60.0
MIN_BODY_RATE = 64 * 1024
#: How long a request waits for a body slot (:data:`MAX_BODIES_IN_FLIGHT`) before 503 + Retry-After.
SLOT_WAIT_SECONDS = 10.0
#: Requests reading or decoding a body at once; the others wait with their bodies in the kernel's
#: buffers (uvicorn stops reading a connection once 64 KiB of its body are buffered). Memory held by
#: bodies in flight is so at most about 2 x this x the body cap (the compressed body and what it
#: inflates to), plus at most 64 KiB + one socket read per waiting connection.
MAX_BODIES_IN_FLIGHT = 8
#: The request line and headers together: h11 refuses a head still incomplete past it (a head that
#: arrives whole in one socket read, at most 256 KiB, is taken).
MAX_HEADER_BYTES = 64 * 1024
#: Set in a request's ``scope["state"]`` when the protocol answered it itself (a parse error, an
#: oversized chunk): the application's own answer is dropped and must not be counted again.
ANSWERED = "kvonce.answered"
_JSON = Media.JSON.value.encode()
_OVER_CAPACITY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 69\r\nRetry-After: 2\r\nConnection: close\r\n\r\n"
                  b'{"code":14,"message":"too many open connections: retry in a moment"}\n')

_BYTEARRAY = re.compile(r"bytearray\((b'.*?'|b\".*?\")\)")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class _Disconnected(Exception):
    """The client went away before its body was read: nothing to answer."""


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, a connection cap and errors that say why."""

    owner: "HttpServer"  # set on the subclass made for each server

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._turned_away = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= MAX_CONNECTIONS:
            self._turned_away = True
            self.transport = transport  # connection_lost closes it
            transport.write(_OVER_CAPACITY)
            transport.close()
            self.owner.receiver.refuse(503)
            return
        super().connection_made(transport)
        self._expect_headers()

    def data_received(self, data: bytes) -> None:
        if self._turned_away:
            return
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._expect_headers()  # a request's head is arriving (or more of it)
        else:
            self._headers_in()
            self._check_chunk_size()

    def _check_chunk_size(self) -> None:
        """A chunk announced larger than the body cap is refused when announced, not after the
        cap's worth of bytes or a silence (h11 takes up to 20 hex digits; it keeps the announced
        size in its chunked reader, the one place it is known: if that changes, the cap still
        applies as bytes arrive)."""
        announced = getattr(getattr(self.conn, "_reader", None), "_bytes_in_chunk", 0)
        limit = self.owner.receiver.config.max_body_bytes
        if isinstance(announced, int) and announced > limit and not self.transport.is_closing():
            self._answer_and_close(413, f"a chunk of {announced} bytes exceeds the limit of {limit} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_in()
        super().connection_lost(exc)

    def _expect_headers(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(HEADER_SECONDS, self._headers_late)

    def _headers_in(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("kvonce collector: closed a connection from %s: no complete request head within %.0f s",
                     (self.client or ("?",))[0], HEADER_SECONDS)
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """Answer a request h11 refused with h11's reason and status (uvicorn's says neither).

        uvicorn calls this inside its ``except h11.RemoteProtocolError`` block, so the error in
        hand is h11's."""
        error = sys.exc_info()[1]
        if not isinstance(error, h11.RemoteProtocolError):
            error = None
        status = error.error_status_hint if error is not None else 400
        reason = _BYTEARRAY.sub(r"\1", str(error or msg))  # h11 shows the offending bytes as bytearray(b'...')
        self._answer_and_close(status, f"malformed HTTP/1.1 request: {reason:.300}")

    def _answer_and_close(self, status: int, message: str) -> None:
        """Answer now, from the protocol (the application may be waiting for body bytes), and close."""
        if self.conn.our_state in (h11.DONE, h11.MUST_CLOSE):
            self.transport.close()  # this request was answered already (its body is what broke): just close
            return
        if self.scope is not None:
            self.scope["state"][ANSWERED] = True
        self.owner.receiver.refuse(status)
        log.warning("kvonce collector: %d %s from %s", status, message, (self.client or ("?",))[0])
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the application's answer, if it comes, is dropped
            self.cycle.message_event.set()
        body, content_type = error_body(None, status, message)
        try:
            self.transport.write(self.conn.send(h11.Response(
                status_code=status, reason=_reason(status),
                headers=[(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")])) or b"")
            self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            pass  # an answer was already under way: closing is all that is left
        self.transport.close()


def _reason(status: int) -> bytes:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _has_body(scope: dict[str, Any]) -> bool:
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (length is not None and length.strip() != "0")


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class OtlpHttpApp:
    """The ASGI application: routing, auth, body reading, and the hand-over to the receiver."""

    def __init__(self, receiver: "Receiver", executor: ThreadPoolExecutor) -> None:
        self.receiver = receiver
        self.executor = executor
        self.bodies = asyncio.Semaphore(MAX_BODIES_IN_FLIGHT)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        path = scope["path"].rstrip("/") or "/"
        if method in ("GET", "HEAD"):
            # a body nobody reads would keep the connection busy (uvicorn discards it as it comes,
            # and every byte resets the keep-alive timer): close after answering instead
            close = _has_body(scope)
            if path in HEALTH_PATHS:
                health = self.receiver.health()
                await _respond(send, 200 if health["status"] == "ok" else 503, orjson.dumps(health), _JSON,
                               close=close)
            elif path == TRACES_PATH:
                await _fail(send, 405, f"{method} is not allowed on {TRACES_PATH}: use POST", None, close=close)
            else:
                await _fail(send, 404, f"no such endpoint {path!r:.80}: send traces to POST {TRACES_PATH}", None,
                            close=close)
        elif method != "POST":
            if path == TRACES_PATH:
                await _fail(send, 405, f"{method} is not allowed on {TRACES_PATH}: use POST", None, close=True)
            else:
                await _fail(send, 404, f"no such endpoint {path!r:.80}", None, close=True)
        elif path != TRACES_PATH:
            await _fail(send, 404, f"no such endpoint {path!r:.80}: send traces to POST {TRACES_PATH}", None,
                        close=True)
        else:
            await self._post(scope, receive, send)

    async def _post(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        receiver = self.receiver
        request_id = receiver._enter()
        if request_id is None:
            receiver.refuse(503)
            await _fail(send, 503, "the receiver is shutting down", None, close=True,
                        retry_after=RETRY_AFTER_SECONDS)
            return
        client = (scope.get("client") or ("?",))[0]
        label = f"request #{request_id} (POST {TRACES_PATH} from {client})"
        try:
            await self._export(scope, receive, send, label)
        except _Disconnected as exc:
            log.info("kvonce collector: %s: connection lost (%s)", label, exc)
        except asyncio.CancelledError:
            # stopped past the drain time: say "later" (exporters retry a 503, not the 500 uvicorn
            # would send); if the spans did reach the journal, the retry is recognised by span id
            receiver.refuse(503)
            await _fail(send, 503, f"{label}: the receiver stopped before this request was done", None,
                        close=True, retry_after=RETRY_AFTER_SECONDS)
        finally:
            receiver._leave()

    async def _export(self, scope: dict[str, Any], receive: Receive, send: Send, label: str) -> None:
        receiver = self.receiver
        config = receiver.config
        loop = asyncio.get_running_loop()
        media: Media | None = None
        body_read = False
        try:
            token = config.token
            if token and not bearer_matches(_header(scope, b"authorization") or "", token):
                raise HttpError(401, "missing or wrong 'Authorization: Bearer <token>' (KVONCE_COLLECTOR_TOKEN)")
            media = media_type(_header(scope, b"content-type"))
            coding = content_coding(_header(scope, b"content-encoding"))
            length = _header(scope, b"content-length")
            chunked = _header(scope, b"transfer-encoding") is not None
            if chunked and length is not None:  # h11 lets chunked win; a strict receiver refuses both
                raise HttpError(400, "both Transfer-Encoding and Content-Length: the body's end is ambiguous")
            if length is None and not chunked:
                raise HttpError(411, "Content-Length (or chunked transfer encoding) is required")
            if length is not None and int(length) > config.max_body_bytes:  # digits only: checked by h11
                raise HttpError(413, f"request body of {length} bytes exceeds the limit of {config.max_body_bytes} bytes")
            try:
                await asyncio.wait_for(self.bodies.acquire(), SLOT_WAIT_SECONDS)
            except TimeoutError:
                raise HttpError(503, f"{MAX_BODIES_IN_FLIGHT} requests are being read: retry in a moment",
                                retry_after=RETRY_AFTER_SECONDS) from None
            try:  # the slot is held until the spans are in the journal: decoded requests never pile up
                body = await _read_body(receive, config.max_body_bytes)
                body_read = True
                decoded = await loop.run_in_executor(self.executor, _decode, body, coding, media, label,
                                                     config.max_body_bytes, config.max_compression_ratio,
                                                     config.max_context_depth)
                del body
                stored, duplicates = await loop.run_in_executor(self.executor, receiver.accept, decoded)
            finally:
                self.bodies.release()
        except HttpError as error:
            if scope["state"].get(ANSWERED):
                return  # the protocol answered (and counted) this request already
            receiver.refuse(error.status)
            message = error.message if error.message.startswith(label) else f"{label}: {error.message}"
            log.log(logging.INFO if error.status in (401, 503) else logging.WARNING,
                    "kvonce collector: %d %s", error.status, message)
            await _fail(send, error.status, message, media, close=not body_read, retry_after=error.retry_after)
            return
        log.debug("kvonce collector: %s: %d spans stored, %d duplicates", label, stored, duplicates)
        assert media is not None
        await _respond(send, 200, success_body(media, message=decoded.note), media.value.encode())


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, never more than ``limit`` bytes held; 413 past it, 408 after a long silence
    or when it comes slower than :data:`MIN_BODY_RATE` after the first :data:`BODY_SECONDS`."""
    parts: list[bytes] = []
    total = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        allowed = started + BODY_SECONDS + total / MIN_BODY_RATE - loop.time()
        if allowed <= 0:
            raise HttpError(408, f"the body arrives too slowly ({total} bytes in {loop.time() - started:.0f} s)")
        try:
            message = await asyncio.wait_for(receive(), min(BODY_IDLE_SECONDS, allowed))
        except TimeoutError:
            if loop.time() - started >= BODY_SECONDS:
                raise HttpError(408, f"the body arrives too slowly ({total} bytes in "
                                     f"{loop.time() - started:.0f} s)") from None
            raise HttpError(408, f"no body bytes for {BODY_IDLE_SECONDS:.0f} s") from None
        if message["type"] == "http.disconnect":
            raise _Disconnected(f"body ended after {total} bytes")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
        if chunk:
            parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _decode(body: bytes, coding: str, media: Media, label: str, limit: int, max_ratio: int,
            max_context_depth: int) -> DecodedRequest:
    """Decompress and validate, on a worker thread (a decoder failure is decode_request's 400)."""
    data = decompress(body, coding, limit, max_ratio)
    return decode_request(data, media, source=label, max_context_depth=max_context_depth)


async def _fail(send: Send, status: int, message: str, media: Media | None, *, close: bool = False,
                retry_after: int | None = None) -> None:
    body, content_type = error_body(media, status, message)
    headers: list[tuple[bytes, bytes]] = []
    if status == 405:
        headers.append((b"allow", b"POST"))
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="kvonce-collector"'))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await _respond(send, status, body, content_type.encode(), headers=headers, close=close)


async def _respond(send: Send, status: int, body: bytes, content_type: bytes, *,
                   headers: list[tuple[bytes, bytes]] | None = None, close: bool = False) -> None:
    head = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(headers or ())]
    if close:  # the body was not read: the connection cannot carry another request
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class HttpServer:
    """The OTLP/HTTP listener of one :class:`~kvonce_pipeline.collector.receiver.Receiver`: uvicorn on its
    own event loop in a background thread. Binds in the constructor (``OSError`` if the address is
    taken), serves after :meth:`start`."""

    def __init__(self, receiver: "Receiver", host: str, port: int) -> None:
        self.receiver = receiver
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
        except OSError:
            self._socket.close()
            raise
        self.address: tuple[str, int] = tuple(self._socket.getsockname()[:2])
        self._executor = ThreadPoolExecutor(max_workers=2 * MAX_BODIES_IN_FLIGHT,
                                            thread_name_prefix="kvonce-collector-http")
        protocol = type("KvonceH11Protocol", (_Protocol,), {"owner": self})
        config = uvicorn.Config(
            OtlpHttpApp(receiver, self._executor), http=protocol, ws="none", interface="asgi3", lifespan="off",
            loop="asyncio", proxy_headers=False, server_header=False, headers=[("server", "kvonce-collector")],
            timeout_keep_alive=math.ceil(HEADER_SECONDS), h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            # Receiver.stop drains first; this only bounds requests still running after that
            timeout_graceful_shutdown=1, backlog=128, log_config=None, log_level=None, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a background thread; returns once the listener accepts connections."""
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="kvonce-collector-http-loop", daemon=True)
        self._thread.start()
        for _ in range(200):  # 10 s at most
            if self._server.started or not self._thread.is_alive():
                break
            self._thread.join(0.05)
        if not self._server.started:
            self.stop()
            raise OSError(f"the OTLP/HTTP server on {self.address} did not start")

    def stop(self) -> None:
        """Stop listening, close the connections (a request still running gets 503 after a second:
        :meth:`Receiver.stop` has let requests drain first), wait (bounded) for the loop to end."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._socket.close()
