"""Every rule, with a trace that passes it and a trace that fails it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from kvonce_pipeline.domains.kvonce.events import Event
from kvonce_pipeline.domains.kvonce.reader import read_trace
from kvonce_pipeline.domains.kvonce.validation import RULES, attempt_of, validate_events


def ev(kind: str | None, key: str | None, second: int | None = 0, **fields: Any) -> Event:
    return Event(time_unix_nano=None if second is None else 1_000_000_000 * (1 + second), type=kind, key=key,
                 trace_id="t", origin=f"event {second}", **fields)


def findings(events: list[Event], **options: Any) -> list[tuple[str, str | None, str, int]]:
    report = validate_events(events, **options)
    return [(i["type"], i["key"], i["severity"], i["eventIndex"]) for i in report["issues"]]


OK = [ev("retry", "k", 0, context={"attempt": 1}), ev("success", "k", 1, value="v", context={"attempt": 2}),
      ev("failure", "k", 2, reason="duplicate")]

CASES: dict[str, tuple[list[Event], list[tuple[str, str | None, str, int]]]] = {
    "multiple-success": (
        [ev("success", "k", 0, value="a"), ev("success", "k", 1, value="b")],
        [("multiple-success", "k", "error", 1)],
    ),
    "duplicate-without-success": (
        [ev("failure", "k", 0, reason="duplicate"), ev("failure", "k", 1, reason="duplicate")],
        [("duplicate-without-success", "k", "error", 0)],
    ),
    "retry-bound-exceeded": (
        [ev("retry", "k", s) for s in range(4)],
        [("retry-bound-exceeded", "k", "error", 3)],
    ),
    "retry-context-missing": (
        [ev("retry", "k", 0, context={"cause": "timeout"}), ev("retry", "k", 1)],
        [("retry-context-missing", "k", "error", 0)],
    ),
    "retry-attempt-out-of-sequence": (
        [ev("retry", "k", 0, context={"attempt": 1}), ev("retry", "k", 1, context={"attempts": 3})],
        [("retry-attempt-out-of-sequence", "k", "error", 1)],
    ),
    "success-attempt-mismatch": (
        [ev("retry", "k", 0, context=1), ev("success", "k", 1, value="v", context={"attempt": 5})],
        [("success-attempt-mismatch", "k", "error", 1)],
    ),
    "success-missing-value": (
        [ev("success", "k", 0)],
        [("success-missing-value", "k", "error", 0)],
    ),
    "unknown-event-type": (
        [ev("delete", "k", 0)],
        [("unknown-event-type", "k", "error", 0)],
    ),
    "missing-required-field": (
        [ev("success", None, 0, value="v"), ev(None, "k", 1), ev("failure", "k", 2), ev("retry", "k", None)],
        [("missing-required-field", None, "error", 0), ("missing-required-field", "k", "error", 1),
         ("missing-required-field", "k", "error", 2), ("missing-required-field", "k", "error", 3)],
    ),
    "duplicate-before-success": (
        [ev("failure", "k", 0, reason="duplicate"), ev("success", "k", 1, value="v")],
        [("duplicate-before-success", "k", "warning", 0)],
    ),
    "success-after-retries-exhausted": (
        [ev("retry", "k", 0), ev("retry", "k", 1), ev("retry", "k", 2), ev("success", "k", 3, value="v")],
        [("success-after-retries-exhausted", "k", "warning", 3)],
    ),
}


def test_every_rule_has_a_case() -> None:
    assert set(CASES) == set(RULES)


def test_a_conforming_trace_has_no_findings() -> None:
    report = validate_events(OK)
    assert report["valid"] is True and report["issues"] == []
    assert report["summary"] == {"events": 3, "keys": 1, "errors": 0, "warnings": 0, "byRule": {}}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_fires_on_its_violation(rule: str) -> None:
    events, expected = CASES[rule]
    assert findings(events) == expected
    report = validate_events(events)
    assert report["valid"] is (RULES[rule].severity == "warning")
    assert all(issue["origin"].startswith("event ") for issue in report["issues"])


@pytest.mark.parametrize("rule", sorted(r for r in CASES if RULES[r].severity == "warning"))
def test_strict_mode_turns_warnings_into_errors(rule: str) -> None:
    events, expected = CASES[rule]
    report = validate_events(events, strict=True)
    assert report["valid"] is False
    assert [i["severity"] for i in report["issues"]] == ["error"] * len(expected)


def test_max_retries_is_configurable() -> None:
    retries = [ev("retry", "k", s) for s in range(4)]
    assert findings(retries, max_retries=4) == []
    assert findings(retries[:2], max_retries=1) == [("retry-bound-exceeded", "k", "error", 1)]


def test_order_matters_only_where_the_spec_says_so() -> None:
    # the same multiset of events, duplicate after the success: legal
    assert findings([ev("success", "k", 0, value="v"), ev("failure", "k", 1, reason="Duplicate")]) == []
    # other failure reasons are not duplicates
    assert findings([ev("failure", "k", 0, reason="timeout")]) == []
    # keys are independent
    assert findings([ev("success", "a", 0, value="v"), ev("success", "b", 1, value="v")]) == []


def test_attempt_numbers() -> None:
    assert attempt_of(2) == 2
    assert attempt_of({"attempts": 3}) == 3
    assert attempt_of({"attempt": "2"}) is None
    assert attempt_of({"attempt": True}) is None
    assert attempt_of("2") is None


def test_seed_sample_is_valid_with_one_order_warning(sample_ndjson: Path) -> None:
    events = read_trace(sample_ndjson).events
    report = validate_events(events)
    assert report["valid"] is True
    assert [(i["type"], i["key"], i["severity"], i["eventIndex"]) for i in report["issues"]] == [
        ("duplicate-before-success", "beta", "warning", 1)]
    assert validate_events(events, strict=True)["valid"] is False


def test_many_keys_stay_linear() -> None:
    # 200k events over 50k keys: a quadratic pass would not finish in test time
    events = []
    for k in range(50_000):
        key = f"key-{k}"
        events += [ev("retry", key, 0, context={"attempt": 1}), ev("success", key, 1, value="v", context={"attempt": 2}),
                   ev("failure", key, 2, reason="duplicate"), ev("failure", key, 3, reason="duplicate")]
    report = validate_events(events)
    assert report["valid"] is True and report["summary"]["keys"] == 50_000


def _spanned(kind: str, key: str, second: int, span: str, **fields: Any) -> Event:
    return Event(time_unix_nano=1_000_000_000 * (1 + second), type=kind, key=key, trace_id=f"trace-{span}",
                 span_id=span, origin=f"span r0/s0/p{second}", **fields)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_every_finding_carries_the_trace_and_span_of_its_event(rule: str) -> None:
    """A finding names its span, so a user can open it in a tracing tool, also for the findings made at the end."""
    events, _ = CASES[rule]
    spanned = [dataclasses.replace(event, trace_id=f"trace-{index}", span_id=f"span-{index}")
               for index, event in enumerate(events)]
    report = validate_events(spanned)
    assert report["issues"], rule
    for issue in report["issues"]:
        assert issue["traceId"] == f"trace-{issue['eventIndex']}", issue
        assert issue["spanId"] == f"span-{issue['eventIndex']}", issue
        assert issue["origin"], issue


def test_multiple_success_points_at_the_first_write() -> None:
    events = [_spanned("success", "k", 0, "aa", value="v1"), _spanned("retry", "other", 1, "bb"),
              _spanned("success", "k", 2, "cc", value="v2"), _spanned("success", "k", 3, "dd", value="v3")]
    issues = [i for i in validate_events(events)["issues"] if i["type"] == "multiple-success"]
    assert [i["eventIndex"] for i in issues] == [2, 3]
    for issue in issues:
        assert issue["firstWrite"] == {"eventIndex": 0}
        assert "first written at event 0" in issue["message"]


def test_an_empty_key_is_a_missing_key() -> None:
    """A success on key "" writes nothing: it is reported as a missing key, not accepted as a key."""
    report = validate_events([ev("success", "", 0, value="v"), ev("success", "", 1, value="w")])
    assert [(i["type"], i["eventIndex"], i["message"]) for i in report["issues"]] == [
        ("missing-required-field", 0, "event has an empty key"),
        ("missing-required-field", 1, "event has an empty key")]
    assert report["valid"] is False
