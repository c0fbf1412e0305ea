"""OTLP/JSON (``ExportTraceServiceRequest`` / ``TracesData``) decoding, by hand on purpose.

``google.protobuf.json_format`` reads the hex ``traceId``/``spanId`` as base64 and silently
produces wrong ids, rejects unknown fields and is about 20x slower than orjson plus this walk.
We follow the OTLP/JSON encoding: lowerCamelCase names (snake_case accepted, as the Collector
does), hex ids, int64 as string or number, unknown fields ignored. The legacy non-standard
``mapValue: {fields: [...]}`` is accepted with a warning rather than dropped.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterator
from typing import Any

from .errors import InputError
from .events import Event
from .mapping import DecodeStats, resource_fallbacks, span_to_event

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_HEX16 = re.compile(r"[0-9a-fA-F]{16}")
_NON_FINITE = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


class AnyValueDecoder:
    """Turns an OTLP/JSON AnyValue into a JSON-compatible Python value.

    Non-finite doubles become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (JSON has no
    such numbers); ``bytesValue`` stays base64 text; ``{}`` is ``None``.
    """

    def __init__(self, stats: DecodeStats, max_depth: int) -> None:
        self.stats = stats
        self.max_depth = max_depth

    def __call__(self, value: Any, name: str) -> Any:
        try:
            return self.decode(value, 0)
        except RecursionError:
            raise ValueError(f"attribute {name}: value nests too deeply") from None
        except (ValueError, TypeError) as exc:
            raise ValueError(f"attribute {name}: {exc}") from None

    def decode(self, value: Any, depth: int) -> Any:
        if type(value) is not dict:
            raise TypeError(f"AnyValue must be an object, got {_kind(value)}")
        text = value.get("stringValue")
        if text is not None:
            if type(text) is not str:
                raise TypeError(f"stringValue must be a string, got {_kind(text)}")
            return text
        if not value:
            return None
        for name, item in value.items():
            if name in ("intValue", "int_value"):
                return _int64(item)
            if name in ("boolValue", "bool_value"):
                if type(item) is not bool:
                    raise TypeError(f"boolValue must be true or false, got {_kind(item)}")
                return item
            if name in ("doubleValue", "double_value"):
                return _double(item)
            if name in ("string_value",):
                if type(item) is not str:
                    raise TypeError(f"stringValue must be a string, got {_kind(item)}")
                return item
            if name in ("kvlistValue", "kvlist_value"):
                return self._pairs(item, "values", "kvlistValue", depth)
            if name in ("arrayValue", "array_value"):
                values = _field_list(item, "values", "arrayValue")
                if depth >= self.max_depth:
                    raise ValueError(f"value nests deeper than {self.max_depth} levels")
                return [self.decode(v, depth + 1) for v in values]
            if name in ("bytesValue", "bytes_value"):
                if type(item) is not str:
                    raise TypeError(f"bytesValue must be base64 text, got {_kind(item)}")
                try:
                    base64.b64decode(item, validate=True)
                except (binascii.Error, ValueError):
                    raise ValueError("bytesValue is not valid base64") from None
                return item
            if name in ("mapValue", "map_value"):
                self.stats.map_value_uses += 1
                self.stats.warn_once(
                    "non-standard AnyValue 'mapValue' accepted as 'kvlistValue' "
                    "(the OpenTelemetry Collector would drop it)"
                )
                return self._pairs(item, "fields", "mapValue", depth)
        return None  # only unknown fields: an empty AnyValue

    def _pairs(self, item: Any, list_name: str, kind: str, depth: int) -> dict[str, Any]:
        entries = _field_list(item, list_name, kind)
        if depth >= self.max_depth:
            raise ValueError(f"value nests deeper than {self.max_depth} levels")
        out: dict[str, Any] = {}
        for entry in entries:
            if type(entry) is not dict or type(entry.get("key")) is not str:
                raise TypeError(f"{kind} entries must be objects with a string 'key'")
            raw = entry.get("value")
            out[entry["key"]] = None if raw is None else self.decode(raw, depth + 1)
        return out


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _field_list(item: Any, name: str, kind: str) -> list[Any]:
    if type(item) is not dict:
        raise TypeError(f"{kind} must be an object, got {_kind(item)}")
    values = item.get(name, [])
    if type(values) is not list:
        raise TypeError(f"{kind}.{name} must be an array, got {_kind(values)}")
    return values


def _int64(item: Any) -> int:
    if type(item) is int:
        number = item
    elif type(item) is str:
        try:
            number = int(item, 10)
        except ValueError:
            raise ValueError(f"intValue {item!r:.40} is not a decimal integer") from None
    elif type(item) is float and item.is_integer():
        number = int(item)
    else:
        raise TypeError(f"intValue must be a decimal string or integer, got {_kind(item)}")
    if not INT64_MIN <= number <= INT64_MAX:
        raise ValueError(f"intValue {number} does not fit in 64 bits")
    return number


def _double(item: Any) -> float | str:
    if type(item) in (int, float):
        number = float(item)
    elif type(item) is str:
        if item in _NON_FINITE:
            return _NON_FINITE[item]
        try:
            number = float(item)
        except ValueError:
            raise ValueError(f"doubleValue {item!r:.40} is not a number") from None
    else:
        raise TypeError(f"doubleValue must be a number, got {_kind(item)}")
    if not math.isfinite(number):
        return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
    return number


def _uint64(item: Any, name: str) -> int | None:
    if item is None:
        return None
    if type(item) is int:
        number = item
    elif type(item) is str:
        try:
            number = int(item, 10)
        except ValueError:
            raise ValueError(f"{name} {item!r:.40} is not a decimal integer") from None
    else:
        raise TypeError(f"{name} must be a decimal string or integer, got {_kind(item)}")
    if number < 0:
        raise ValueError(f"{name} {number} is negative: outside the representable range")
    return number


def hex_id(item: Any, name: str, pattern: re.Pattern[str], digits: int) -> str:
    if item is None or item == "":
        return ""
    if type(item) is not str or not pattern.fullmatch(item):
        raise ValueError(f"{name} {item!r:.50} is not {digits} hex digits")
    return item.lower()


def _list(container: dict[str, Any], *names: str) -> list[Any]:
    for name in names:
        value = container.get(name)
        if value is not None:
            if type(value) is not list:
                raise TypeError(f"{name} must be an array, got {_kind(value)}")
            return value
    return []


def _attr_map(attributes: Any) -> dict[str, Any]:
    if attributes is None:
        return {}
    if type(attributes) is not list:
        raise TypeError(f"attributes must be an array, got {_kind(attributes)}")
    out: dict[str, Any] = {}
    for attribute in attributes:
        if type(attribute) is not dict:
            raise TypeError("each attribute must be an object with 'key' and 'value'")
        out[attribute.get("key")] = attribute.get("value")
    return out


def iter_request_events(
    request: Any,
    *,
    source: str,
    stats: DecodeStats,
    decoder: AnyValueDecoder,
    resource_offset: int = 0,
    where_prefix: str = "",
) -> Iterator[Event]:
    """Yield the events of one decoded OTLP/JSON request, in document order.

    ``resource_offset`` numbers resources across the batches of a JSON Lines file, so the
    ``r{r}`` in origins and placeholder trace ids stays unique.
    """
    if type(request) is not dict:
        raise InputError(source, f"an OTLP/JSON request must be an object, got {_kind(request)}",
                         where=where_prefix.strip() or None)
    if "resourceSpans" not in request and "resource_spans" not in request and request:
        raise InputError(source, "not an OTLP trace request: there is no 'resourceSpans'",
                         where=where_prefix.strip() or None)
    r = s = p = -1
    where = where_prefix + "request"
    try:
        for r_local, resource_spans in enumerate(_list(request, "resourceSpans", "resource_spans")):
            r, s, p = resource_offset + r_local, -1, -1
            where = f"{where_prefix}resource r{r}"
            if type(resource_spans) is not dict:
                raise TypeError("resourceSpans entries must be objects")
            resource = resource_spans.get("resource") or {}
            if type(resource) is not dict:
                raise TypeError("resource must be an object")
            fallbacks = resource_fallbacks(_attr_map(resource.get("attributes")), decoder)
            scopes = _list(resource_spans, "scopeSpans", "scope_spans", "instrumentationLibrarySpans")
            for s, scope_spans in enumerate(scopes):
                where = f"{where_prefix}scope r{r}/s{s}"
                if type(scope_spans) is not dict:
                    raise TypeError("scopeSpans entries must be objects")
                for p, span in enumerate(_list(scope_spans, "spans")):
                    where = f"{where_prefix}span r{r}/s{s}/p{p}"
                    if type(span) is not dict:
                        raise TypeError("spans must be objects")
                    stats.spans += 1
                    event = span_to_event(
                        _attr_map(span.get("attributes")),
                        decoder,
                        fallbacks,
                        trace_id=hex_id(span.get("traceId", span.get("trace_id")), "traceId", _HEX32, 32),
                        span_id=hex_id(span.get("spanId", span.get("span_id")), "spanId", _HEX16, 16),
                        start_ns=_uint64(
                            span.get("startTimeUnixNano", span.get("start_time_unix_nano")),
                            "startTimeUnixNano",
                        ),
                        position=(r, s, p),
                        origin=where,
                    )
                    if event is None:
                        stats.skipped_spans += 1
                    else:
                        yield event
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(source, str(exc), where=where) from None
    except RecursionError:
        raise InputError(source, "value nests too deeply", where=where) from None


def count_resources(request: Any) -> int:
    if type(request) is not dict:
        return 0
    return len(_list(request, "resourceSpans", "resource_spans"))
