"""OTLP/gRPC: ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` beside OTLP/HTTP.

Many SDKs export over gRPC by default (port 4317). This serves that method on grpcio's own server
(HTTP/2 framing, flow control, message size limits and gzip are grpcio's) and hands each request to
the same :class:`~kvonce_pipeline.collector.receiver.Receiver` path as an HTTP request: the same validation by
the mapping, de-duplication, journal and payload files. Only what is OTLP/gRPC's is here: how the
token travels (``authorization`` metadata) and which status codes an error maps to, per the OTLP
specification: ``UNAVAILABLE`` (with ``RetryInfo``) when the batch cannot take data now, which
clients retry; ``INVALID_ARGUMENT`` for data that will never be accepted; ``UNAUTHENTICATED`` for a
missing or wrong token; ``RESOURCE_EXHAUSTED`` from grpcio itself for a message above the body cap
(measured after decompression).

The method is registered with raw bytes in and out (no deserializer): the receiver validates and
stores the request bytes exactly as the HTTP path does, and grpcio never builds a message we would
parse a second time.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc

from . import otlp_http_server
from .otlp_http import HttpError, Media, bearer_matches, decode_request, success_body

if TYPE_CHECKING:
    from .receiver import Receiver

log = logging.getLogger("kvonce.collector")

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
METHOD = f"/{SERVICE}/Export"
#: Threads that run Export calls, and calls admitted at once (more get RESOURCE_EXHAUSTED from
#: grpcio at once rather than queueing unbounded): with bodies capped at ``max_body_bytes``, memory
#: held by requests in flight stays below ``MAX_CONCURRENT_RPCS * max_body_bytes``.
WORKERS = 8
MAX_CONCURRENT_RPCS = 16
#: A connection that has not acknowledged the server's HTTP/2 settings after this long is closed
#: (a silent or slow client): the gRPC side of the HTTP listener's header deadline.
HANDSHAKE_SECONDS = 15.0
#: A connection with no call for this long is sent GOAWAY (exporters reconnect when they next
#: export); longer than HTTP's keep-alive because gRPC channels are meant to stay open.
IDLE_SECONDS = 300.0
#: Request metadata (gRPC's headers) above this is refused by grpcio.
MAX_METADATA_BYTES = 64 * 1024

_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
          503: grpc.StatusCode.UNAVAILABLE}


def _retry_info(seconds: int) -> tuple[str, bytes]:
    """``google.rpc.RetryInfo`` as the binary trailer OTLP clients read for the back-off."""
    from google.protobuf.duration_pb2 import Duration
    from google.rpc.error_details_pb2 import RetryInfo

    return ("google.rpc.retryinfo-bin", RetryInfo(retry_delay=Duration(seconds=seconds)).SerializeToString())


class GrpcReceiver:
    """The gRPC listener of one :class:`Receiver` (started and stopped by it)."""

    def __init__(self, receiver: "Receiver", host: str, port: int) -> None:
        self.receiver = receiver
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="kvonce-collector-grpc"),
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
            options=[("grpc.max_receive_message_length", receiver.config.max_body_bytes),
                     ("grpc.max_send_message_length", 1024 * 1024),
                     ("grpc.so_reuseport", 0),
                     # the same connection cap as OTLP/HTTP; grpcio closes one more before its handshake
                     ("grpc.max_allowed_incoming_connections", otlp_http_server.MAX_CONNECTIONS),
                     # a client that never answers the server's HTTP/2 settings is dropped
                     ("grpc.http2.settings_timeout", int(HANDSHAKE_SECONDS * 1000)),
                     ("grpc.max_connection_idle_ms", int(IDLE_SECONDS * 1000)),
                     ("grpc.max_metadata_size", MAX_METADATA_BYTES)],
        )
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # bytes in, bytes out
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),))
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(target)
        if self.port == 0:
            raise OSError(f"cannot listen on {target} for OTLP/gRPC")
        self.host = host

    @property
    def endpoint(self) -> str:
        """What to give a gRPC exporter: ``http://host:port`` (insecure)."""
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._server.start()

    def begin_stop(self, grace: float) -> threading.Event:
        """Refuse new calls, give calls in progress ``grace`` seconds, then cancel the rest; the
        event is set once the server has stopped."""
        return self._server.stop(grace)

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        receiver = self.receiver
        request_id = receiver._enter()
        if request_id is None:
            context.set_trailing_metadata((_retry_info(2),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "the receiver is shutting down")
        label = f"request #{request_id} (gRPC Export from {context.peer()})"
        try:
            self._check_auth(context)
            decoded = decode_request(request, Media.PROTOBUF, source=label,
                                     max_context_depth=receiver.config.max_context_depth)
            receiver.accept(decoded)
        except HttpError as error:
            receiver.refuse(error.status)
            message = error.message if error.message.startswith(label) else f"{label}: {error.message}"
            log.log(logging.INFO if error.status in (401, 503) else logging.WARNING,
                    "kvonce collector: %s %s", _CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT).name,
                    message)
            if error.retry_after is not None:
                context.set_trailing_metadata((_retry_info(error.retry_after),))
            context.abort(_CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT), message)
        except Exception as error:  # noqa: BLE001 - never a dropped call: the client must learn why
            receiver.refuse(400)
            log.warning("kvonce collector: INVALID_ARGUMENT %s: %s: %s", label, type(error).__name__, error)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{label}: cannot decode: {type(error).__name__}")
        finally:
            receiver._leave()
        return success_body(Media.PROTOBUF, message=decoded.note)

    def _check_auth(self, context: grpc.ServicerContext) -> None:
        token = self.receiver.config.token
        if not token:
            return
        metadata: dict[str, Any] = dict(context.invocation_metadata())
        if not bearer_matches(str(metadata.get("authorization", "")), token):
            raise HttpError(401, "missing or wrong 'authorization: Bearer <token>' metadata (KVONCE_COLLECTOR_TOKEN)")
