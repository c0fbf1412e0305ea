"""OTLP's encodings: AnyValues from JSON values, lenient OTLP/JSON in spec form, protobuf and back.

What every domain's writing of spans and the collector share. ``json_format`` is used only on
documents whose ids we converted to base64 first, which is exactly the trap it has for OTLP
(``docs``: OTLP/JSON ids are hex, protobuf's JSON mapping says base64).
"""

from __future__ import annotations

import base64
import math
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

#: The instrumentation scope of the spans we write.
SCOPE_NAME = "kvonce_pipeline"
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def any_value(value: Any) -> dict[str, Any]:
    """A JSON value as an OTLP/JSON AnyValue (int64 as a decimal string, per the spec)."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"doubleValue": value}
        return {"doubleValue": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": any_value(v)} for k, v in value.items()]}}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    raise TypeError(f"cannot express {type(value).__name__} as an OTLP AnyValue")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def normalize_request(node: Any) -> Any:
    """Rewrite lenient OTLP/JSON into spec form: camelCase names, ``mapValue`` as ``kvlistValue``.

    In OTLP/JSON every object key is a field name (attribute names live in ``key`` *values*), so
    renaming object keys cannot touch user data. Iterative, not recursive: a document may nest as
    deep as its JSON parser allows (orjson: 1,024 levels), unknown members included, and the
    decoders ignore what they do not know, so normalizing must not be the step that gives up.
    """
    if not isinstance(node, (dict, list)):
        return node
    root: Any = [] if isinstance(node, list) else {}
    # (source container, its copy); children are copied into the copy as they are reached
    stack: list[tuple[Any, Any]] = [(node, root)]
    while stack:
        source, target = stack.pop()
        if isinstance(source, list):
            for item in source:
                target.append(_shell(item, stack))
            continue
        for name, item in source.items():
            camel = _camel(name) if "_" in name else name
            if camel == "mapValue" and isinstance(item, dict):
                fields = item.get("fields", [])
                target["kvlistValue"] = {"values": _shell(fields, stack)}
                continue
            target[camel] = _shell(item, stack)
    return root


def _shell(item: Any, stack: list[tuple[Any, Any]]) -> Any:
    """``item`` itself if it is a scalar, else an empty container of its kind queued to be filled."""
    if isinstance(item, list):
        copy: Any = []
    elif isinstance(item, dict):
        copy = {}
    else:
        return item
    stack.append((item, copy))
    return copy


def needs_normalizing(blob: bytes) -> bool:
    """Cheap byte scan: does this OTLP/JSON use snake_case names or ``mapValue``?"""
    return any(marker in blob for marker in (b'"mapValue"', b'"map_value"', b'_spans"', b'_value"',
                                               b'_unix_nano"', b'"trace_id"', b'"span_id"'))


def message_to_request(message: ExportTraceServiceRequest) -> dict[str, Any]:
    """Protobuf to spec OTLP/JSON: ids as hex (``MessageToDict`` would give base64)."""
    doc = json_format.MessageToDict(message, use_integers_for_enums=True)
    for resource_spans in doc.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _ids_to_hex(span)
                for link in span.get("links", ()):
                    _ids_to_hex(link)
    return doc


def request_to_message(request: dict[str, Any]) -> ExportTraceServiceRequest:
    """Spec (or lenient) OTLP/JSON to protobuf, with hex ids converted before ``json_format``."""
    doc = normalize_request(request)
    for resource_spans in doc.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _ids_to_base64(span)
                for link in span.get("links", ()):
                    _ids_to_base64(link)
    message = ExportTraceServiceRequest()
    json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    return message


def _ids_to_hex(node: dict[str, Any]) -> None:
    for name in _ID_FIELDS:
        if node.get(name):
            node[name] = base64.b64decode(node[name]).hex()


def _ids_to_base64(node: dict[str, Any]) -> None:
    for name in _ID_FIELDS:
        if node.get(name):
            node[name] = base64.b64encode(bytes.fromhex(node[name])).decode("ascii")
