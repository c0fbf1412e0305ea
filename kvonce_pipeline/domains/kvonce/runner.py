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

from . import artifacts
from .own_pass.conformance import ConformanceOptions, run_conformance
from ...engine.domain import ArtifactNames, Domain
from ...engine.errors import ConfigError
from ...engine.domain_pass import TRACE_IDS_LISTED, DomainResult
from ...engine.payload import DomainRun

NAMES = ArtifactNames(artifacts.EVENTS, artifacts.STATE_SEQUENCE, artifacts.PROJECTION, artifacts.VALIDATION,
                      artifacts.SUMMARY)
_TRACE_ID = re.compile(rb'"traceId":"([^"\\]*)"')


#: How much of ``kvonce-events.ndjson`` is scanned for trace ids: a bounded cost on any size.
TRACE_SCAN_BYTES = 32 * 1024 * 1024


def trace_ids(events_file: Path) -> tuple[list[str], int | None]:
    """The distinct trace ids of ``kvonce-events.ndjson`` in order of appearance (at most
    :data:`TRACE_IDS_LISTED`) and how many there are, or None for the count when the file is longer
    than :data:`TRACE_SCAN_BYTES`. KvOnce's pass does not collect trace ids, and a full scan costs
    about 1.1 s per million events (9 % of the 1M-event run), so only the head is scanned."""
    try:
        with open(events_file, "rb") as handle:
            head = handle.read(TRACE_SCAN_BYTES)
            complete = not handle.read(1)
    except FileNotFoundError:
        return [], 0
    if not complete:
        head = head[: head.rfind(b"\n") + 1]
    seen = dict.fromkeys(_TRACE_ID.findall(head))
    listed = [item.decode("utf-8", "replace") for item in list(seen)[:TRACE_IDS_LISTED]]
    return listed, len(seen) if complete else None


def run(job: DomainRun) -> DomainResult:
    max_retries = int(domain.options(job.options.options)["max_retries"])
    if max_retries < 0:
        raise ConfigError(f"max_retries must be zero or more, not {max_retries}")
    options = ConformanceOptions(format=job.format, strict=job.options.strict, max_retries=max_retries,
                                 limits=job.limits, disabled=job.options.disabled)
    result = run_conformance(job.input, job.out_dir, options, progress=job.extra.get("progress"))
    listed, count = trace_ids(job.out_dir / NAMES.events)
    return DomainResult(domain, job.out_dir, result.report, NAMES, listed, count)


#: The KvOnce domain as the engine sees it (the ``kvonce`` entry point; see the package docstring).
domain = Domain.from_folder(Path(__file__).parent, None, runner=run, names=NAMES)
