"""KvOnce's span mapping as the decoders take it: the general mapping and a fast path per decoder.

The general mapping (:func:`~kvonce_pipeline.domains.kvonce.mapping.span_to_event`) reads any span
and names every error. Profiling showed it (an attribute dict per span, a decoder call per value, the
fallback-attribute scans) at about half of a large OTLP/JSON run, so each decoder first tries a fast
path written for spans as exporters write them (string type/key/reason, a kvlist or string context,
hex ids, a decimal start time, no fallback trace-id or actor attributes, no flattened context).
Anything else, every error included, goes to the general mapping, so results and error messages are
the same either way; the decoders' differential tests hold the fast paths to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec import UNSET

from ...engine.decode.otlp_json import AnyValueDecoder, _fast_kvlist, fast_ids_and_start
from ...engine.decode.otlp_json_typed import Span, TypedAnyValueDecoder, _only_pairs, _scalar_pairs, typed_ids_and_start
from ...engine.decode.otlp_proto import ProtoAnyValueDecoder
from ...engine.decode.spans import SLOW, Decode, ResourceFallbacks
from ...engine.timestamps import MAX_TIME_NS
from .events import Event
from .mapping import ACTOR_ATTRIBUTES, TRACE_ID_ATTRIBUTES, span_to_event

#: Attribute names only the general mapping reads (fallback trace ids and actors).
_FALLBACK_NAMES = frozenset(TRACE_ID_ATTRIBUTES) | frozenset(ACTOR_ATTRIBUTES)


def fast_json_event(span: dict[str, Any], decoder: AnyValueDecoder, actor: str, origin: str) -> Any:
    """The event of a spec-shaped span, or :data:`SLOW` when anything is unusual.

    Profiling showed the general mapping (an attribute dict per span, a decoder call per value,
    the fallback-attribute scans) at about half of a large OTLP/JSON run. Spans as exporters
    write them (string type/key/value/reason, a kvlist or string context, hex ids, a decimal
    start time) take this path; everything else, including every error, takes the general one,
    so results and error messages are the same either way.
    """
    attributes = span["attributes"]
    event_type = key = value = reason = context = None
    seen = 0
    for attribute in attributes:
        name = attribute["key"]
        if name.startswith("kvonce.event."):
            seen += 1
        if name == "kvonce.event.type":
            event_type = attribute["value"]["stringValue"]
        elif name == "kvonce.event.key":
            key = attribute["value"]["stringValue"]
        elif name == "kvonce.event.value":
            value = attribute["value"]
        elif name == "kvonce.event.reason":
            reason = attribute["value"]["stringValue"]
        elif name == "kvonce.event.context":
            context = attribute["value"]
        elif name in _FALLBACK_NAMES or name.startswith("kvonce.event.context.") or name == "kvonce.context_is_text":
            return SLOW
    if type(event_type) is not str or type(key) is not str or not event_type or not key:
        return SLOW
    if seen != (2 + (value is not None) + (reason is not None) + (context is not None)):
        return SLOW  # a kvonce attribute twice: the general path names it
    if reason is not None and type(reason) is not str:
        return SLOW
    ids = fast_ids_and_start(span)
    if ids is None:
        return SLOW
    trace_id, span_id, start_ns = ids
    if value is not None:
        text = value.get("stringValue")
        if type(text) is str:
            value = text
        elif "kvlistValue" in value or "arrayValue" in value:
            value = decoder(value, "kvonce.event.value")  # structured: kept as it is
            if type(value) is not dict and type(value) is not list:
                return SLOW
        else:
            return SLOW  # a scalar of another kind: the general path reads it as text, or refuses it
    if context is not None:
        if type(context) is dict and len(context) == 1 and "kvlistValue" in context:
            context = _fast_kvlist(context, decoder)
            if context is SLOW:
                return SLOW
        else:
            context = decoder(context, "kvonce.event.context")
            if isinstance(context, str) and context[:1] in ("{", "["):
                return SLOW
    return Event(start_ns, event_type, key, value, reason, context, trace_id, span_id, actor, origin)


_TYPE, _KEY, _VALUE, _REASON, _CONTEXT = (f"kvonce.event.{name}" for name in ("type", "key", "value", "reason",
                                                                                "context"))
_FAST_NAMES = frozenset((_TYPE, _KEY, _VALUE, _REASON, _CONTEXT))


def fast_typed_event(span: Span, decoder: TypedAnyValueDecoder, actor: str, prefix: str, p: int) -> Event | None:
    """A spec-shaped KvOnce span without the general mapping's lookups; ``None`` sends it there.

    The same conditions as :func:`fast_json_event`: string type/key/reason, no fallback
    trace-id or actor attributes, no flattened context, lower-case hex ids, a decimal start time.
    """
    attributes = span.attributes
    attrs = {attribute.key: attribute.value for attribute in attributes}
    event_type = attrs.get(_TYPE)
    key = attrs.get(_KEY)
    if event_type is None or key is None or len(attrs) != len(attributes):
        return None  # not a KvOnce span, or a name twice (the general path decides)
    value = attrs.get(_VALUE)
    reason = attrs.get(_REASON)
    context = attrs.get(_CONTEXT)
    if len(attrs) != 2 + (value is not None) + (reason is not None) + (context is not None):
        for name in attrs:  # other attributes: fine unless the mapping would read them
            if name not in _FAST_NAMES and (name.startswith("kvonce.") or name in _FALLBACK_NAMES):
                return None
    if event_type is UNSET or key is UNSET:
        return None
    event_type, key = event_type.stringValue, key.stringValue  # type: ignore[assignment]  # str or UNSET
    if type(event_type) is not str or type(key) is not str or not event_type or not key:
        return None
    if reason is not None:
        reason = reason.stringValue if reason is not UNSET else UNSET  # str or UNSET: tested next
        if type(reason) is not str:
            return None
    ids = typed_ids_and_start(span)
    if ids is None:
        return None
    trace_id, span_id, start_ns = ids
    if value is not None:
        if value is UNSET:
            return None
        text = value.stringValue
        if text is not UNSET:
            value = text
        elif value.kvlistValue is not UNSET or value.arrayValue is not UNSET:
            value = decoder(value, _VALUE)  # structured: kept as it is
            if type(value) is not dict and type(value) is not list:
                return None
        else:
            return None  # a scalar of another kind: the mapping reads it as text, or refuses it
    if context is not None:
        if context is UNSET:
            return None
        pairs = context.kvlistValue
        if pairs is not UNSET and decoder.max_depth > 0 and _only_pairs(context):
            context = _scalar_pairs(pairs, decoder)
        else:
            context = decoder(context, _CONTEXT)
            if type(context) is str and context[:1] in ("{", "["):
                return None  # a JSON string context: the mapping reads it as JSON
    return Event(start_ns, event_type, key, value, reason, context, trace_id, span_id, actor, f"{prefix}{p}")


def fast_proto_event(span: Any, decoder: ProtoAnyValueDecoder, actor: str, origin: str) -> Any:
    """The event of an ordinary span, or :data:`SLOW` for the general mapping.

    As for OTLP/JSON (:func:`fast_json_event`): no attribute dict, no per-value
    ``WhichOneof`` for the string attributes. A non-empty ``string_value`` can only come from the
    string member of the ``oneof``; anything else (empty strings, other kinds, fallback
    attributes, bad ids) goes the general way, which gives the same result or the same error.
    """
    event_type = key = reason = value = context = None
    seen = 0
    for attribute in span.attributes:
        name = attribute.key
        if name.startswith("kvonce.event."):
            seen += 1
        if name == "kvonce.event.type":
            event_type = attribute.value.string_value
        elif name == "kvonce.event.key":
            key = attribute.value.string_value
        elif name == "kvonce.event.value":
            value = attribute.value
        elif name == "kvonce.event.reason":
            reason = attribute.value.string_value
            if not reason:
                return SLOW
        elif name == "kvonce.event.context":
            context = attribute.value
        elif name in _FALLBACK_NAMES or name.startswith("kvonce.event.context."):
            return SLOW
    if not event_type or not key:
        return SLOW
    if seen != 2 + (value is not None) + (reason is not None) + (context is not None):
        return SLOW
    trace_id = span.trace_id
    if len(trace_id) != 16:
        return SLOW
    span_id = span.span_id
    if span_id and len(span_id) != 8:
        return SLOW
    start: int = span.start_time_unix_nano
    if start > MAX_TIME_NS:
        return SLOW
    start_ns = start or None  # 0 is "unset" in OTLP
    if value is not None:
        text = value.string_value
        if text:
            value = text
        elif value.WhichOneof("value") in ("kvlist_value", "array_value"):
            value = decoder(value, "kvonce.event.value")  # structured: kept as it is
        else:
            return SLOW  # empty, or a scalar of another kind: the general path decides
    if context is not None:
        if context.WhichOneof("value") == "kvlist_value":
            entries = {}
            for entry in context.kvlist_value.values:
                if entry.key in entries:
                    return SLOW
                item = entry.value
                kind = item.WhichOneof("value")
                if kind == "int_value":
                    entries[entry.key] = item.int_value
                elif kind == "string_value":
                    entries[entry.key] = item.string_value
                else:
                    entries[entry.key] = decoder.decode(item, 1)
            context = entries
        else:
            context = decoder(context, "kvonce.event.context")
            if isinstance(context, str) and context[:1] in ("{", "["):
                return SLOW
    return Event(start_ns, event_type, key, value, reason, context, trace_id.hex(),
                 span_id.hex() if span_id else "", actor, origin)


class KvOnceSpans:
    """KvOnce's :class:`~kvonce_pipeline.engine.decode.spans.SpanMapping`: what the decoders are given
    to read KvOnce events (one per span, or ``None``)."""

    #: a second ``kvonce.*`` attribute of one name on a span is an input error, not a silent choice
    owned_prefixes: tuple[str, ...] = ("kvonce.",)
    trace_id_attributes: tuple[str, ...] = TRACE_ID_ATTRIBUTES
    actor_attributes: tuple[str, ...] = ACTOR_ATTRIBUTES

    def __call__(self, attrs: Mapping[str, Any], decode: Decode, resource: ResourceFallbacks,
                 **where: Any) -> Event | None:
        return span_to_event(attrs, decode, resource, **where)

    fast_json = staticmethod(fast_json_event)
    fast_typed = staticmethod(fast_typed_event)
    fast_proto = staticmethod(fast_proto_event)


#: The one instance the KvOnce readers pass to the decoders.
KVONCE_SPANS = KvOnceSpans()
