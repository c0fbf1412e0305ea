"""KvOnce's reader: every input form gives the same KvOnce events (sniffing, gzip, SDK protobuf, fallbacks), and unusable input names its place."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from kvonce_pipeline.engine.errors import InputError
from kvonce_pipeline.domains.kvonce.otlp_render import events_to_request
from kvonce_pipeline.engine.otlp_encodings import message_to_request, request_to_message
from kvonce_pipeline.engine.decode.reader import InputFormat, detect_format
from kvonce_pipeline.domains.kvonce.reader import read_trace

from ...otel_sdk import BASE_NS, kv, sdk_request_bytes


def _simple(events):
    return [(e.timestamp, e.type, e.key, e.value, e.reason, e.context) for e in events]


SEED_EVENTS = [
    ("2025-10-04T06:00:00.000Z", "success", "alpha", "v1", None, None),
    ("2025-10-04T06:00:02.000Z", "failure", "beta", None, "duplicate", None),
    ("2025-10-04T06:00:03.000Z", "retry", "beta", None, None, None),
    ("2025-10-04T06:00:04.000Z", "success", "beta", "v2", None, None),
]


def test_seed_ndjson_sample(sample_ndjson: Path) -> None:
    trace = read_trace(sample_ndjson)
    assert trace.format is InputFormat.NDJSON
    assert _simple(trace.events) == SEED_EVENTS
    assert trace.events[0].time_unix_nano == BASE_NS
    assert trace.events[1].origin == "line 2"


def test_ndjson_with_bom_crlf_and_blank_lines(tmp_path: Path, sample_ndjson: Path) -> None:
    lines = sample_ndjson.read_bytes().splitlines()
    blob = b"\xef\xbb\xbf" + b"\r\n\r\n".join(lines) + b"\r\n\r\n"
    path = tmp_path / "events.txt"  # no telling extension: the content decides
    path.write_bytes(blob)
    trace = read_trace(path)
    assert trace.format is InputFormat.NDJSON
    assert _simple(trace.events) == SEED_EVENTS


def test_bundled_otlp_sample_orders_batches_by_time(sample_otlp: Path) -> None:
    trace = read_trace(sample_otlp)
    assert trace.format is InputFormat.OTLP_JSON
    assert trace.reordered, "the sample's second batch holds earlier events"
    times = [e.time_unix_nano for e in trace.events]
    assert times == sorted(times)
    assert [e.key for e in trace.events] == ["alpha", "beta", "beta", "beta", "beta", "alpha", "gamma"]
    assert trace.events[3].reason == "duplicate" and trace.events[3].origin == "span r1/s0/p0"
    assert trace.events[1].context == {"attempt": 1, "cause": "timeout"}
    assert trace.events[0].trace_id == "5b8efff798038103d269b633813fc60c"  # hex, not base64-mangled
    assert trace.events[0].span_id == "a1b2c3d4e5f60001"
    assert trace.events[0].actor == "kvonce-writer"
    assert trace.stats.spans == 8 and trace.stats.skipped_spans == 1


def _sdk_trace() -> bytes:
    return sdk_request_bytes([
        kv("retry", "k1", 0, context_attempt=1),
        kv("success", "k1", 10, value="v1", context_attempt=2),
        {"name": "GET /health", "offset_ms": 5, "attributes": {"http.method": "GET"}},
        kv("failure", "k1", 20, reason="duplicate", context='{"http.status": 409}'),
    ])


def test_protobuf_from_the_real_sdk(tmp_path: Path) -> None:
    path = tmp_path / "payload.bin"
    path.write_bytes(_sdk_trace())
    trace = read_trace(path)
    assert trace.format is InputFormat.OTLP_PROTO
    assert [(e.type, e.key, e.value, e.reason, e.context) for e in trace.events] == [
        ("retry", "k1", None, None, {"attempt": 1}),
        ("success", "k1", "v1", None, {"attempt": 2}),
        ("failure", "k1", None, "duplicate", {"http.status": 409}),
    ]
    assert all(len(e.trace_id) == 32 and len(e.span_id) == 16 for e in trace.events)
    assert {e.actor for e in trace.events} == {"kvonce-writer"}
    assert trace.stats.skipped_spans == 1


def test_all_forms_give_the_same_events(tmp_path: Path) -> None:
    blob = _sdk_trace()
    message = ExportTraceServiceRequest.FromString(blob)
    reference = read_trace(_write(tmp_path / "a.pb", blob)).events
    request = message_to_request(message)
    half = ExportTraceServiceRequest()
    half.resource_spans.add().CopyFrom(message.resource_spans[0])
    forms = {
        "json": orjson.dumps(request, option=orjson.OPT_INDENT_2),
        "json-one-line": orjson.dumps(request),
        "jsonl": orjson.dumps(request) + b"\n" + orjson.dumps({"resourceSpans": []}) + b"\n",
        "tracesdata": TracesData.FromString(blob).SerializeToString(),
        "delimited": struct.pack(">I", len(blob)) + blob + struct.pack(">I", 0),
    }
    for name, data in forms.items():
        for compressed in (False, True):
            path = _write(tmp_path / f"{name}{'.gz' if compressed else ''}",
                          gzip.compress(data) if compressed else data)
            trace = read_trace(path)
            assert trace.compressed is compressed, name
            got = trace.events
            assert len(got) == len(reference), name
            assert all(a.same_event(b) for a, b in zip(got, reference)), name


def test_format_override_and_sniffing(tmp_path: Path, sample_otlp: Path) -> None:
    assert detect_format(sample_otlp) == (InputFormat.OTLP_JSON, False)
    with pytest.raises(InputError, match="not OTLP protobuf"):
        detect_format(sample_otlp, hint="otlp-proto")
    unknown = _write(tmp_path / "x.json", b"\x89PNG\r\n")
    with pytest.raises(InputError, match="unrecognised format"):
        read_trace(unknown)


def test_every_anyvalue_kind_and_legacy_mapvalue(tmp_path: Path) -> None:
    context = {"kvlistValue": {"values": [
        {"key": "attempt", "value": {"intValue": "2"}},
        {"key": "n", "value": {"intValue": 7}},
        {"key": "ratio", "value": {"doubleValue": 0.5}},
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "ok", "value": {"boolValue": True}},
        {"key": "raw", "value": {"bytesValue": "aGk="}},
        {"key": "list", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {}]}}},
        {"key": "legacy", "value": {"mapValue": {"fields": [{"key": "x", "value": {"stringValue": "y"}}]}}},
    ]}}
    request = {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": [{
        "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "", "startTimeUnixNano": BASE_NS,
        "attributes": [
            {"key": "kvonce.event.type", "value": {"stringValue": "retry"}},
            {"key": "kvonce.event.key", "value": {"stringValue": "k"}},
            {"key": "kvonce.event.context", "value": context},
            {"key": "unknownField", "value": {"futureValue": 1}},
        ], "someFutureField": {"x": 1}}]}]}]}
    trace = read_trace(_write(tmp_path / "t.json", orjson.dumps(request)))
    (event,) = trace.events
    assert event.context == {"attempt": 2, "n": 7, "ratio": 0.5, "nan": "NaN", "ok": True, "raw": "aGk=",
                             "list": ["a", None], "legacy": {"x": "y"}}
    assert event.trace_id == "5b8efff798038103d269b633813fc60c"
    assert event.timestamp == "2025-10-04T06:00:00.000Z"
    assert any("mapValue" in w for w in trace.stats.warnings)


def _span(attrs: list[tuple[str, str]], **fields):
    return {**fields, "startTimeUnixNano": str(BASE_NS),
            "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attrs]}


def test_trace_id_and_actor_fallbacks(tmp_path: Path) -> None:
    base = [("kvonce.event.type", "success"), ("kvonce.event.key", "k"), ("kvonce.event.value", "v")]
    request = {"resourceSpans": [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}},
                                     {"key": "trace_id", "value": {"stringValue": "resource-trace"}}]},
         "scopeSpans": [{"spans": [
             _span(base + [("kvonce.trace_id", "attr-trace"), ("enduser.id", "alice")]),
             _span(base),
         ]}]},
        {"resource": {}, "scopeSpans": [{"spans": [_span(base, traceId="")]}, {"spans": [_span(base)]}]},
    ]}
    events = read_trace(_write(tmp_path / "t.json", orjson.dumps(request))).events
    assert [(e.trace_id, e.actor) for e in events] == [
        ("attr-trace", "alice"),
        ("resource-trace", "svc"),
        ("otlp-missing-traceid-r1-s0-p0", "unknown"),
        ("otlp-missing-traceid-r1-s1-p0", "unknown"),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b'{"resourceSpans": []}', "no kvonce events"),
        (orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [_span([("http.method", "GET")])]}]}]}),
         "no kvonce events (1 spans"),
        (orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
            {**_span([("kvonce.event.type", "retry"), ("kvonce.event.key", "k")]), "traceId": "abc"}]}]}]}),
         "span r0/s0/p0: traceId 'abc' is not 32 hex digits"),
        (orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
            {**_span([("kvonce.event.type", "retry"), ("kvonce.event.key", "k")]),
             "startTimeUnixNano": str(2**64)}]}]}]}),
         "outside the representable range"),
        (b'{"resourceSpans": [ {"scopeSpans": ', "not valid JSON"),
        (b'{"timestamp": "2025-10-04T06:00:00Z", "type": "success", "key": [5]}\n',
         "line 1: field 'key' must be a string, number or boolean, got list"),
        (b'{"timestamp": "yesterday", "type": "success", "key": "k"}\n', "line 1: timestamp 'yesterday'"),
        (b'{"type": "success", "key": "k"}\n[1, 2]\n', "line 2"),
    ],
)
def test_unusable_input_names_the_place(tmp_path: Path, content: bytes, message: str) -> None:
    path = _write(tmp_path / "bad.json", content)
    with pytest.raises(InputError) as caught:
        read_trace(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        read_trace(tmp_path)


def test_ndjson_round_trips_through_the_inverse_mapping(tmp_path: Path, sample_ndjson: Path) -> None:
    original = read_trace(sample_ndjson).events
    rendered = _write(tmp_path / "collected.json", orjson.dumps(events_to_request(original)))
    again = read_trace(rendered).events
    assert all(a.same_event(b) for a, b in zip(again, original)) and len(again) == len(original)
    # and through protobuf, which json_format would have mangled without the hex-id conversion
    proto = _write(tmp_path / "collected.pb", request_to_message(orjson.loads(rendered.read_bytes()))
                   .SerializeToString())
    assert all(a.same_event(b) for a, b in zip(read_trace(proto).events, original))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
