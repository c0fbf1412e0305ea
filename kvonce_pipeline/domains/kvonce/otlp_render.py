"""Writing KvOnce events as OTLP spans: the inverse of the mapping.

Used to produce ``collected-kvonce-otlp.json`` from an NDJSON event log (always spec OTLP/JSON,
whatever came in), by ``kvonce generate`` and by tests. The encodings themselves (AnyValues,
protobuf and back) are the engine's: :mod:`kvonce_pipeline.engine.otlp_encodings`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .reader import read_trace
from ...engine.limits import Limits
from ...engine.otlp_encodings import SCOPE_NAME, any_value
from .events import Event
from .mapping import (
    ATTR_ACTOR,
    ATTR_CONTEXT,
    ATTR_CONTEXT_IS_TEXT,
    ATTR_KEY,
    ATTR_REASON,
    ATTR_TRACE_ID,
    ATTR_TYPE,
    ATTR_VALUE,
)

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")


def event_to_span(event: Event) -> dict[str, Any]:
    """One event as one span, such that the mapping gives the same event back."""
    attributes = [
        {"key": ATTR_TYPE, "value": {"stringValue": event.type}},
        {"key": ATTR_KEY, "value": {"stringValue": event.key}},
    ]
    if event.value is not None:
        attributes.append({"key": ATTR_VALUE, "value": any_value(event.value)})
    if event.reason is not None:
        attributes.append({"key": ATTR_REASON, "value": {"stringValue": event.reason}})
    if event.context is not None:
        if isinstance(event.context, str) and event.context[:1] in ("{", "["):
            attributes.append({"key": ATTR_CONTEXT_IS_TEXT, "value": {"boolValue": True}})
        attributes.append({"key": ATTR_CONTEXT, "value": any_value(event.context)})
    if event.actor and event.actor != "unknown":
        attributes.append({"key": ATTR_ACTOR, "value": {"stringValue": event.actor}})
    trace_id = event.trace_id if _HEX32.fullmatch(event.trace_id or "") else ""
    if event.trace_id and not trace_id:
        attributes.append({"key": ATTR_TRACE_ID, "value": {"stringValue": event.trace_id}})
    span: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": event.span_id if _HEX16.fullmatch(event.span_id or "") else "",
        "name": f"kvonce.{event.type}",
        "kind": 1,
    }
    if event.time_unix_nano is not None:
        span["startTimeUnixNano"] = str(event.time_unix_nano)
        span["endTimeUnixNano"] = str(event.time_unix_nano)
    span["attributes"] = attributes
    return span


def events_to_request(events: Iterable[Event]) -> dict[str, Any]:
    """Events (with a type and key) as one OTLP/JSON ``ExportTraceServiceRequest``."""
    spans = [event_to_span(e) for e in events if e.type and e.key]
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": []},
                "scopeSpans": [{"scope": {"name": SCOPE_NAME}, "spans": spans}],
            }
        ]
    }


def render_event_log(path: Path, limits: Limits) -> dict[str, Any]:
    """A KvOnce NDJSON event log as one OTLP/JSON request (``collect_payload``'s ``render_log``)."""
    return events_to_request(read_trace(path, format="ndjson", limits=limits).events)
