"""Writing any domain's events as a trace: the inverse of :mod:`kvonce_pipeline.engine.domain_decode`.

Used by ``kvonce generate --domain NAME`` and by tests; reading what is written here gives the same
events back (the round trip is tested per format). Spans are grouped into resources of
:data:`SPANS_PER_RESOURCE` by actor, as an SDK's batch exporter would send them.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import orjson

from .atomic import atomic_writer
from .timestamps import format_timestamp
from .otlp_encodings import SCOPE_NAME, any_value, request_to_message
from .domain import Domain, DomainEvent

FORMATS = ("ndjson", "otlp-json", "otlp-jsonl", "otlp-proto")
SPANS_PER_RESOURCE = 512
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")


def event_line(domain: Domain, event: DomainEvent) -> dict[str, Any]:
    """One event as an NDJSON object of the domain's event log."""
    line: dict[str, Any] = {"timestamp": None if event.time_unix_nano is None else format_timestamp(event.time_unix_nano),
                            "timeUnixNano": None if event.time_unix_nano is None else str(event.time_unix_nano),
                            "type": event.type, "key": event.key}
    for spec in domain.definition.fields:
        if spec.name in event.fields:
            line[spec.name] = event.fields[spec.name]
    line["traceId"] = event.trace_id
    if event.span_id:
        line["spanId"] = event.span_id
    if event.actor and event.actor != "unknown":
        line["actor"] = event.actor
    return line


def event_to_span(domain: Domain, event: DomainEvent) -> dict[str, Any]:
    """One event as one OTLP/JSON span carrying ``<prefix>*`` attributes."""
    prefix = domain.definition.prefix
    attributes = [{"key": prefix + "type", "value": {"stringValue": event.type}},
                  {"key": prefix + "key", "value": {"stringValue": event.key}}]
    for spec in domain.definition.fields:
        value = event.fields.get(spec.name)
        if value is not None:
            attributes.append({"key": prefix + spec.name, "value": any_value(value)})
    trace_id = event.trace_id if _HEX32.fullmatch(event.trace_id or "") else ""
    if event.trace_id and not trace_id:
        attributes.append({"key": "traceId", "value": {"stringValue": event.trace_id}})
    span: dict[str, Any] = {"traceId": trace_id,
                            "spanId": event.span_id if _HEX16.fullmatch(event.span_id or "") else "",
                            "name": f"{domain.name}.{event.type}", "kind": 1}
    if event.time_unix_nano is not None:
        span["startTimeUnixNano"] = span["endTimeUnixNano"] = str(event.time_unix_nano)
    span["attributes"] = attributes
    return span


def requests(domain: Domain, events: Iterable[DomainEvent]) -> Iterator[dict[str, Any]]:
    """OTLP/JSON requests of at most :data:`SPANS_PER_RESOURCE` spans, one resource each."""
    spans: list[dict[str, Any]] = []
    actor: str | None = None

    def request() -> dict[str, Any]:
        resource = [{"key": "service.name", "value": {"stringValue": actor}}] if actor and actor != "unknown" else []
        return {"resourceSpans": [{"resource": {"attributes": resource},
                                   "scopeSpans": [{"scope": {"name": SCOPE_NAME}, "spans": spans}]}]}

    for event in events:
        if spans and (len(spans) >= SPANS_PER_RESOURCE or event.actor != actor):
            yield request()
            spans = []
        actor = event.actor
        spans.append(event_to_span(domain, event))
    if spans:
        yield request()


def write_trace(domain: Domain, events: Iterable[DomainEvent], path: str | Path, format: str, *,
                compress: bool = False) -> int:
    """Write ``events`` to ``path`` (atomically) in ``format``, gzipped when ``compress`` (with no
    time stamp in the gzip header: the same events give the same bytes); returns how many."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    with atomic_writer(path) as target:
        if not compress:
            return _write(domain, events, target, format)
        with gzip.GzipFile(fileobj=cast(Any, target), mode="wb", mtime=0) as zipped:
            return _write(domain, events, zipped, format)


def _write(domain: Domain, events: Iterable[DomainEvent], out: Any, format: str) -> int:
    count = 0
    if format == "ndjson":
        for event in events:
            out.write(orjson.dumps(event_line(domain, event)) + b"\n")
            count += 1
        return count
    if format == "otlp-jsonl":
        for item in requests(domain, events):
            count += len(item["resourceSpans"][0]["scopeSpans"][0]["spans"])
            out.write(orjson.dumps(item) + b"\n")
        return count
    merged: list[dict[str, Any]] = []
    for item in requests(domain, events):
        count += len(item["resourceSpans"][0]["scopeSpans"][0]["spans"])
        merged += item["resourceSpans"]
    document = {"resourceSpans": merged}
    out.write(orjson.dumps(document) if format == "otlp-json" else request_to_message(document).SerializeToString())
    return count
