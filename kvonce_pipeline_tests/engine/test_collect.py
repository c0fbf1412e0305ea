"""The collected payload: a document the decoders accept is collected, whatever its nesting.

A member the OTLP decoders do not know is ignored by them however deep it nests (up to the JSON
parser's 1,024 levels); collecting must not be the step that gives up on it, or the Dagster job,
the receiver and ``kvonce conformance`` would disagree about the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from kvonce_pipeline.cli import main
from kvonce_pipeline.domains.kvonce.otlp_render import render_event_log
from kvonce_pipeline.engine.collect import collect_payload, dumps_any_depth
from kvonce_pipeline.engine.errors import InputError
from kvonce_pipeline.domains.kvonce.reader import read_trace

from ..conftest import SAMPLES


def _deep_member_document(tmp_path: Path, depth: int) -> Path:
    """The bundled sample with an unknown snake_case member nested ``depth`` deep (so it is normalized)."""
    doc = orjson.loads((SAMPLES / "kvonce-otlp.json").read_bytes())
    doc["resourceSpans"][0]["vendor_extension"] = "@@"
    blob = orjson.dumps(doc).replace(b'"@@"', b'{"nested_member":' * depth + b"1" + b"}" * depth)
    path = tmp_path / f"deep-{depth}.json"
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("depth", [300, 1000, 1020])
def test_a_deep_unknown_member_gets_one_verdict_everywhere(depth: int, tmp_path: Path) -> None:
    source = _deep_member_document(tmp_path, depth)
    expected = read_trace(SAMPLES / "kvonce-otlp.json").events

    assert main(["conformance", "--input", str(source), "--output-dir", str(tmp_path / "cli")]) == 0
    collected = collect_payload(source, tmp_path / "collected.json", render_log=render_event_log)
    assert collected.converted  # snake_case names were rewritten in spec form
    assert b'"nestedMember"' in collected.path.read_bytes()
    events = read_trace(collected.path).events
    assert [e.same_event(x) for e, x in zip(events, expected, strict=True)] == [True] * len(expected)


def test_a_document_deeper_than_the_json_parser_reads_is_unusable_everywhere(tmp_path: Path) -> None:
    source = _deep_member_document(tmp_path, 2000)
    assert main(["conformance", "--input", str(source), "--output-dir", str(tmp_path / "cli")]) == 2
    collected = collect_payload(source, tmp_path / "collected.json", render_log=render_event_log)  # copied as it is ...
    with pytest.raises(InputError, match="depth limit"):
        read_trace(collected.path)  # ... and the events step names the problem, as the CLI does


def test_dumps_any_depth_writes_orjsons_bytes_past_its_nesting_limit() -> None:
    leaf = {"s": "x\u2028\"q\"", "n": [1, -2, 3.5, None, True, False], "e": {}, "a": []}
    value: object = leaf
    for _ in range(400):
        value = {"k": [value, 7]}
    with pytest.raises(TypeError):
        orjson.dumps(value)  # why the fallback exists
    blob = dumps_any_depth(value)
    assert orjson.loads(blob) == value
    inner = orjson.dumps(leaf)
    assert blob == b'{"k":[' * 400 + inner + b",7]}" * 400
    assert json.loads(blob) == value
