"""``kvonce collector``: run the OTLP/HTTP receiver until SIGINT/SIGTERM, then flush and exit.

Point any OpenTelemetry SDK at ``http://127.0.0.1:4318/v1/traces``; conformant payload files
(``otlp-<UTC time>-<seq>.pb``) appear in the drop folder. The server itself lives in
:mod:`kvonce_pipeline.collector.receiver`; this module is the command: options, environment, signals, exit
status. Top-level imports stay light because ``kvonce`` imports this module for every command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .receiver import ReceiverConfig

TOKEN_ENV = "KVONCE_COLLECTOR_TOKEN"
SPOOL_ENV = "KVONCE_COLLECTOR_SPOOL_DIR"
EXIT_OK = 0
EXIT_FAILED = 2  # could not listen, bad settings, or the last batch could not be written
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or more seconds, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than zero")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``kvonce collector``."""
    parser = subparsers.add_parser(
        "collector",
        help="receive OTLP/HTTP traces (POST /v1/traces) and write payload files into the drop folder",
        description="An OTLP/HTTP trace receiver. Accepts application/x-protobuf and application/json, "
                    "plain, gzip or deflate; writes batches as otlp-<UTC time>-<seq>.pb into the drop "
                    f"folder. Set {TOKEN_ENV} to require 'Authorization: Bearer <token>'. "
                    "SIGINT/SIGTERM write the open batch, then exit.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=_port, default=4318, help="port (default 4318; 0 picks a free one)")
    parser.add_argument("--grpc-port", type=_port, default=4317,
                        help="OTLP/gRPC port on the same address (default 4317; 0 picks a free one)")
    parser.add_argument("--no-grpc", action="store_true", help="serve OTLP/HTTP only")
    parser.add_argument("--drop-dir", default=None,
                        help="where payload files go (default KVONCE_DROP_DIR, else drops/ in the project); a "
                             "URL (s3://bucket/drops) needs --spool-dir: files are written there, then uploaded")
    parser.add_argument("--spool-dir", default=None,
                        help=f"with a drop folder URL: the local folder batches and journals are written to "
                             f"before each finished file is uploaded (default {SPOOL_ENV})")
    parser.add_argument("--flush-seconds", type=_non_negative_float, default=2.0,
                        help="write the open batch this often (default 2; 0 writes every request "
                             "before answering it)")
    parser.add_argument("--max-body-mib", type=_positive_float, default=None,
                        help="largest request after decompression, MiB (default 20, or KVONCE_MAX_REQUEST_BYTES)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every payload file written")
    parser.set_defaults(run=_run)


def build_config(args: argparse.Namespace) -> "ReceiverConfig":
    """Options over environment (``KVONCE_DROP_DIR``, ``KVONCE_MAX_REQUEST_BYTES``,
    ``KVONCE_MAX_CONTEXT_DEPTH``, ``KVONCE_COLLECTOR_TOKEN``) over defaults.

    The request cap is ``--max-body-mib``, else ``KVONCE_MAX_REQUEST_BYTES``, else (as before that
    variable existed) ``KVONCE_MAX_BODY_BYTES`` when it is set, else 20 MiB.

    Raises ``ValueError`` for a bad ``KVONCE_*`` value.
    """
    from ..engine.artifacts import drop_dir
    from ..engine.limits import MIB, Limits, env_name
    from .receiver import ReceiverConfig

    env = os.environ
    limits = Limits.from_env()
    if args.max_body_mib is not None:
        max_body = int(args.max_body_mib * MIB)
    elif env.get(env_name("max_body_bytes"), "").strip() and not env.get(env_name("max_request_bytes"), "").strip():
        max_body = limits.max_body_bytes
    else:
        max_body = limits.max_request_bytes
    location = (args.drop_dir or env.get("KVONCE_DROP_DIR", "")).strip()
    upload_url = drop_url(location, args.spool_dir or env.get(SPOOL_ENV, ""))
    if upload_url is not None:
        local = Path(args.spool_dir or env[SPOOL_ENV].strip())
    else:
        local = Path(args.drop_dir) if args.drop_dir else drop_dir()
    return ReceiverConfig(
        drop_dir=local,
        upload_url=upload_url,
        host=args.host,
        port=args.port,
        grpc_port=None if args.no_grpc else args.grpc_port,
        flush_seconds=args.flush_seconds,
        max_body_bytes=max(1, max_body),
        max_context_depth=limits.max_context_depth,
        max_compression_ratio=limits.max_compression_ratio,
        token=bearer_token(env.get(TOKEN_ENV)),
    )


def drop_url(configured: str, spool: str) -> str | None:
    """The drop folder URL files are uploaded to, or None for a local drop folder.

    The collector writes files (journals fsynced before answering, batches renamed into place), so a
    URL needs a local spool folder (``--spool-dir``) to write them first; without one it is refused, as
    ``Path("s3://bucket/drops")`` would be the local folder ``s3:/bucket/drops``.
    """
    from ..engine.storage import is_remote

    if not is_remote(configured):
        return None
    if not spool.strip():
        raise ValueError(f"the drop folder {configured} is a URL: the collector writes payload files into a local "
                         f"folder first and uploads each finished one; give that folder with --spool-dir (or "
                         f"{SPOOL_ENV})")
    return configured.rstrip("/")


def bearer_token(raw: str | None) -> str | None:
    """The configured token, trimmed: ``export KVONCE_COLLECTOR_TOKEN="$(cat file)"`` keeps a newline.

    A client's ``Authorization`` value is compared after trimming, so an untrimmed configured token
    could never match and every request would get 401. Blank means no auth; a token with inner
    white space cannot travel in a bearer header and is refused at start-up.
    """
    if raw is None:
        return None
    token = raw.strip()
    if not token:
        return None
    if any(char.isspace() for char in token):
        raise ValueError(f"{TOKEN_ENV} contains white space inside the token: a bearer token cannot carry it")
    return token


def _run(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    # uvicorn's own lines ("Invalid HTTP request received.") repeat ours with less detail
    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    try:
        config = build_config(args)
    except ValueError as error:
        print(f"kvonce collector: {error}", file=sys.stderr)
        return EXIT_FAILED
    return serve(config)


def serve(config: "ReceiverConfig") -> int:
    """Run until SIGINT or SIGTERM; returns the exit status.

    The listening line goes to standard output (scripts read the port from it when ``--port 0``);
    everything else to standard error.
    """
    import signal
    import threading

    from ..engine.atomic import sweep_stale_temps
    from ..engine.errors import ConfigError, OutputError
    from .receiver import Receiver

    try:  # fail now, not at the first flush, when the drop folder cannot exist
        config.drop_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"kvonce collector: cannot use the drop folder {config.drop_dir}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_FAILED
    swept = sweep_stale_temps(config.drop_dir)  # half-written files of a collector that was killed
    if swept:
        print(f"kvonce collector: removed {len(swept)} temporary file(s) left by a stopped writer",
              file=sys.stderr)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        receiver = Receiver(config)
        try:
            receiver.start()  # first recovers the journals of a collector that was killed
        except OutputError as error:
            print(f"kvonce collector: cannot recover the journal of a stopped collector: {error}", file=sys.stderr)
            return EXIT_FAILED
        except ConfigError as error:
            print(f"kvonce collector: {error}", file=sys.stderr)
            return EXIT_FAILED
        except OSError as exc:
            print(f"kvonce collector: cannot listen on {config.host}:{config.port}"
                  f"{'' if config.grpc_port is None else f' (gRPC {config.grpc_port})'}: {exc.strerror or exc}",
                  file=sys.stderr)
            return EXIT_FAILED
        if receiver.recovered:
            print(f"kvonce collector: recovered {sum(n for _, n in receiver.recovered)} acknowledged spans "
                  f"into {len(receiver.recovered)} payload file(s) from the journal of a collector that was "
                  "stopped abruptly", file=sys.stderr)
        auth = "bearer token required" if config.token else "no auth"
        flush = (f"flush every {config.flush_seconds:g} s, journaled" if config.flush_seconds
                 else "each request written before it is answered")
        grpc_note = f", OTLP/gRPC on {receiver.grpc.endpoint}" if receiver.grpc is not None else ""
        where = (f"drop folder {config.drop_dir}" if config.upload_url is None
                 else f"drop folder {config.upload_url}, spool folder {config.drop_dir}")
        print(f"kvonce collector: listening on {receiver.endpoint}{grpc_note} ({where}, "
              f"{flush}, {auth})", flush=True)
        if config.host not in _LOOPBACK and not config.token:
            print(f"kvonce collector: warning: listening on {config.host} without {TOKEN_ENV}: anyone who "
                  "can reach this port can add spans to the drop folder", file=sys.stderr)
        while not stop.wait(0.5):
            pass
        print("kvonce collector: stopping: finishing requests in progress and writing the open batch",
              file=sys.stderr)
        try:
            receiver.stop()
        except OutputError as error:
            print(f"kvonce collector: ERROR: the last batch ({receiver.batcher.pending_spans} acknowledged "
                  f"spans) could not be written: {error}", file=sys.stderr)
            return EXIT_FAILED
        health = receiver.health()
        print(f"kvonce collector: stopped: {health['spansAccepted']} spans accepted, "
              f"{health['spansWritten']} written in {health['filesWritten']} files, "
              f"{health['spansDuplicate']} duplicates dropped", file=sys.stderr)
        if config.upload_url is not None and health["filesToUpload"]:
            print(f"kvonce collector: {health['filesToUpload']} payload file(s) not uploaded to {config.upload_url} "
                  f"({health['lastUploadError']}): they stay in {config.drop_dir} and the next start uploads them",
                  file=sys.stderr)
        return EXIT_OK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
