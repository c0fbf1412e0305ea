"""KvOnce's own pass behind the engine's domain interface.

KvOnce's pass predates the generic engine and carries byte contracts (every artifact, for the same
input, is byte-identical to what earlier versions wrote) and its fast paths (typed decoding, the
second-core worker, streaming with an on-disk sort). Until KvOnce's state machine runs on the generic
pass with those bytes, the engine calls this pass for it: same artifacts, same folder
(``<reports>/trace/``), same errors.
"""

from __future__ import annotations

import re
from pathlib import Path

from ... import artifacts
from ...conformance import ConformanceOptions, run_conformance
from ...engine.domain import ArtifactNames
from ...engine.domain_pass import TRACE_IDS_LISTED, DomainResult
from ...engine.payload import DomainRun

NAMES = ArtifactNames(artifacts.EVENTS, artifacts.STATE_SEQUENCE, artifacts.PROJECTION, artifacts.VALIDATION,
                      artifacts.SUMMARY)
_TRACE_ID = re.compile(rb'"traceId":"([^"\\]*)"')


def trace_ids(events_file: Path) -> tuple[list[str], int]:
    """The distinct trace ids of ``kvonce-events.ndjson`` in order of appearance (at most
    :data:`TRACE_IDS_LISTED`) and how many there are. A byte scan of the file: cheaper than adding a
    set to each of the pass's strategies (measured: see docs/domains.md)."""
    seen: dict[bytes, None] = {}
    carry = b""
    try:
        with open(events_file, "rb") as handle:
            while True:
                chunk = handle.read(16 * 1024 * 1024)
                if not chunk:
                    break
                block = carry + chunk
                cut = block.rfind(b"\n") + 1
                for match in _TRACE_ID.finditer(block, 0, cut):
                    seen.setdefault(match.group(1), None)
                carry = block[cut:]
            for match in _TRACE_ID.finditer(carry):
                seen.setdefault(match.group(1), None)
    except FileNotFoundError:
        return [], 0
    listed = [item.decode("utf-8", "replace") for item in list(seen)[:TRACE_IDS_LISTED]]
    return listed, len(seen)


def run(job: DomainRun) -> DomainResult:
    from . import domain

    options = ConformanceOptions(format=job.format, strict=job.options.strict,
                                 max_retries=int(domain.options(job.options.options)["max_retries"]),
                                 limits=job.limits)
    if job.options.disabled:
        from ...errors import KvonceError

        raise KvonceError(f"--disable is not supported by KvOnce's pass yet ({', '.join(sorted(job.options.disabled))})")
    result = run_conformance(job.input, job.out_dir, options, progress=job.extra.get("progress"))
    listed, count = trace_ids(job.out_dir / NAMES.events)
    return DomainResult(domain, job.out_dir, result.report, NAMES, listed, count)
