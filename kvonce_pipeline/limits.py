"""Every size and depth limit, in one place, each overridable by a ``KVONCE_*`` variable.

Defaults are chosen so that real traces never hit them while hostile input is refused before it
costs much memory or time. The reasons are next to each default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    # 64 MiB: the OTLP/HTTP spec's recommended request limit; a larger body is refused with 413.
    max_body_bytes: int = 64 * MIB
    # 16 GiB: a whole payload file after decompression. Large traces are legitimate (a day of
    # traffic is a few GB of OTLP/JSON); a gzip bomb stops here instead of filling the disk or RAM.
    max_decompressed_bytes: int = 16 * 1024 * MIB
    # 64 MiB: one NDJSON / JSON Lines line. The collector's file exporter writes one request per
    # line and requests are capped at 64 MiB, so a longer line is not something we produced.
    max_line_bytes: int = 64 * MIB
    # 64 levels inside a ``context`` value: real metadata is shallow, and deep nesting is the
    # classic way to exhaust the interpreter's stack.
    max_context_depth: int = 64
    # 100 million events in one payload: ten days of a busy service; beyond that split the input.
    max_events: int = 100_000_000
    # 256 MiB: a payload file the drop-folder sensor accepts; a larger one is logged and refused.
    max_drop_file_bytes: int = 256 * MIB

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Limits":
        """Read ``KVONCE_MAX_BODY_BYTES`` and friends (the field name, upper-cased)."""
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for f in fields(cls):
            raw = env.get(f"KVONCE_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                value = int(raw)
            except ValueError as exc:
                raise ValueError(f"KVONCE_{f.name.upper()} must be an integer, got {raw!r}") from exc
            if value <= 0:
                raise ValueError(f"KVONCE_{f.name.upper()} must be positive, got {value}")
            values[f.name] = value
        return cls(**values)
