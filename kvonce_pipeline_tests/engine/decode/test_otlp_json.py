"""The general OTLP/JSON decoder's promises that the typed path does not share (it gives up to it)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.cli import main
from kvonce_pipeline.engine.errors import InputError
from kvonce_pipeline.domains.kvonce.reader import read_trace

from ...conftest import SAMPLES


def _with_ids(tmp_path: Path, **ids: tuple[int, str]) -> Path:
    """The bundled sample with span ``i``'s id field set (``traceId=(0, "x")``)."""
    doc = orjson.loads((SAMPLES / "kvonce-otlp.json").read_bytes())
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    for name, (index, value) in ids.items():
        field = name.rstrip("0123456789")
        spans[index][field] = value
    path = tmp_path / "ids.json"
    path.write_bytes(orjson.dumps(doc))
    return path


def test_legacy_ids_are_kept_as_written_with_a_counted_warning(tmp_path: Path) -> None:
    path = _with_ids(tmp_path, traceId=(0, "trace-legacy-1"), traceId2=(1, "trace-legacy-1"),
                     spanId=(2, "W47/95gDgQ=="))
    trace = read_trace(path)
    plain = read_trace(SAMPLES / "kvonce-otlp.json")
    assert [e.trace_id for e in trace.events if e.trace_id.startswith("trace-")] == ["trace-legacy-1"] * 2
    assert "W47/95gDgQ==" in [e.span_id for e in trace.events]
    warnings = trace.summary()["warnings"]
    assert warnings == [
        "2 span(s) with a traceId that is not 32 hex digits (first: 'trace-legacy-1'): kept as written; "
        "findings still point at them, no verdict depends on them",
        "1 span(s) with a spanId that is not 16 hex digits (first: 'W47/95gDgQ=='): kept as written; "
        "findings still point at them, no verdict depends on them"]
    assert [(e.time_unix_nano, e.type, e.key, e.value) for e in trace.events] == [
        (e.time_unix_nano, e.type, e.key, e.value) for e in plain.events]


def test_the_verdict_does_not_depend_on_legacy_ids(tmp_path: Path) -> None:
    path = _with_ids(tmp_path, traceId=(0, "trace-legacy-1"), spanId=(3, "legacy-span"))
    assert main(["conformance", "--input", str(path), "--output-dir", str(tmp_path / "legacy")]) == 0
    assert main(["conformance", "--input", str(SAMPLES / "kvonce-otlp.json"), "--output-dir",
                 str(tmp_path / "hex")]) == 0
    legacy = orjson.loads((tmp_path / "legacy" / artifacts.VALIDATION).read_bytes())
    plain = orjson.loads((tmp_path / "hex" / artifacts.VALIDATION).read_bytes())
    assert [(i["type"], i["key"], i["eventIndex"]) for i in legacy["issues"]] == [
        (i["type"], i["key"], i["eventIndex"]) for i in plain["issues"]]
    assert legacy["valid"] is plain["valid"] is True
    summary = (tmp_path / "legacy" / artifacts.SUMMARY).read_text()
    assert "with a spanId that is not 16 hex digits (first: 'legacy-span')" in summary


@pytest.mark.parametrize("bad", ["abc", "ABCDEF" * 6, "0" * 31])
def test_hex_digits_of_the_wrong_length_are_still_an_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InputError, match="is not 32 hex digits"):
        read_trace(_with_ids(tmp_path, traceId=(0, bad)))


def _with_attribute(tmp_path: Path, name: str, value: dict[str, object], *, pretty: bool = False) -> Path:
    doc = orjson.loads((SAMPLES / "kvonce-otlp.json").read_bytes())
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"] = [a if a["key"] != name else {"key": name, "value": value} for a in span["attributes"]]
    path = tmp_path / "attr.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 if pretty else 0))
    return path


@pytest.mark.parametrize(("any_value", "text"), [({"intValue": "42"}, "42"), ({"intValue": 7}, "7"),
                                                 ({"boolValue": True}, "true"), ({"doubleValue": 1.5}, "1.5")])
@pytest.mark.parametrize("name", ["kvonce.event.key", "kvonce.event.value"])
def test_scalar_key_or_value_attributes_are_read_as_json_text(tmp_path: Path, name: str,
                                                              any_value: dict[str, object], text: str) -> None:
    trace = read_trace(_with_attribute(tmp_path, name, any_value))
    first = trace.events[0]
    assert (first.key if name.endswith("key") else first.value) == text
    assert trace.summary()["warnings"] == [
        f"1 event(s) whose attribute {name} is a number or boolean, not a string (first: {text}): "
        f"read as its JSON text"]


KVLIST = {"kvlistValue": {"values": [{"key": "a", "value": {"stringValue": "b"}}]}}


def test_an_object_or_array_key_is_an_error(tmp_path: Path) -> None:
    name = "kvonce.event.key"
    with pytest.raises(InputError, match=f"span r0/s0/p0: attribute {name} must be a string, number or "
                                         f"boolean, got dict"):
        read_trace(_with_attribute(tmp_path, name, KVLIST))
    with pytest.raises(InputError, match="got list"):
        read_trace(_with_attribute(tmp_path, name, {"arrayValue": {"values": []}}))


def test_a_structured_value_is_kept_as_it_is_without_a_warning(tmp_path: Path) -> None:
    """An OTLP value may be a kvlist or an array (AnyValue); unlike a scalar it has no one text form."""
    trace = read_trace(_with_attribute(tmp_path, "kvonce.event.value", KVLIST))
    assert trace.events[0].value == {"a": "b"} and trace.summary()["warnings"] == []
