"""Limits on untrusted JSON values: depth, key count and integers beyond int64, found in one pass
without recursion (a value deeper than Python's recursion limit is judged, not a crash)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kvonce_pipeline.engine.json_values import json_depth_exceeds, scan_json

_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=3),
                       lambda children: st.lists(children, max_size=3)
                       | st.dictionaries(st.text(max_size=3), children, max_size=3), max_leaves=30)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _keys(value: Any) -> int:
    if isinstance(value, dict):
        return len(value) + sum(_keys(v) for v in value.values())
    if isinstance(value, list):
        return sum(_keys(v) for v in value)
    return 0


def _wide(value: Any) -> bool:
    if type(value) is int:
        return not -(2**63) <= value <= 2**63 - 1
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(_wide(child) for child in children)


@given(_VALUES, st.integers(min_value=0, max_value=6))
def test_the_scan_agrees_with_a_recursive_reading(value: Any, limit: int) -> None:
    """The scan stops at the first reason to refuse the value (too deep, or an integer beyond int64),
    so its other answers are complete only when it found none."""
    assert json_depth_exceeds(value, limit) == (_depth(value) > limit)
    deep, keys, wide = scan_json(value, limit)
    if deep:
        assert _depth(value) > limit and wide is None
    elif wide is not None:
        assert _wide(value) and type(wide) is int and not -(2**63) <= wide <= 2**63 - 1
    else:
        assert _depth(value) <= limit and not _wide(value) and keys == _keys(value)


def test_a_value_deeper_than_the_interpreter_can_recurse_is_judged() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    assert json_depth_exceeds(value, 64) and scan_json(value, 64)[0]
    assert not json_depth_exceeds(value, 100_000)
