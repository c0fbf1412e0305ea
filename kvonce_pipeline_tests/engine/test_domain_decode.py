"""Reading any domain's events: every format gives the same events; the fast path gives the general
path's events; unreadable input names its place."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from kvonce_pipeline.engine.domain import Domain, DomainEvent
from kvonce_pipeline.engine.domain_decode import read_domain_events
from kvonce_pipeline.engine.domain_render import FORMATS, write_trace
from kvonce_pipeline.engine.errors import InputError
from kvonce_pipeline.engine.limits import Limits
from kvonce_pipeline.engine.otlp_encodings import request_to_message

T0 = 1_767_225_600_000_000_000


def _events(count: int = 6) -> list[DomainEvent]:
    out = []
    for i in range(count):
        fields: dict = {"reason": f"r{i}"} if i % 2 else {"context": {"attempt": i, "ok": True, "nested": {"a": [1]}}}
        out.append(DomainEvent(T0 + i * 1000, "close" if i % 2 else "open", f"k{i // 2}", fields,
                               f"{i:032x}", f"{i + 1:016x}", "svc-a" if i < 3 else "svc-b"))
    return out


def _same(a: DomainEvent, b: DomainEvent) -> bool:
    return (a.time_unix_nano, a.type, a.key, a.fields, a.trace_id, a.span_id, a.actor) == \
        (b.time_unix_nano, b.type, b.key, b.fields, b.trace_id, b.span_id, b.actor)


@pytest.mark.parametrize("form", FORMATS)
def test_every_format_reads_back_the_same_events(toy: Domain, tmp_path: Path, form: str) -> None:
    path = tmp_path / "trace"
    events = _events()
    assert write_trace(toy, events, path, form) == len(events)
    read = read_domain_events(path, [toy])
    assert read.format.value.startswith(form.split("-")[0] if form == "ndjson" else "otlp")
    got = read.events["toy"]
    assert len(got) == len(events) and all(_same(a, b) for a, b in zip(events, got))
    assert all(event.origin for event in got)  # each points back at its line or span


def test_gzip_is_read_too(toy: Domain, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    write_trace(toy, _events(), path, "otlp-json")
    zipped = tmp_path / "trace.json.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    read = read_domain_events(zipped, [toy])
    assert read.compressed and len(read.events["toy"]) == 6


def _span(attrs: list[tuple[str, dict]], i: int = 0, **extra: object) -> dict:
    return {"traceId": f"{i + 1:032x}", "spanId": f"{i + 1:016x}", "startTimeUnixNano": str(T0 + i),
            "attributes": [{"key": k, "value": v} for k, v in attrs], **extra}


def _doc(spans: list[dict], resource: list | None = None) -> bytes:
    return orjson.dumps({"resourceSpans": [{"resource": {"attributes": resource or []},
                                            "scopeSpans": [{"spans": spans}]}]})


def test_the_fast_path_and_the_general_path_agree(toy: Domain, tmp_path: Path) -> None:
    """The same spans, once as exporters write them (fast path) and once each with something that
    sends it down the general path (a fallback-attribute name on the span): the same events."""
    base = [
        [("toy.event.type", {"stringValue": "open"}), ("toy.event.key", {"stringValue": "a"}),
         ("toy.event.context", {"kvlistValue": {"values": [{"key": "n", "value": {"intValue": "3"}}]}})],
        [("toy.event.type", {"stringValue": "close"}), ("toy.event.key", {"stringValue": "a"}),
         ("toy.event.reason", {"stringValue": "done"})],
        [("toy.event.type", {"stringValue": "open"}), ("toy.event.key", {"stringValue": "b"}),
         ("toy.event.context", {"stringValue": '{"from": "json text"}'})],
        [("toy.event.type", {"stringValue": "open"}), ("toy.event.key", {"stringValue": "c"}),
         ("toy.event.context.flat", {"stringValue": "x"}), ("toy.event.context.n", {"intValue": "2"})],
    ]
    resource = [{"key": "service.name", "value": {"stringValue": "svc"}}]
    fast = tmp_path / "fast.json"
    fast.write_bytes(_doc([_span(attrs, i) for i, attrs in enumerate(base)], resource))
    slow = tmp_path / "slow.json"
    slow.write_bytes(_doc([_span(attrs + [("service.name", {"stringValue": "svc"})], i)
                           for i, attrs in enumerate(base)], resource))
    a, b = read_domain_events(fast, [toy]).events["toy"], read_domain_events(slow, [toy]).events["toy"]
    assert [e.fields for e in a] == [{"context": {"n": 3}}, {"reason": "done"}, {"context": {"from": "json text"}},
                                     {"context": {"flat": "x", "n": 2}}]
    assert len(a) == len(b) == 4 and all(_same(x, y) for x, y in zip(a, b))
    assert all(e.actor == "svc" for e in a)


def test_spans_of_other_domains_are_skipped_and_counted(toy: Domain, tmp_path: Path) -> None:
    spans = [_span([("toy.event.type", {"stringValue": "open"}), ("toy.event.key", {"stringValue": "a"})], 0),
             _span([("kvonce.event.type", {"stringValue": "success"}), ("kvonce.event.key", {"stringValue": "k"})], 1),
             _span([("http.method", {"stringValue": "GET"})], 2)]
    path = tmp_path / "mixed.json"
    path.write_bytes(_doc(spans))
    read = read_domain_events(path, [toy])
    assert [e.key for e in read.events["toy"]] == ["a"]
    assert read.summary("toy")["skippedSpans"] == 2 and read.summary("toy")["spans"] == 3


@pytest.mark.parametrize("form", ["otlp-json", "otlp-proto"])
def test_an_attribute_of_the_domain_given_twice_is_refused_naming_the_span(toy: Domain, tmp_path: Path,
                                                                          form: str) -> None:
    """Which of two values was meant cannot be told: the span is named (as for KvOnce's attributes),
    while a repeated attribute no domain reads is left alone."""
    twice = [("toy.event.type", {"stringValue": "close"}), ("toy.event.key", {"stringValue": "a"}),
             ("toy.event.reason", {"stringValue": "one"}), ("toy.event.reason", {"stringValue": "two"})]
    harmless = [("toy.event.type", {"stringValue": "open"}), ("toy.event.key", {"stringValue": "b"}),
                ("http.method", {"stringValue": "GET"}), ("http.method", {"stringValue": "PUT"})]
    path = tmp_path / "twice"
    document = _doc([_span(harmless, 0), _span(twice, 1)])
    path.write_bytes(document if form == "otlp-json" else request_to_message(orjson.loads(document)).SerializeToString())
    with pytest.raises(InputError) as caught:
        read_domain_events(path, [toy])
    assert "toy.event.reason appears more than once" in str(caught.value)
    assert caught.value.where.endswith("span r0/s0/p1")  # a one-line document reads as JSON Lines: "line 1 span ..."
    path.write_bytes(_doc([_span(harmless, 0)]) if form == "otlp-json"
                     else request_to_message(orjson.loads(_doc([_span(harmless, 0)]))).SerializeToString())
    assert [e.key for e in read_domain_events(path, [toy]).events["toy"]] == ["b"]


@pytest.mark.parametrize("line, message", [
    (b"{not json", "not valid JSON"),
    (b'["an", "array"]', "must be a JSON object"),
    (b'{"type": 5, "key": "a"}', "field 'type' must be a string"),
    (b'{"timestamp": "yesterday", "type": "open", "key": "a"}', "not ISO 8601"),
    (b'{"type": "open", "key": "a", "key": "b"}', "duplicate key 'key'"),
    (b'{"type": "open", "key": "a", "key" : "b"}', "duplicate key 'key'"),  # spaced: the count cannot see it
    (b'{"type": "open", "key": {"an": "object"}}', "key"),
])
def test_an_unreadable_line_names_its_number(toy: Domain, tmp_path: Path, line: bytes, message: str) -> None:
    path = tmp_path / "bad.ndjson"
    path.write_bytes(b'{"timestamp": "2026-01-01T00:00:00Z", "type": "open", "key": "a"}\n' + line + b"\n")
    with pytest.raises(InputError) as caught:
        read_domain_events(path, [toy])
    assert caught.value.where == "line 2" and message in str(caught.value)


def test_the_event_limit_holds(toy: Domain, tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    write_trace(toy, _events(6), path, "otlp-json")
    with pytest.raises(InputError, match="more than 5 events"):
        read_domain_events(path, [toy], limits=Limits(max_events=5))


def test_a_wrongly_typed_field_is_kept_for_the_pass_to_judge(toy: Domain, tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    path.write_bytes(b'{"timestamp": "2026-01-01T00:00:00Z", "type": "close", "key": "a", "reason": 7}\n')
    assert read_domain_events(path, [toy]).events["toy"][0].fields == {"reason": 7}
