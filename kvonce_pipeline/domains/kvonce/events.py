"""The KvOnce event: the one record every input form is turned into.

Field names in the NDJSON form follow the seed's event table (``timestamp``, ``type``, ``key``,
``value``, ``reason``, ``context``) plus what the OTLP mapping adds (``event``, ``timeUnixNano``,
``traceId``, ``spanId``, ``actor``) and ``origin``, the place in the input an event came from, so a
finding can point back at a line or span.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...engine.timestamps import format_timestamp

EVENT_TYPES = ("success", "retry", "failure")


@dataclass(slots=True)
class Event:
    """One KvOnce event. ``context is None`` means the event carried no context."""

    time_unix_nano: int | None
    type: str | None
    key: str | None
    value: Any = None
    reason: str | None = None
    context: Any = None
    trace_id: str = ""
    span_id: str = ""
    actor: str = "unknown"
    origin: str = ""

    @property
    def timestamp(self) -> str | None:
        return None if self.time_unix_nano is None else format_timestamp(self.time_unix_nano)

    def to_json(self, timestamp: str | None = None) -> dict[str, Any]:
        """The NDJSON form. ``timestamp`` may be passed when the caller already formatted it."""
        out: dict[str, Any] = {
            "timestamp": self.timestamp if timestamp is None else timestamp,
            "timeUnixNano": None if self.time_unix_nano is None else str(self.time_unix_nano),
            "type": self.type,
            "event": self.type,
            "key": self.key,
        }
        if self.value is not None:
            out["value"] = self.value
        if self.reason is not None:
            out["reason"] = self.reason
        if self.context is not None:
            out["context"] = self.context
        out["traceId"] = self.trace_id
        if self.span_id:
            out["spanId"] = self.span_id
        out["actor"] = self.actor
        if self.origin:
            out["origin"] = self.origin
        return out

    def same_event(self, other: "Event") -> bool:
        """Equality that ignores ``origin`` (where the event was read from)."""
        return (
            self.time_unix_nano == other.time_unix_nano
            and self.type == other.type
            and self.key == other.key
            and self.value == other.value
            and self.reason == other.reason
            and self.context == other.context
            and self.trace_id == other.trace_id
            and self.span_id == other.span_id
            and self.actor == other.actor
        )
