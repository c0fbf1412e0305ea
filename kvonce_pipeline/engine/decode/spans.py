"""What every decoder shares about spans, whichever domain they map to.

A decoder walks a payload's resources and spans and hands each span's attributes, as a ``{name: raw}``
map plus a ``decode`` function for its raw AnyValue form, to a domain's ``to_event``. What it counts
besides events (skipped spans, ids kept as written, numbers read as text) is a :class:`DecodeStats`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

Decode = Callable[[Any, str], Any]

#: Where a span without a hex ``traceId`` finds one, first match wins (on the span, then on its
#: resource): names instrumentations use. A domain may put its own names first (KvOnce's mapping does).
TRACE_ID_ATTRIBUTES = ("traceId", "trace_id", "otel.trace_id")


#: From a fast path: "this span needs the general mapping" (OTLP/JSON and protobuf fast paths).
SLOW: Any = object()
#: From the typed decoder's fast path: "this span carries no event" (its ``None`` means the general mapping).
NO_EVENT: Any = object()


class SpanMapping(Protocol):
    """What a decoder is given to turn spans into events: one domain's mapping, or several domains' at
    once (:class:`kvonce_pipeline.engine.domain_decode.SpanMapper`). The decoders know no domain.

    Calling it is the general mapping: ``(attrs, decode, resource, *, trace_id, span_id, start_ns,
    position, origin, stats)`` gives the span's event (or whatever the caller collects), ``None`` for a
    span that carries none, and raises ``ValueError`` naming what is wrong. Each decoder first tries its
    fast path (``fast_json``, ``fast_typed``, ``fast_proto``), which must give the general mapping's
    result or hand the span over to it (:data:`SLOW`; for ``fast_typed``, ``None``).
    """

    #: attribute-name prefixes the mapping reads: a name of these twice in one span or resource is an
    #: input error (which value was meant cannot be told), and the typed decoder gives such spans up
    owned_prefixes: tuple[str, ...]
    #: names a span, then its resource, may carry its trace id or actor in, first match wins
    trace_id_attributes: tuple[str, ...]
    actor_attributes: tuple[str, ...]

    def __call__(self, attrs: Mapping[str, Any], decode: "Decode", resource: "ResourceFallbacks",
                 **where: Any) -> Any: ...

    def fast_json(self, span: Any, decoder: Any, actor: str, origin: str) -> Any: ...

    def fast_typed(self, span: Any, decoder: Any, actor: str, prefix: str, p: int) -> Any: ...

    def fast_proto(self, span: Any, decoder: Any, actor: str, origin: str) -> Any: ...

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


def first_text(attrs: Mapping[str, Any], names: tuple[str, ...], decode: Decode) -> str | None:
    for name in names:
        raw = attrs.get(name)
        if raw is None:
            continue
        value = decode(raw, name)
        if value is None or value == "":
            continue
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    return None


def resource_fallbacks(attrs: Mapping[str, Any], decode: Decode, mapping: SpanMapping) -> ResourceFallbacks:
    """A resource's trace id and actor, for its spans that carry none of their own."""
    return ResourceFallbacks(
        trace_id=first_text(attrs, mapping.trace_id_attributes, decode),
        actor=first_text(attrs, mapping.actor_attributes, decode),
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
