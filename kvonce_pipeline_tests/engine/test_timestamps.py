"""Event times: the seed's ISO form written exactly (the cached second prefix never leaks into the next
second), read exactly (no float on the way), offsets applied, and the representable range enforced."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvonce_pipeline.engine.timestamps import MAX_TIME_NS, MIN_TIME_NS, check_time_range, format_timestamp, parse_timestamp

#: 1970-01-01 to 9999-12-31: what datetime can check the formatting against
_NS = st.integers(min_value=MIN_TIME_NS, max_value=253_402_300_799_999_999_999)


def _reference(ns: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=ns // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1_000_000 % 1000:03d}Z"


@given(st.lists(_NS, min_size=1, max_size=20))
def test_formatting_is_datetimes_whatever_the_order_of_calls(times: list[int]) -> None:
    # calls in any order: the cached "YYYY-MM-DDTHH:MM:SS" of one second must never serve another
    assert [format_timestamp(ns) for ns in times] == [_reference(ns) for ns in times]


@given(st.integers(min_value=1_000_000, max_value=MAX_TIME_NS))
def test_a_formatted_time_reads_back_to_its_millisecond(ns: int) -> None:
    # (a time under 1 ms would read back as 0, OTLP's "unset", which is refused)
    assert parse_timestamp(format_timestamp(ns)) == ns - ns % 1_000_000


@pytest.mark.parametrize("text, expected", [
    ("2025-10-04T06:00:00.123456789Z", 1_759_557_600_123_456_789),
    ("2025-10-04T06:00:00Z", 1_759_557_600_000_000_000),
    ("2025-10-04 06:00:00,5", 1_759_557_600_500_000_000),  # no offset: UTC, as the seed says
    ("2025-10-04T08:00:00.000+02:00", 1_759_557_600_000_000_000),
    ("2025-10-04T01:30:00.000-0430", 1_759_557_600_000_000_000),
])
def test_parsing_is_exact_and_applies_the_offset(text: str, expected: int) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize("text, message", [
    ("yesterday", "not ISO 8601"),
    ("2025-02-30T00:00:00Z", "day is out of range"),
    ("2025-10-04T06:00:00+24:00", "out of range"),
    ("1969-12-31T23:59:59Z", "outside the representable range"),
    ("2262-04-12T00:00:00Z", "outside the representable range"),
])
def test_what_cannot_be_a_time_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_timestamp(text)


def test_the_range_is_that_of_a_signed_64_bit_count_of_nanoseconds() -> None:
    assert check_time_range(MIN_TIME_NS) == MIN_TIME_NS and check_time_range(MAX_TIME_NS) == MAX_TIME_NS
    for outside in (0, MAX_TIME_NS + 1, -1):
        with pytest.raises(ValueError, match="outside the representable range"):
            check_time_range(outside)
