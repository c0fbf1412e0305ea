"""Limits on untrusted JSON values, checked without recursion (a deep value cannot exhaust the stack)."""

from __future__ import annotations

from typing import Any


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
    integer outside int64 or None). Without recursion. It stops at the first reason to refuse the
    value, so the key count is complete only when it found neither."""
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
