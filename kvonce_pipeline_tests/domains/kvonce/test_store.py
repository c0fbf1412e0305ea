"""The cumulative store: folding payloads in event-time order, and reconciling one payload's report."""

from __future__ import annotations

from typing import Any

from kvonce_pipeline.engine.timestamps import parse_timestamp
from kvonce_pipeline.domains.kvonce.events import Event
from kvonce_pipeline.domains.kvonce.store import FactsBuilder, PayloadFacts, fold, reconcile_report, span_ids_at
from kvonce_pipeline.domains.kvonce.validation import validate_events


def facts_of(events: list[Event]) -> dict[str, Any]:
    """The key facts a drop run gathers while its events stream past."""
    builder = FactsBuilder()
    for index, event in enumerate(events):
        builder.observe(index, event)
    return builder.to_json()


def ev(at: str, kind: str, key: str, value: Any = None, reason: str | None = None) -> Event:
    return Event(parse_timestamp(f"2025-10-04T06:00:{at}Z"), kind, key, value=value, reason=reason,
                 trace_id="t", actor="a")


def payload(name: str, order: int, events: list[Event]) -> PayloadFacts:
    return PayloadFacts(name, order, facts_of(events))


def test_a_key_written_in_two_payloads_is_one_cross_payload_finding_naming_both() -> None:
    a = payload("a-000000000001", 0, [ev("00.000", "success", "k", "v1")])
    b = payload("b-000000000002", 1, [ev("05.000", "success", "k", "v2"), ev("06.000", "success", "other", "x")])
    report = fold([a, b]).report()
    assert report["valid"] is False
    [finding] = report["findings"]
    assert finding["type"] == "multiple-success" and finding["key"] == "k" and finding["severity"] == "error"
    assert (finding["first"]["partition"], finding["second"]["partition"]) == ("a-000000000001", "b-000000000002")
    assert report["keys"]["k"]["value"] == "v1"
    assert report["keys"]["k"]["writtenBy"]["partition"] == "a-000000000001"
    assert report["summary"]["writtenKeys"] == 2


def test_a_late_payload_is_folded_by_event_time_not_arrival() -> None:
    arrived_first = payload("new-000000000001", 0, [ev("10.000", "success", "k", "second")])
    arrived_late = payload("old-000000000002", 1, [ev("01.000", "success", "k", "first")])
    report = fold([arrived_first, arrived_late]).report()
    [finding] = report["findings"]
    assert finding["first"]["partition"] == "old-000000000002"
    assert finding["second"]["partition"] == "new-000000000001"
    assert report["keys"]["k"]["value"] == "first"


def test_a_duplicate_after_a_success_in_an_earlier_payload_is_legal() -> None:
    a = payload("a-000000000001", 0, [ev("00.000", "success", "k", "v")])
    b = payload("b-000000000002", 1, [ev("01.000", "failure", "k", reason="duplicate")])
    report = fold([a, b]).report()
    assert report["valid"] is True and report["findings"] == []
    assert report["resolved"][0]["duplicate"]["partition"] == "b-000000000002"


def test_retries_add_up_across_payloads() -> None:
    a = payload("a-000000000001", 0, [ev("00.000", "retry", "k"), ev("00.100", "retry", "k")])
    b = payload("b-000000000002", 1, [ev("01.000", "retry", "k"), ev("01.100", "retry", "k")])
    [finding] = fold([a, b], max_retries=3).report()["findings"]
    assert finding["type"] == "retry-bound-exceeded"
    assert (finding["first"]["partition"], finding["second"]["partition"]) == ("a-000000000001", "b-000000000002")


def test_findings_inside_one_payload_are_not_cross_payload_findings() -> None:
    a = payload("a-000000000001", 0, [ev("00.000", "success", "k", 1), ev("01.000", "success", "k", 2)])
    assert fold([a]).report()["findings"] == []


def test_equal_times_fall_back_to_arrival_order() -> None:
    a = payload("a-000000000001", 1, [ev("00.000", "success", "k", "late arrival")])
    b = payload("b-000000000002", 0, [ev("00.000", "success", "k", "early arrival")])
    report = fold([a, b]).report()
    assert report["keys"]["k"]["value"] == "early arrival"


def _reconciled(prior: list[PayloadFacts], name: str, events: list[Event]) -> dict[str, Any]:
    return reconcile_report(validate_events(events), name, facts_of(events), prior)


def test_a_payload_whose_duplicate_was_made_legal_earlier_is_valid() -> None:
    prior = [payload("a-000000000001", 0, [ev("00.000", "success", "k", "v")])]
    events = [ev("01.000", "failure", "k", reason="duplicate")]
    alone = validate_events(events)
    assert alone["valid"] is False and alone["issues"][0]["type"] == "duplicate-without-success"
    report = _reconciled(prior, "b-000000000002", events)
    assert report["valid"] is True and report["issues"] == []
    assert report["summary"]["errors"] == 0
    assert report["crossPayload"]["resolved"][0]["success"]["partition"] == "a-000000000001"


def test_a_second_write_in_a_later_payload_fails_it_and_names_the_first() -> None:
    prior = [payload("a-000000000001", 0, [ev("00.000", "success", "k", "v")])]
    events = [ev("02.000", "retry", "x"), ev("03.000", "success", "k", "again")]
    assert validate_events(events)["valid"] is True
    report = _reconciled(prior, "b-000000000002", events)
    assert report["valid"] is False
    [issue] = report["issues"]
    assert issue["type"] == "multiple-success" and issue["eventIndex"] == 1
    assert issue["crossPayload"]["otherPartition"] == "a-000000000001"
    assert report["summary"]["byRule"] == {"multiple-success": 1}


def test_a_duplicate_whose_success_comes_later_in_another_payload_is_only_a_warning() -> None:
    prior = [payload("a-000000000001", 0, [ev("05.000", "success", "k", "v")])]
    report = _reconciled(prior, "b-000000000002", [ev("01.000", "failure", "k", reason="duplicate")])
    assert report["valid"] is True
    [issue] = report["issues"]
    assert issue["type"] == "duplicate-before-success" and issue["severity"] == "warning"
    assert issue["crossPayload"]["otherPartition"] == "a-000000000001"


def test_keys_nobody_else_touched_keep_their_per_payload_findings() -> None:
    prior = [payload("a-000000000001", 0, [ev("00.000", "success", "other", "v")])]
    events = [ev("01.000", "failure", "k", reason="duplicate"), ev("02.000", "success", "k", "v")]
    report = _reconciled(prior, "b-000000000002", events)
    assert [i["type"] for i in report["issues"]] == ["duplicate-before-success"]
    assert report["issues"] == validate_events(events)["issues"]


def test_the_validation_schema_accepts_a_reconciled_report() -> None:
    from kvonce_pipeline.domains.kvonce import schemas

    prior = [payload("a-000000000001", 0, [ev("00.000", "success", "k", "v")])]
    report = _reconciled(prior, "b-000000000002", [ev("03.000", "success", "k", "again")])
    outcome = schemas.check_frame(schemas.validation_schema(report), schemas.issues_frame(report))
    assert outcome.passed, outcome.failure_markdown


def test_a_late_payload_that_wrote_first_carries_the_finding_its_run_is_first_to_see() -> None:
    processed = [payload("new-000000000001", 0, [ev("10.000", "success", "k", "second")])]
    report = _reconciled(processed, "old-000000000002", [ev("01.000", "success", "k", "first")])
    assert report["valid"] is False
    [issue] = report["issues"]
    assert issue["type"] == "multiple-success" and issue["eventIndex"] == 0
    assert issue["crossPayload"]["otherPartition"] == "new-000000000001"
    assert "key written again in new-000000000001" in issue["message"]


def test_span_ids_are_read_at_their_lines_and_a_bad_line_costs_only_its_own(tmp_path) -> None:
    lines = [b'{"key":"a","traceId":"t0","spanId":"s0"}', b"{not json", b'{"key":"c"}',
             b'{"key":"d","traceId":"t3","spanId":"s3"}', b'{"key":"e","traceId":"t4"}']
    events = tmp_path / "kvonce-events.ndjson"
    events.write_bytes(b"\n".join(lines) + b"\n")
    assert span_ids_at(events, {4, 1, 0, 3, 2}) == {0: {"traceId": "t0", "spanId": "s0"},
                                                    3: {"traceId": "t3", "spanId": "s3"}, 4: {"traceId": "t4"}}
    assert span_ids_at(events, {3}) == {3: {"traceId": "t3", "spanId": "s3"}}
    assert span_ids_at(tmp_path / "gone.ndjson", {0}) == {}
