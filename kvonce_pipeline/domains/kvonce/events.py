"""The KvOnce event: the one record every input form is turned into.

Field names in the NDJSON form follow the seed's event table (``timestamp``, ``type``, ``key``,
``value``, ``reason``, ``context``) plus what the OTLP mapping adds (``event``, ``timeUnixNano``,
``traceId``, ``spanId``, ``actor``) and ``origin``, the place in the input an event came from, so a
finding can point back at a line or span.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

EVENT_TYPES = ("success", "retry", "failure")

#: The representable range: nanoseconds since the epoch that fit a signed 64-bit integer
#: (1970-01-01 to 2262-04-11). Anything outside is an error for the whole input.
MIN_TIME_NS = 1  # 0 is OTLP's "unset": accepting it from NDJSON would not survive conversion
MAX_TIME_NS = 2**63 - 1


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


# Formatting a timestamp is on the hot path (once per event); events cluster within a second,
# so the "YYYY-MM-DDTHH:MM:SS" prefix is cached.
_last_second: int | None = None
_last_prefix = ""


#: ".000Z" to ".999Z": the millisecond suffixes, formatted once.
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def format_timestamp(ns: int) -> str:
    """ISO 8601 UTC with millisecond precision and ``Z``: the seed's timestamp form."""
    global _last_second, _last_prefix
    second, rest = divmod(ns, 1_000_000_000)
    if second != _last_second:
        _last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = second
    return _last_prefix + _MILLIS[rest // 1_000_000]


_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:?\d{2})?$"
)


def parse_timestamp(text: str) -> int:
    """Parse ISO 8601 to nanoseconds since the epoch, exactly (no float on the way).

    A timestamp without an offset is taken as UTC, as the seed defines every timestamp as UTC.
    Raises ``ValueError`` with the reason.
    """
    match = _ISO.match(text)
    if not match:
        raise ValueError(f"timestamp {text!r} is not ISO 8601 (e.g. 2025-10-04T06:00:00.000Z)")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    tz = timezone.utc
    if offset and offset not in ("Z", "z"):
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        from datetime import timedelta

        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise ValueError(f"timestamp {text!r}: UTC offset {offset} is out of range (-23:59 to +23:59)")
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"timestamp {text!r}: {exc}") from None
    seconds = int(moment.timestamp())
    ns = seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))
    check_time_range(ns)
    return ns


def check_time_range(ns: int) -> int:
    if not MIN_TIME_NS <= ns <= MAX_TIME_NS:
        raise ValueError(
            f"time {ns} ns is outside the representable range "
            f"(1 to 2^63-1 ns since 1970-01-01, i.e. up to 2262-04-11)"
        )
    return ns


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` nests deeper than ``limit`` containers (checked without recursion)."""
    if not isinstance(value, (dict, list)):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def scan_json(value: Any, limit: int) -> tuple[bool, int, int | None]:
    """One pass over a JSON value: (nests deeper than ``limit``, number of object keys, the first
    integer outside int64 or None). Without recursion."""
    if type(value) is int:
        return False, 0, (None if -(2**63) <= value <= 2**63 - 1 else value)
    if type(value) not in (dict, list):
        return False, 0, None
    keys = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True, keys, None
        if type(item) is dict:
            keys += len(item)
            children = item.values()
        else:
            children = item
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
            elif kind is int and not -(2**63) <= child <= 2**63 - 1:
                return False, keys, child
    return False, keys, None
