"""Where an OTLP span becomes a KvOnce event: the seed's OTLP mapping, and nothing else.

Both decoders (OTLP/JSON and protobuf) hand each span's attributes here as a ``{name: raw}`` map
plus a ``decode`` function for their raw AnyValue form, so the mapping is written once.

==========================  ===============================================================
OTLP                        event field
==========================  ===============================================================
``kvonce.event.type``       ``type`` (and ``event``)
``kvonce.event.key``        ``key``
``kvonce.event.value``      ``value``
``kvonce.event.reason``     ``reason``
``kvonce.event.context``    ``context`` (AnyValue as JSON; a string holding a JSON object or
                            array is read as that object; ``kvonce.event.context.<name>``
                            attributes are gathered into an object when there is no
                            ``kvonce.event.context``: SDKs cannot set map attributes)
``startTimeUnixNano``       ``timeUnixNano`` and ``timestamp`` (ISO 8601 UTC, ms, ``Z``)
span ``traceId``            ``traceId``; else the first of :data:`TRACE_ID_ATTRIBUTES` on the
                            span, then on the resource; else ``otlp-missing-traceid-r{r}-s{s}-p{p}``
span ``spanId``             ``spanId``
(attributes)                ``actor``: first non-empty of :data:`ACTOR_ATTRIBUTES` on the span,
                            then on the resource; else ``unknown``
==========================  ===============================================================

Spans without a type or key are not KvOnce events: they are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ...engine.decode.spans import Decode, DecodeStats, ResourceFallbacks, first_text, scalar_text
from ...engine.timestamps import check_time_range
from .events import Event

ATTR_TYPE = "kvonce.event.type"
ATTR_KEY = "kvonce.event.key"
ATTR_VALUE = "kvonce.event.value"
ATTR_REASON = "kvonce.event.reason"
ATTR_CONTEXT = "kvonce.event.context"
ATTR_CONTEXT_PREFIX = ATTR_CONTEXT + "."
#: Set (true) by our renderer when a string context merely looks like JSON: keep it a string.
ATTR_CONTEXT_IS_TEXT = "kvonce.context_is_text"
ATTR_ACTOR = "kvonce.event.actor"
#: Attribute written when an event's trace id is not a 32-digit hex span id (e.g. a placeholder).
ATTR_TRACE_ID = "kvonce.traceId"

TRACE_ID_ATTRIBUTES = ("traceId", "trace_id", "kvonce.traceId", "kvonce.trace_id", "otel.trace_id")
ACTOR_ATTRIBUTES = (
    "kvonce.event.actor",
    "kvonce.actor",
    "actor",
    "enduser.id",
    "service.name",
    "service.instance.id",
)

def resource_fallbacks(attrs: Mapping[str, Any], decode: Decode) -> ResourceFallbacks:
    return ResourceFallbacks(
        trace_id=first_text(attrs, TRACE_ID_ATTRIBUTES, decode),
        actor=first_text(attrs, ACTOR_ATTRIBUTES, decode),
    )


def _text_attr(attrs: Mapping[str, Any], name: str, decode: Decode) -> str | None:
    raw = attrs.get(name)
    if raw is None:
        return None
    value = decode(raw, name)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"attribute {name} must be a string, got {type(value).__name__} {value!r:.60}")


def context_from_attributes(attrs: Mapping[str, Any], decode: Decode) -> Any:
    raw = attrs.get(ATTR_CONTEXT)
    if raw is not None:
        value = decode(raw, ATTR_CONTEXT)
        if isinstance(value, str) and value[:1] in ("{", "[") and attrs.get(ATTR_CONTEXT_IS_TEXT) is None:
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError:
                return value
        return value
    flattened = {
        name[len(ATTR_CONTEXT_PREFIX) :]: decode(raw_item, name)
        for name, raw_item in attrs.items()
        if name.startswith(ATTR_CONTEXT_PREFIX)
    }
    return flattened or None


def span_to_event(
    attrs: Mapping[str, Any],
    decode: Decode,
    resource: ResourceFallbacks,
    *,
    trace_id: str,
    span_id: str,
    start_ns: int | None,
    position: tuple[int, int, int],
    origin: str,
    stats: DecodeStats,
) -> Event | None:
    """Map one span; ``None`` if it carries no KvOnce event. Raises ``ValueError`` on bad data."""
    event_type = _text_attr(attrs, ATTR_TYPE, decode)
    key_raw = attrs.get(ATTR_KEY)
    key = None if key_raw is None else decode(key_raw, ATTR_KEY)
    if not event_type or key is None or key == "":
        return None
    key = scalar_text(key, f"attribute {ATTR_KEY}", stats)
    if start_ns is not None:
        if start_ns == 0:
            start_ns = None  # 0 is protobuf's "unset": the event has no time
        else:
            check_time_range(start_ns)
    if not trace_id:
        trace_id = (
            first_text(attrs, TRACE_ID_ATTRIBUTES, decode)
            or resource.trace_id
            or "otlp-missing-traceid-r{}-s{}-p{}".format(*position)
        )
    actor = first_text(attrs, ACTOR_ATTRIBUTES, decode) or resource.actor or "unknown"
    value_raw = attrs.get(ATTR_VALUE)
    return Event(
        time_unix_nano=start_ns,
        type=event_type,
        key=key,
        value=None if value_raw is None else scalar_text(decode(value_raw, ATTR_VALUE), f"attribute {ATTR_VALUE}",
                                                         stats, structured=True),
        reason=_text_attr(attrs, ATTR_REASON, decode),
        context=context_from_attributes(attrs, decode),
        trace_id=trace_id,
        span_id=span_id,
        actor=actor,
        origin=origin,
    )
