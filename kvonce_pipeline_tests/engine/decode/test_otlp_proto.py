"""The protobuf decoder agrees with the OTLP/JSON one on the same request (its fast path gives up to
the general mapping on anything unusual)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kvonce_pipeline.engine.errors import InputError
from kvonce_pipeline.engine.otlp_encodings import request_to_message
from kvonce_pipeline.domains.kvonce.reader import read_trace

from ...conftest import SAMPLES


def _pair(tmp_path: Path, name: str, value: dict[str, object]) -> tuple[Path, Path]:
    doc = orjson.loads((SAMPLES / "kvonce-otlp.json").read_bytes())
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"] = [a if a["key"] != name else {"key": name, "value": value} for a in span["attributes"]]
    as_json = tmp_path / "request.json"
    as_json.write_bytes(orjson.dumps(doc))
    as_proto = tmp_path / "request.pb"
    as_proto.write_bytes(request_to_message(doc).SerializeToString())
    return as_json, as_proto


SCALARS = [{"intValue": "42"}, {"boolValue": False}, {"doubleValue": 2.0}]


@pytest.mark.parametrize(("name", "any_value"), [
    *(("kvonce.event.key", v) for v in SCALARS),
    *(("kvonce.event.value", v) for v in [*SCALARS, {"stringValue": ""}]),  # "" leaves the fast path too
])
def test_scalar_keys_and_values_read_as_in_otlp_json(tmp_path: Path, name: str, any_value: dict[str, object]) -> None:
    as_json, as_proto = _pair(tmp_path, name, any_value)
    from_json, from_proto = read_trace(as_json), read_trace(as_proto)
    assert [(e.key, e.value) for e in from_proto.events] == [(e.key, e.value) for e in from_json.events]
    assert from_proto.summary()["warnings"] == from_json.summary()["warnings"]


def test_an_object_key_is_an_error_in_protobuf_too(tmp_path: Path) -> None:
    _, as_proto = _pair(tmp_path, "kvonce.event.key",
                        {"kvlistValue": {"values": [{"key": "a", "value": {"stringValue": "b"}}]}})
    with pytest.raises(InputError, match="attribute kvonce.event.key must be a string, number or boolean"):
        read_trace(as_proto)
