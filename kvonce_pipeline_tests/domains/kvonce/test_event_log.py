"""KvOnce's NDJSON event log: what a line may hold beyond the seed's string fields, and what is refused."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.cli import main
from kvonce_pipeline.engine.errors import InputError
from kvonce_pipeline.domains.kvonce.reader import read_trace

LINES = [
    {"timestamp": "2025-10-04T06:00:00.000Z", "type": "success", "key": 42, "value": True},
    {"timestamp": "2025-10-04T06:00:01.000Z", "type": "success", "key": "k", "value": 1.5},
    {"timestamp": "2025-10-04T06:00:02.000Z", "type": "success", "key": 42, "value": "again"},
    {"timestamp": "2025-10-04T06:00:03.000Z", "type": "success", "key": False, "value": 7},
]


def _write(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def test_scalar_keys_and_values_are_read_as_their_json_text_with_a_counted_warning(tmp_path: Path) -> None:
    trace = read_trace(_write(tmp_path / "scalars.ndjson", LINES))
    assert [(e.key, e.value) for e in trace.events] == [("42", "true"), ("k", "1.5"), ("42", "again"),
                                                        ("false", "7")]
    assert trace.summary()["warnings"] == [
        "3 event(s) whose field 'key' is a number or boolean, not a string (first: 42): read as its JSON text",
        "3 event(s) whose field 'value' is a number or boolean, not a string (first: true): read as its JSON text",
    ]


def test_a_scalar_key_is_the_same_key_as_its_text(tmp_path: Path) -> None:
    """Key 42 and key "42" are one key: written twice is a multiple-success, as for strings."""
    lines = [*LINES[:1], {"timestamp": "2025-10-04T06:00:05.000Z", "type": "success", "key": "42", "value": "v"}]
    out = tmp_path / "out"
    assert main(["conformance", "--input", str(_write(tmp_path / "mixed.ndjson", lines)),
                 "--output-dir", str(out)]) == 1
    report = orjson.loads((out / artifacts.VALIDATION).read_bytes())
    assert [(i["type"], i["key"]) for i in report["issues"]] == [("multiple-success", "42")]
    assert "field 'key' is a number or boolean" in (out / artifacts.SUMMARY).read_text()


def test_converted_scalars_survive_the_round_trip_through_otlp(tmp_path: Path) -> None:
    """NDJSON -> OTLP/JSON (convert) -> events: the same strings, and no warning the second time."""
    source = _write(tmp_path / "scalars.ndjson", LINES)
    otlp = tmp_path / "scalars.json"
    assert main(["convert", "--input", str(source), "--output", str(otlp)]) == 0
    again = read_trace(otlp)
    assert [(e.key, e.value) for e in again.events] == [(e.key, e.value) for e in read_trace(source).events]
    assert again.summary()["warnings"] == []


@pytest.mark.parametrize(("field", "bad", "kind"), [("key", {"id": 1}, "dict"), ("value", [1], "list")])
def test_objects_and_arrays_stay_an_error(tmp_path: Path, field: str, bad: object, kind: str) -> None:
    line = {**LINES[1], field: bad}
    with pytest.raises(InputError, match=f"line 1: field '{field}' must be a string, number or boolean, got {kind}"):
        read_trace(_write(tmp_path / "bad.ndjson", [line]))
