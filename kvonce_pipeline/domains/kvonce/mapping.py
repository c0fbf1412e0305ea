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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from .events import Event, check_time_range

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

Raw = TypeVar("Raw")
Decode = Callable[[Any, str], Any]


#: ``to_event(attrs, decode, resource, *, trace_id, span_id, start_ns, position, origin, stats)``: one
#: span's event, ``None`` for a span that carries none. :func:`span_to_event` is KvOnce's; the decoders
#: take another for the other domains (:mod:`kvonce_pipeline.engine.domain_decode`).
SpanToEvent = Callable[..., Any]

#: ``tap(start, events)``: called by the whole-document decoders with each run of new events in
#: document order (``start`` is the first one's index), while the rest is still being decoded,
#: so a consumer on another core can begin. A call whose ``start`` is not where the previous
#: run ended means the decoder started over; the decoder's result is what counts.
Tap = Callable[[int, list[Any]], None]
#: Events per tap call, at least (a resource's spans are never split).
TAP_EVENTS = 4096


@dataclass
class DecodeStats:
    """What a decoder saw besides events; it ends up in the validation report's summary."""

    spans: int = 0
    skipped_spans: int = 0
    map_value_uses: int = 0
    warnings: list[str] = field(default_factory=list)

    #: per id field (``traceId``, ``spanId``): how many spans had an id kept as written, and the first
    legacy_ids: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: per field (``key``, ``kvonce.event.value``, ...): events whose string was a number or boolean
    scalars: dict[str, tuple[int, str]] = field(default_factory=dict)

    def warn_once(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def read_scalar(self, name: str, value: Any) -> str:
        """``value`` (a number or boolean where the schema has a string) as its JSON text, counted."""
        text = orjson.dumps(value).decode()
        _tally(self.scalars, name, text)
        return text

    def absorb(self, other: "DecodeStats") -> None:
        """Add what ``other`` counted (a decoder's scratch counts, once its result is kept)."""
        for text in other.warnings:
            self.warn_once(text)
        for mine, theirs in ((self.legacy_ids, other.legacy_ids), (self.scalars, other.scalars)):
            for name, (count, first) in theirs.items():
                _tally(mine, name, first, count)

    def keep_legacy_id(self, name: str, item: str) -> None:
        _tally(self.legacy_ids, name, item)

    def report_warnings(self) -> list[str]:
        """The warnings as the report lists them: each once, counts included."""
        out = list(self.warnings)
        for name, (count, first) in self.legacy_ids.items():
            digits = 32 if name == "traceId" else 16
            out.append(f"{count} span(s) with a {name} that is not {digits} hex digits (first: {first!r:.60}): "
                       f"kept as written; findings still point at them, no verdict depends on them")
        for name, (count, first) in self.scalars.items():
            out.append(f"{count} event(s) whose {name} is a number or boolean, not a string (first: {first}): "
                       f"read as its JSON text")
        return out


def _tally(table: dict[str, tuple[int, str]], name: str, first: str, count: int = 1) -> None:
    """Count ``count`` more under ``name``, keeping the first example seen."""
    had, example = table.get(name, (0, first))
    table[name] = (had + count, example)


@dataclass(slots=True)
class ResourceFallbacks:
    trace_id: str | None
    actor: str | None


def _first_text(attrs: Mapping[str, Any], names: tuple[str, ...], decode: Decode) -> str | None:
    for name in names:
        raw = attrs.get(name)
        if raw is None:
            continue
        value = decode(raw, name)
        if value is None or value == "":
            continue
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    return None


def resource_fallbacks(attrs: Mapping[str, Any], decode: Decode) -> ResourceFallbacks:
    return ResourceFallbacks(
        trace_id=_first_text(attrs, TRACE_ID_ATTRIBUTES, decode),
        actor=_first_text(attrs, ACTOR_ATTRIBUTES, decode),
    )


def scalar_text(value: Any, name: str, stats: DecodeStats, *, structured: bool = False) -> Any:
    """A key or value as the string the schema has: a number or boolean becomes its JSON text
    (``42``, ``1.5``, ``true``), counted for a warning, as services that store numbers send them.
    An object or array is no key; as a value it is kept only where ``structured`` (an OTLP value
    may be a kvlist or array, and always could). ``None`` (absent) stays ``None``."""
    if value is None or type(value) is str:
        return value
    if type(value) in (int, float, bool):
        return stats.read_scalar(name, value)
    if structured and type(value) in (dict, list):
        return value
    raise ValueError(f"{name} must be a string, number or boolean, got {type(value).__name__} {value!r:.60}")


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
            _first_text(attrs, TRACE_ID_ATTRIBUTES, decode)
            or resource.trace_id
            or "otlp-missing-traceid-r{}-s{}-p{}".format(*position)
        )
    actor = _first_text(attrs, ACTOR_ATTRIBUTES, decode) or resource.actor or "unknown"
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
