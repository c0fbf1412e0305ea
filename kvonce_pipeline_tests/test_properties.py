"""Property-based tests (hypothesis), with a bounded number of examples each.

1. Random event sequences survive NDJSON -> OTLP/JSON -> OTLP protobuf (and the length-delimited and
   JSON Lines forms) -> events unchanged, field by field and JSON type by JSON type.
2. The validator's verdict, and its list of findings, on any event sequence equals a reference
   replay written here from the spec (``/work/shared/reference/kvonce-spec.md``) and the rule table,
   deliberately in another shape: the validator is one pass with per-key state; the reference groups
   each key's events and reads the rules off those lists.
3. The same verdict comes out of the real ``kvonce conformance`` (exit 0 or 1) on the NDJSON form.

Examples are few enough (see ``*_EXAMPLES``) that the file runs in well under 30 s.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kvonce_pipeline.cli import main
from kvonce_pipeline.engine.errors import InputError
from kvonce_pipeline.domains.kvonce.events import Event
from kvonce_pipeline.domains.kvonce.otlp_render import events_to_request
from kvonce_pipeline.engine.otlp_encodings import request_to_message
from kvonce_pipeline.domains.kvonce.reader import read_trace
from kvonce_pipeline.domains.kvonce.validation import validate_events

ROUND_TRIP_EXAMPLES = 120
REFERENCE_EXAMPLES = 600
CLI_EXAMPLES = 40
BASE_NS = 1_759_557_600_000_000_000
INT64 = (-(2**63), 2**63 - 1)

# --- strategies ------------------------------------------------------------------------------

#: Text protobuf and JSON can both carry: no lone surrogates (not UTF-8).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
non_empty_text = text.filter(bool)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(*INT64),
                         st.floats(allow_nan=False, allow_infinity=False), text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)
#: A top-level context string that starts with '{' or '[' is read back as JSON by the mapping
#: (``kvonce.event.context`` set by SDKs that cannot set map attributes); the renderer marks such strings (kvonce.context_is_text) and a test below covers it.
contexts = st.one_of(
    st.none(),
    json_values.filter(lambda v: not (isinstance(v, str) and v[:1] in ("{", "["))),
)
hex_ids = st.binary(min_size=8, max_size=8).map(bytes.hex)
trace_ids = st.one_of(st.none(), st.binary(min_size=16, max_size=16).map(bytes.hex), non_empty_text)


@dataclass(frozen=True)
class Spec:
    """One generated event, as the NDJSON writer will spell it."""

    type: str
    key: str
    value: str | None
    reason: str | None
    context: Any
    trace_id: str | None
    span_id: str | None
    actor: str | None
    has_time: bool


specs = st.builds(
    Spec,
    type=st.one_of(st.sampled_from(["success", "retry", "failure"]), non_empty_text),
    key=non_empty_text,
    value=st.one_of(st.none(), text),
    reason=st.one_of(st.none(), st.sampled_from(["duplicate", "transient"]), text),
    context=contexts,
    trace_id=trace_ids,
    span_id=st.one_of(st.none(), hex_ids),
    actor=st.one_of(st.none(), non_empty_text),
    has_time=st.booleans(),
)


def ndjson_line(spec: Spec, time_ns: int | None) -> dict[str, Any]:
    line: dict[str, Any] = {"type": spec.type, "key": spec.key}
    if time_ns is not None:
        line["timeUnixNano"] = str(time_ns)
    for name, item in (("value", spec.value), ("reason", spec.reason), ("context", spec.context),
                       ("traceId", spec.trace_id), ("spanId", spec.span_id), ("actor", spec.actor)):
        if item is not None:
            line[name] = item
    return line


def write_ndjson(path: Path, specs_: Sequence[Spec], gaps: Sequence[int]) -> list[dict[str, Any]]:
    """Times strictly increase where present, so no reader reorders; returns the lines written."""
    lines, now = [], BASE_NS
    for spec, gap in zip(specs_, gaps):
        now += gap
        lines.append(ndjson_line(spec, now if spec.has_time else None))
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return lines


def canonical(event: Event) -> bytes:
    """Every field but ``origin`` (where it was read from), with JSON types kept (1 is not 1.0)."""
    data = event.to_json()
    data.pop("origin", None)
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def expected_event(number: int, line: dict[str, Any]) -> dict[str, Any]:
    """What the NDJSON reader must make of a line we wrote (the model, independent of the code)."""
    return {
        "time": int(line["timeUnixNano"]) if "timeUnixNano" in line else None,
        "type": line["type"], "key": line["key"], "value": line.get("value"), "reason": line.get("reason"),
        "context": line.get("context"),
        "trace_id": line.get("traceId") or f"ndjson-missing-traceid-l{number}",
        "span_id": line.get("spanId") or "", "actor": line.get("actor") or "unknown",
    }


def observed(event: Event) -> dict[str, Any]:
    return {"time": event.time_unix_nano, "type": event.type, "key": event.key, "value": event.value,
            "reason": event.reason, "context": event.context, "trace_id": event.trace_id,
            "span_id": event.span_id, "actor": event.actor}


# --- 1. round trip -------------------------------------------------------------------------------


@settings(max_examples=ROUND_TRIP_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(specs, min_size=1, max_size=12), data=st.data())
def test_ndjson_otlp_json_protobuf_round_trip(batch: list[Spec], data: st.DataObject, tmp_path: Path) -> None:
    gaps = data.draw(st.lists(st.integers(1, 10**12), min_size=len(batch), max_size=len(batch)))
    lines = write_ndjson(tmp_path / "events.ndjson", batch, gaps)
    from_ndjson = read_trace(tmp_path / "events.ndjson").events
    assert [observed(e) for e in from_ndjson] == [expected_event(n, line) for n, line in enumerate(lines, 1)]
    # JSON equality hides 1 == 1.0 == True; compare the serialised form as well
    assert [orjson.loads(canonical(e))["context"] if e.context is not None else None for e in from_ndjson] == \
           [orjson.loads(orjson.dumps(line.get("context"))) for line in lines]

    request = events_to_request(from_ndjson)
    forms = {
        "otlp.json": orjson.dumps(request, option=orjson.OPT_INDENT_2),
        "otlp.jsonl": orjson.dumps(request) + b"\n",
    }
    message = request_to_message(orjson.loads(forms["otlp.json"])).SerializeToString()
    forms["otlp.pb"] = message
    forms["otlp-delimited.pb"] = struct.pack(">I", len(message)) + message
    reference = [canonical(e) for e in from_ndjson]
    for name, blob in forms.items():
        (tmp_path / name).write_bytes(blob)
        again = read_trace(tmp_path / name).events
        assert [canonical(e) for e in again] == reference, name


def test_json_looking_string_context_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    path.write_bytes(orjson.dumps({"type": "retry", "key": "k", "timeUnixNano": str(BASE_NS),
                                   "context": '{"attempt": 1}'}) + b"\n")
    event = read_trace(path).events[0]
    (tmp_path / "o.json").write_bytes(orjson.dumps(events_to_request([event])))
    assert read_trace(tmp_path / "o.json").events[0].context == '{"attempt": 1}'


def test_time_zero_is_refused_or_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    path.write_bytes(b'{"type":"success","key":"k","value":"v","timeUnixNano":"0"}\n')
    assert_refused_or_round_trips(path, tmp_path)


def assert_refused_or_round_trips(path: Path, tmp_path: Path) -> None:
    """What NDJSON accepts must survive conversion to OTLP; otherwise reading must refuse it."""
    try:
        event = read_trace(path).events[0]
    except InputError as error:
        assert str(error).startswith(f"{path}: line 1: "), str(error)
        return
    (tmp_path / "o.json").write_bytes(orjson.dumps(events_to_request([event])))
    assert canonical(read_trace(tmp_path / "o.json").events[0]) == canonical(event)


# --- 2. the validator against a reference replay --------------------------------------------------

WARNINGS = {"duplicate-before-success", "success-after-retries-exhausted"}


def attempt_number(context: Any) -> int | float | None:
    """Spec: a bare number is the attempt; else a numeric ``attempt``, else a numeric ``attempts``."""
    def numeric(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if numeric(context):
        return context
    if isinstance(context, dict):
        for name in ("attempt", "attempts"):
            if numeric(context.get(name)):
                return context[name]
    return None


def reference_findings(events: Sequence[Event], max_retries: int) -> list[tuple[str, str | None, int]]:
    """(rule, key, event index) for every finding, computed per key from its ordered events."""
    found: list[tuple[str, str | None, int]] = []
    by_key: dict[str, list[tuple[int, Event]]] = {}
    for index, event in enumerate(events):
        if event.time_unix_nano is None:
            found.append(("missing-required-field", event.key, index))
        if event.type is None:
            found.append(("missing-required-field", event.key, index))
        elif event.type not in ("success", "retry", "failure"):
            found.append(("unknown-event-type", event.key, index))
        if event.key is None:
            found.append(("missing-required-field", None, index))
        else:
            by_key.setdefault(event.key, []).append((index, event))

    for key, story in by_key.items():
        successes = [i for i, e in story if e.type == "success"]
        retries = [(i, e) for i, e in story if e.type == "retry"]
        first_success = successes[0] if successes else None
        found += [("success-missing-value", key, i) for i, e in story if e.type == "success" and e.value is None]
        found += [("multiple-success", key, i) for i in successes[1:]]
        if len(retries) > max_retries:
            found.append(("retry-bound-exceeded", key, retries[max_retries][0]))
        if first_success is not None and max_retries > 0:
            retries_before = sum(1 for i, _ in retries if i < first_success)
            if retries_before >= max_retries:
                found.append(("success-after-retries-exhausted", key, first_success))
        with_context = [(i, attempt_number(e.context)) for i, e in retries if e.context is not None]
        missing = [i for i, attempt in with_context if attempt is None]
        found += [("retry-context-missing", key, i) for i in missing]
        if not missing:
            wrong = [i for n, (i, attempt) in enumerate(with_context, 1) if attempt != n]
            if wrong:
                found.append(("retry-attempt-out-of-sequence", key, wrong[0]))
        success_attempts = [(i, attempt_number(e.context)) for i, e in story if e.type == "success"
                            and attempt_number(e.context) is not None]
        if with_context and success_attempts and success_attempts[0][1] != len(with_context) + 1:
            found.append(("success-attempt-mismatch", key, success_attempts[0][0]))
        found += [("missing-required-field", key, i) for i, e in story if e.type == "failure" and e.reason is None]
        early_duplicates = [i for i, e in story if e.type == "failure" and e.reason is not None
                            and e.reason.lower() == "duplicate" and (first_success is None or i < first_success)]
        if early_duplicates and first_success is None:
            found.append(("duplicate-without-success", key, early_duplicates[0]))
        else:
            found += [("duplicate-before-success", key, i) for i in early_duplicates]
    return sorted(found, key=lambda f: (f[2], f[0], f[1] or ""))


def reference_valid(findings: list[tuple[str, str | None, int]], strict: bool) -> bool:
    return not any(strict or rule not in WARNINGS for rule, _key, _index in findings)


attempt_values = st.one_of(st.integers(0, 5), st.sampled_from([1.0, 2.0, 2.5, True, "1", None]))
context_values = st.one_of(
    st.none(), st.just({}), st.just("text"), st.just({"node": "n1"}), attempt_values,
    st.builds(lambda a: {"attempt": a}, attempt_values), st.builds(lambda a: {"attempts": a}, attempt_values),
    st.builds(lambda a, b: {"attempt": a, "attempts": b}, attempt_values, attempt_values),
)
machine_events = st.builds(
    Event,
    time_unix_nano=st.one_of(st.none(), st.integers(1, 2**62)),
    type=st.sampled_from(["success", "retry", "failure", "delete", None]),
    key=st.sampled_from(["a", "b", "c", None]),
    value=st.sampled_from([None, "v"]),
    reason=st.sampled_from([None, "duplicate", "DUPLICATE", "transient"]),
    context=context_values,
)


@settings(max_examples=REFERENCE_EXAMPLES, deadline=None)
@given(events=st.lists(machine_events, max_size=20), max_retries=st.integers(0, 4), strict=st.booleans())
@example(events=[Event(1, "failure", "beta", reason="duplicate"), Event(2, "success", "beta", value="v")],
         max_retries=3, strict=False)  # the seed's key 'beta': a warning, valid unless strict
def test_validator_matches_reference_replay(events: list[Event], max_retries: int, strict: bool) -> None:
    report = validate_events(events, max_retries=max_retries, strict=strict)
    expected = reference_findings(events, max_retries)
    got = sorted(((i["type"], i["key"], i["eventIndex"]) for i in report["issues"]),
                 key=lambda f: (f[2], f[0], f[1] or ""))
    assert got == expected
    assert report["valid"] is reference_valid(expected, strict)
    for issue in report["issues"]:
        assert issue["severity"] == ("error" if strict or issue["type"] not in WARNINGS else "warning")


# --- 3. the same verdict through the real command ---------------------------------------------------

cli_specs = st.builds(
    Spec,
    type=st.sampled_from(["success", "retry", "failure", "delete"]),
    key=st.sampled_from(["a", "b"]),
    value=st.sampled_from([None, "v"]),
    reason=st.sampled_from([None, "duplicate", "transient"]),
    context=st.one_of(st.none(), st.builds(lambda a: {"attempt": a}, st.integers(0, 4)), st.just({"node": "x"})),
    trace_id=st.none(), span_id=st.none(), actor=st.none(), has_time=st.just(True),
)


@settings(max_examples=CLI_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(cli_specs, min_size=1, max_size=10), max_retries=st.integers(0, 3))
def test_conformance_exit_code_matches_reference(batch: list[Spec], max_retries: int, tmp_path: Path) -> None:
    lines = write_ndjson(tmp_path / "t.ndjson", batch, [1_000_000] * len(batch))
    events = [Event(int(line["timeUnixNano"]), line["type"], line["key"], line.get("value"), line.get("reason"),
                    line.get("context")) for line in lines]
    findings = reference_findings(events, max_retries)
    with redirect_stderr(io.StringIO()):
        code = main(["conformance", "--input", str(tmp_path / "t.ndjson"), "--output-dir", str(tmp_path / "out"),
                     "--max-retries", str(max_retries)])
    assert code == (0 if reference_valid(findings, strict=False) else 1)
    report = orjson.loads((tmp_path / "out" / "kvonce-validation.json").read_bytes())
    assert sorted((i["type"], i["eventIndex"]) for i in report["issues"]) == sorted((r, i) for r, _k, i in findings)


def test_uint64_context_integer_is_refused_or_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    path.write_bytes(b'{"type":"retry","key":"k","timeUnixNano":"1759557600000000000",'
                     b'"context":{"attempt":1,"n":9223372036854775808}}\n')
    assert_refused_or_round_trips(path, tmp_path)


# --- 4. the NDJSON line encoder ------------------------------------------------------------------

events_for_lines = st.builds(
    Event,
    time_unix_nano=st.one_of(st.none(), st.integers(1, 2**63 - 1)),
    type=st.one_of(st.none(), text),
    key=st.one_of(st.none(), text),
    value=json_values,
    reason=st.one_of(st.none(), text),
    context=json_values,
    trace_id=text,
    span_id=st.one_of(st.just(""), hex_ids),
    actor=text,
    origin=st.one_of(st.just(""), text),
)


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_float(item) for item in value)
    return False


@settings(max_examples=400, deadline=None)
@given(batch=st.lists(events_for_lines, min_size=1, max_size=8))
def test_event_lines_are_to_json_lines(batch: list[Event]) -> None:
    """The msgspec line encoder writes what ``orjson.dumps(event.to_json())`` writes: byte for byte
    when no float is involved (msgspec spells 1e+16 as 1e16), value for value and type for type always."""
    from kvonce_pipeline.engine.timestamps import format_timestamp
    from kvonce_pipeline.domains.kvonce.event_log import encode_lines, event_line

    stamps = [None if e.time_unix_nano is None else format_timestamp(e.time_unix_nano) for e in batch]
    encoded = encode_lines([event_line(e, s) for e, s in zip(batch, stamps)])
    reference = b"".join(orjson.dumps(e.to_json(s)) + b"\n" for e, s in zip(batch, stamps))
    assert [orjson.loads(line) for line in encoded.splitlines()] == \
        [orjson.loads(line) for line in reference.splitlines()]
    for ours, theirs in zip(encoded.splitlines(), reference.splitlines()):
        parsed = orjson.loads(theirs)
        if not _has_float([parsed.get("value"), parsed.get("context")]):
            assert ours == theirs
        assert canonical_types(orjson.loads(ours)) == canonical_types(parsed)


def canonical_types(value: Any) -> Any:
    """The JSON type of every leaf, so 1 and 1.0 (equal in Python) still differ."""
    if isinstance(value, dict):
        return {name: canonical_types(item) for name, item in value.items()}
    if isinstance(value, list):
        return [canonical_types(item) for item in value]
    return type(value).__name__
