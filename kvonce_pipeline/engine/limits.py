"""Every size and depth limit, in one place, each overridable by a ``KVONCE_*`` variable.

Defaults are chosen so that real traces never hit them while hostile input is refused before it
costs much memory or time. The reason for each default is next to it (and in :data:`REASONS`,
which the documentation's table is made from).

Overrides: ``KVONCE_<FIELD NAME IN UPPER CASE>``, e.g. ``KVONCE_MAX_LINE_BYTES=1048576``. Byte
limits also take a binary unit (``64MiB``, ``16GiB``, ``512KiB``); underscores are allowed
(``100_000_000``). A value that is not a positive integer is a configuration error: the command
exits 2 naming the variable, instead of running with a limit nobody asked for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from .errors import ConfigError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
_UNITS = {"": 1, "kib": KIB, "mib": MIB, "gib": GIB}
_SIZE = re.compile(r"^\s*([0-9][0-9_]*)\s*([kmg]ib)?\s*$", re.IGNORECASE)


#: Inflated bytes before the compression ratio (``max_compression_ratio``) is judged, for files and
#: requests alike: small inputs may compress very well.
RATIO_GRACE = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    # 20 MiB: one OTLP request the collector accepts, after decompression (the OpenTelemetry
    # Collector's default: exporters batch far below it); larger is 413 / RESOURCE_EXHAUSTED.
    max_request_bytes: int = 20 * MIB
    # 64 MiB: the largest record accepted in a length-delimited protobuf file (files from other
    # tools may batch more than a request holds).
    max_body_bytes: int = 64 * MIB
    # 16 GiB: a whole payload file after decompression. Large traces are legitimate (a day of
    # traffic is a few GB of OTLP/JSON); a gzip bomb stops here instead of filling the disk or RAM.
    # A single OTLP/JSON document is parsed whole, so on a small machine lower this to what fits.
    max_decompressed_bytes: int = 16 * GIB
    # 64 MiB: one NDJSON / JSON Lines line. The collector's file exporter writes one request per
    # line and requests are capped at 64 MiB, so a longer line is not something we produced.
    max_line_bytes: int = 64 * MIB
    # 64 levels inside a ``context`` value: real metadata is shallow, and deep nesting is the
    # classic way to exhaust the interpreter's stack. (orjson stops at 1024 JSON levels and the
    # protobuf parser at 100 message levels on its own; this limit is the one users see.)
    max_context_depth: int = 64
    # 100 million events in one payload: ten days of a busy service; beyond that split the input.
    max_events: int = 100_000_000
    # 256 MiB: a payload file the drop-folder sensor accepts; a larger one is logged and refused.
    max_drop_file_bytes: int = 256 * MIB
    # 200:1, checked once 1 MiB has been inflated: real traces compress 4:1 to 30:1. A bomb of
    # blank lines would otherwise cost minutes of CPU (one read per line) before the size limit.
    max_compression_ratio: int = 200

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Limits":
        """Read ``KVONCE_MAX_BODY_BYTES`` and friends (the field name, upper-cased).

        Raises :class:`~kvonce_pipeline.engine.errors.ConfigError` (also a ``ValueError``) naming the
        variable when a value is not a positive integer.
        """
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for f in fields(cls):
            name = env_name(f.name)
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = parse_limit(name, raw, allow_units=f.name.endswith("_bytes"))
        return cls(**values)


def env_name(field_name: str) -> str:
    return f"KVONCE_{field_name.upper()}"


def parse_limit(name: str, raw: str, *, allow_units: bool) -> int:
    """A positive integer, optionally with ``KiB``/``MiB``/``GiB`` (byte limits only)."""
    match = _SIZE.match(raw)
    unit = (match.group(2) or "").lower() if match else ""
    if not match or (unit and not allow_units):
        kind = "a positive integer (bytes, or with KiB/MiB/GiB)" if allow_units else "a positive integer"
        raise ConfigError(f"{name} must be {kind}, got {raw!r:.60}")
    value = int(match.group(1).replace("_", "")) * _UNITS[unit]
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {raw!r:.60}")
    return value


#: Why each default is what it is, for the documentation (``docs/reliability.md``).
REASONS: dict[str, str] = {
    "max_request_bytes": "the OpenTelemetry Collector's default request cap after decompression "
                         "(413 / RESOURCE_EXHAUSTED above it); exporters batch far below it",
    "max_body_bytes": "the largest record of a length-delimited protobuf file (other tools' files may "
                      "batch more than one request); also the collector's request cap when it "
                      "is set and KVONCE_MAX_REQUEST_BYTES is not",
    "max_decompressed_bytes": "a day of busy traffic is a few GB of OTLP/JSON; a gzip bomb stops here "
                              "instead of filling memory",
    "max_line_bytes": "an OpenTelemetry file exporter writes one request per line; a longer line is not a request",
    "max_context_depth": "real metadata is shallow; deep nesting exhausts the interpreter's stack",
    "max_events": "ten days of a busy service in one payload; split larger inputs",
    "max_drop_file_bytes": "what the drop-folder sensor accepts per payload file; larger files are "
                           "refused with a logged reason",
    "max_compression_ratio": "real traces compress 4:1 to 30:1; a gzip bomb of blank lines costs minutes "
                             "of CPU before the size limit, so it is refused once 1 MiB is inflated",
}


def describe() -> list[tuple[str, str, int, str]]:
    """``(field, environment variable, default, reason)`` for every limit."""
    return [(f.name, env_name(f.name), f.default, REASONS[f.name]) for f in fields(Limits)]  # type: ignore[misc]
