"""Event times: nanoseconds since the epoch, read from ISO 8601 and written as the seed's form.

Every domain's events carry the same time: ``timeUnixNano`` (an integer, OTLP's span start) and
``timestamp`` (ISO 8601 UTC, milliseconds, ``Z``), so reading and writing it is the engine's.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

#: The representable range: nanoseconds since the epoch that fit a signed 64-bit integer
#: (1970-01-01 to 2262-04-11). Anything outside is an error for the whole input.
MIN_TIME_NS = 1  # 0 is OTLP's "unset": accepting it from NDJSON would not survive conversion
MAX_TIME_NS = 2**63 - 1


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
