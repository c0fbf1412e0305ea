"""Reading any domain's events: the same formats and limits as KvOnce, mapped by the definition.

Every format the reader knows (NDJSON, OTLP/JSON documents and JSON Lines, OTLP protobuf and its
length-delimited files, gzip or not) is read by the same sniffing, the same structural walkers and
the same limits; only the last step, span or line to event, comes from the domain's definition:

- OTLP: a span is an event of the domain whose ``<prefix>type`` attribute it carries. ``<prefix>key``
  is its key, ``<prefix><field>`` each declared field. A field that may be an object or array is
  also read from a JSON string holding one, or gathered from flattened ``<prefix><field>.<name>``
  attributes when the field itself is absent (SDKs cannot set map attributes). Times, ids, actor and
  trace-id fallbacks are the engine's (:data:`~kvonce_pipeline.engine.decode.spans.TRACE_ID_ATTRIBUTES`).
- NDJSON: one object per line with ``timestamp`` (or ``timeUnixNano``), ``type`` (or ``event``),
  ``key``, the declared fields by name, and optionally ``traceId``, ``spanId``, ``actor``, ``origin``.
  An event log holds one domain's events: which one is the caller's choice (``--domain``).

The JSON types of fields are not judged here: the pass reports a wrong one as a finding
(``invalid-field-type``). Only what makes the input unreadable is an :class:`InputError` here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .timestamps import check_time_range
from .decode.spans import (NO_EVENT, SLOW, TRACE_ID_ATTRIBUTES, Decode, DecodeStats, ResourceFallbacks, first_text,
                           scalar_text)
from .decode.ndjson import (check_event_object, checked_nesting, event_time, iter_lines, loads_line,
                            refuse_duplicate_keys)
from .decode.otlp_json import (AnyValueDecoder, _fast_kvlist, count_resources,
                               fast_ids_and_start, iter_request_events)
from .decode.otlp_json_typed import (UNSET, _only_pairs, _scalar_pairs, decode_document,
                                     typed_ids_and_start)
from .decode.otlp_proto import ProtoAnyValueDecoder, iter_delimited_records, iter_message_events, parse_request
from .decode.reader import InputFormat, _loads_document, detect_format, open_payload
from .domain import Domain, DomainEvent
from .errors import InputError
from .limits import Limits
from .gc_pause import gc_paused

#: Actor attributes after the domain's own ``<prefix>actor`` (on a resource: these alone).
GENERIC_ACTOR_ATTRIBUTES = ("actor", "enduser.id", "service.name", "service.instance.id")
#: Attribute names only the general mapping reads: its fast paths hand spans carrying them over.
_FALLBACK_NAMES = frozenset(TRACE_ID_ATTRIBUTES) | frozenset(GENERIC_ACTOR_ATTRIBUTES)
_TEXT_FIELDS = ("type", "event", "traceId", "spanId", "actor", "origin")
_STRUCTURED = frozenset({"object", "array"})


@dataclass
class DomainRead:
    """What one read of a payload found, per domain, in input order (not yet time-ordered)."""

    source: str
    format: InputFormat
    compressed: bool
    events: dict[str, list[DomainEvent]]
    stats: DecodeStats = field(default_factory=DecodeStats)

    def summary(self, domain: str) -> dict[str, Any]:
        """The ``input`` part of one domain's report (the same fields as KvOnce's)."""
        otlp = self.format.is_otlp
        mine = len(self.events.get(domain, ()))
        return {
            "source": self.source,
            "format": self.format.value,
            "compressed": self.compressed,
            "events": mine,
            "spans": self.stats.spans if otlp else None,
            "skippedSpans": self.stats.spans - mine if otlp else None,
            "reordered": False,
            "warnings": self.stats.report_warnings(),
        }


class _FieldReader:
    """One domain's span mapping, prepared once (attribute names are built here, not per span)."""

    def __init__(self, domain: Domain) -> None:
        definition = domain.definition
        prefix = definition.prefix
        self.name = domain.name
        self.prefix = prefix
        self.type_attr = prefix + "type"
        self.key_attr = prefix + "key"
        self.actor_attrs = (prefix + "actor", *GENERIC_ACTOR_ATTRIBUTES)
        #: (field name, attribute, flattened-attribute prefix or None)
        self.fields = tuple(
            (spec.name, prefix + spec.name, prefix + spec.name + "." if _STRUCTURED & set(spec.json) else None)
            for spec in definition.fields
        )

    def event(self, attrs: Mapping[str, Any], decode: Decode, resource: ResourceFallbacks, *,
              trace_id: str, span_id: str, start_ns: int | None, position: tuple[int, int, int],
              origin: str, stats: DecodeStats) -> DomainEvent | None:
        raw_type = decode(attrs[self.type_attr], self.type_attr)
        if raw_type is None or raw_type == "":
            return None
        if type(raw_type) is not str:
            raise ValueError(f"attribute {self.type_attr} must be a string, got {type(raw_type).__name__}")
        key_raw = attrs.get(self.key_attr)
        key = None if key_raw is None else scalar_text(decode(key_raw, self.key_attr),
                                                       f"attribute {self.key_attr}", stats)
        if start_ns is not None:
            start_ns = None if start_ns == 0 else check_time_range(start_ns)
        if not trace_id:
            trace_id = (first_text(attrs, TRACE_ID_ATTRIBUTES, decode) or resource.trace_id
                        or "otlp-missing-traceid-r{}-s{}-p{}".format(*position))
        fields: dict[str, Any] = {}
        for name, attribute, flat in self.fields:
            raw = attrs.get(attribute)
            if raw is not None:
                value = decode(raw, attribute)
                if flat is not None and type(value) is str and value[:1] in ("{", "["):
                    try:
                        value = orjson.loads(value)
                    except orjson.JSONDecodeError:
                        pass  # a string after all: the pass judges its type
                if value is not None:
                    fields[name] = value
            elif flat is not None:
                gathered = {item[len(flat):]: decode(raw_item, item)
                            for item, raw_item in attrs.items() if item.startswith(flat)}
                if gathered:
                    fields[name] = gathered
        actor = first_text(attrs, self.actor_attrs, decode) or resource.actor or "unknown"
        return DomainEvent(start_ns, raw_type, key, fields, trace_id, span_id, actor, origin)


class SpanMapper:
    """The ``to_event`` the OTLP walkers call: a span to ``[(domain name, event)]`` or ``None``, with
    a fast path for each walker (:meth:`fast_json`, :meth:`fast_typed`)."""

    trace_id_attributes: tuple[str, ...] = TRACE_ID_ATTRIBUTES
    actor_attributes: tuple[str, ...] = GENERIC_ACTOR_ATTRIBUTES

    def __init__(self, domains: Sequence[Domain]) -> None:
        self._readers = tuple(_FieldReader(domain) for domain in domains)
        #: a second attribute of one of these domains' names on a span is an input error
        self.owned_prefixes: tuple[str, ...] = tuple(reader.prefix for reader in self._readers)

    def __call__(self, attrs: Mapping[str, Any], decode: Decode, resource: ResourceFallbacks,
                 **where: Any) -> list[tuple[str, DomainEvent]] | None:
        found: list[tuple[str, DomainEvent]] | None = None
        for reader in self._readers:
            if reader.type_attr in attrs:
                event = reader.event(attrs, decode, resource, **where)
                if event is not None:
                    if found is None:
                        found = []
                    found.append((reader.name, event))
        return found

    def _readers_of(self, values: Mapping[str, Any]) -> list[_FieldReader]:
        """The domains whose type attribute a span carries: mostly one or none (several are rare,
        and the fast paths leave them to the general path)."""
        return [reader for reader in self._readers if reader.type_attr in values]

    def fast_json(self, span: dict[str, Any], decoder: AnyValueDecoder, actor: str, origin: str) -> Any:
        """A spec-shaped OTLP/JSON span's events without the general path, or ``SLOW``.

        The bargain every fast path makes (:class:`~kvonce_pipeline.engine.decode.spans.SpanMapping`):
        spans as exporters write them (string type and key, hex ids, a decimal start time, fields as
        plain AnyValues) are mapped here; anything else, every error included, goes to the general
        path, so results and messages are the same either way. Measured: about half the general
        path's time per span (docs/domains.md).
        """
        values: dict[str, Any] = {}
        for attribute in span["attributes"]:
            name = attribute["key"]
            if name in values or name in _FALLBACK_NAMES:
                return SLOW
            values[name] = attribute["value"]
        readers = self._readers_of(values)
        if len(readers) != 1:
            return SLOW if readers else None
        reader = readers[0]
        kind = values[reader.type_attr]["stringValue"]
        key = values[reader.key_attr]["stringValue"]
        if type(kind) is not str or type(key) is not str or not kind or not key:
            return SLOW
        ids = fast_ids_and_start(span)
        if ids is None:
            return SLOW
        trace_id, span_id, start_ns = ids
        mine = 2
        fields: dict[str, Any] = {}
        for name, attribute, flat in reader.fields:
            raw = values.get(attribute)
            if raw is None:
                continue
            mine += 1
            if type(raw) is dict and len(raw) == 1:
                text = raw.get("stringValue")
                if type(text) is str:
                    if flat is not None and text[:1] in ("{", "["):
                        return SLOW
                    fields[name] = text
                    continue
                if "kvlistValue" in raw:
                    value = _fast_kvlist(raw, decoder)
                    if value is SLOW:
                        return SLOW
                    fields[name] = value
                    continue
            value = decoder(raw, attribute)
            if value is not None:
                fields[name] = value
        prefix = reader.prefix
        if sum(1 for name in values if name.startswith(prefix)) != mine:
            return SLOW  # flattened fields, the actor attribute or an undeclared one: the general path
        return [(reader.name, DomainEvent(start_ns, kind, key, fields, trace_id, span_id, actor, origin))]

    def fast_proto(self, span: Any, decoder: Any, actor: str, origin: str) -> Any:
        """No fast path for protobuf: its general path is already close (measured in docs/domains.md)."""
        return SLOW

    def fast_typed(self, span: Any, decoder: Any, actor: str, prefix: str, p: int) -> Any:
        """:meth:`fast_json` for the typed decoder's structs (:mod:`kvonce_pipeline.engine.decode.otlp_json_typed`):
        the events, ``NO_EVENT``, or ``None`` for the general mapping."""
        attributes = span.attributes
        values = {attribute.key: attribute.value for attribute in attributes}
        if len(values) != len(attributes) or not values.keys().isdisjoint(_FALLBACK_NAMES):
            return None
        readers = self._readers_of(values)
        if len(readers) != 1:
            return None if readers else NO_EVENT
        reader = readers[0]
        kind, key = values[reader.type_attr], values.get(reader.key_attr)
        if kind is UNSET or key is None or key is UNSET:
            return None
        kind, key = kind.stringValue, key.stringValue
        if type(kind) is not str or type(key) is not str or not kind or not key:
            return None
        ids = typed_ids_and_start(span)
        if ids is None:
            return None
        trace_id, span_id, start_ns = ids
        mine = 2
        fields: dict[str, Any] = {}
        for name, attribute, flat in reader.fields:
            raw = values.get(attribute)
            if raw is None:
                continue
            if raw is UNSET:
                return None
            mine += 1
            text = raw.stringValue
            if text is not UNSET:
                if flat is not None and text[:1] in ("{", "["):
                    return None
                fields[name] = text
            elif raw.kvlistValue is not UNSET and decoder.max_depth > 0 and _only_pairs(raw):
                fields[name] = _scalar_pairs(raw.kvlistValue, decoder)
            else:
                value = decoder(raw, attribute)
                if value is not None:
                    fields[name] = value
        if len(values) != mine and sum(1 for name in values if name.startswith(reader.prefix)) != mine:
            return None
        return [(reader.name, DomainEvent(start_ns, kind, key, fields, trace_id, span_id, actor, f"{prefix}{p}"))]


def event_from_object(obj: Any, domain: Domain, *, source: str, number: int, max_depth: int,
                      raw: bytes | None, stats: DecodeStats) -> DomainEvent:
    """One NDJSON line of ``domain``'s event log. Unreadable lines are :class:`InputError`; the
    fields' JSON types are judged by the pass."""
    where = f"line {number}"
    check_event_object(obj, _TEXT_FIELDS, source=source, where=where)
    try:
        key = scalar_text(obj.get("key"), "field 'key'", stats)
    except ValueError as exc:
        raise InputError(source, str(exc), where=where) from None
    keys = len(obj)
    fields: dict[str, Any] = {}
    for spec in domain.definition.fields:
        value = obj.get(spec.name)
        if value is not None:
            keys += checked_nesting(spec.name, value, max_depth, source=source, where=where)
            fields[spec.name] = value
    if raw is not None:
        refuse_duplicate_keys(raw, keys, source=source, where=where)
    time_ns = event_time(obj, source=source, where=where)
    return DomainEvent(
        time_ns,
        obj.get("type") or obj.get("event"),
        key,
        fields,
        obj.get("traceId") or f"ndjson-missing-traceid-l{number}",
        obj.get("spanId") or "",
        obj.get("actor") or "unknown",
        obj.get("origin") or where,
    )


def read_domain_events(path: str | os.PathLike[str], domains: Sequence[Domain], *, format: str = "auto",
                       limits: Limits | None = None) -> DomainRead:
    """Read ``path`` once and return the events of every domain in ``domains``, in input order.
    An NDJSON event log is read as ``domains[0]``'s."""
    limits = limits or Limits()
    source = str(path)
    detected, compressed = detect_format(path, hint=format, limits=limits)
    stats = DecodeStats()
    events: dict[str, list[DomainEvent]] = {domain.name: [] for domain in domains}
    read = DomainRead(source, detected, compressed, events, stats)
    count = 0

    def over() -> InputError:
        return InputError(source, f"more than {limits.max_events} events (KVONCE_MAX_EVENTS)")

    with gc_paused(), open_payload(path, limits) as (stream, _compressed):
        if detected is InputFormat.NDJSON:
            domain = domains[0]
            target = events[domain.name]
            for number, line in iter_lines(stream, source=source, max_line=limits.max_line_bytes):
                target.append(event_from_object(loads_line(line, source=source, number=number), domain,
                                                source=source, number=number,
                                                max_depth=limits.max_context_depth, raw=line, stats=stats))
                if len(target) > limits.max_events:
                    raise over()
            return read
        mapper = SpanMapper(domains)
        batches: Iterator[list[tuple[str, DomainEvent]]]
        if detected in (InputFormat.OTLP_JSON, InputFormat.OTLP_JSONL):
            decoder = AnyValueDecoder(stats, limits.max_context_depth)
            if detected is InputFormat.OTLP_JSON:
                blob = stream.read()
                if blob.startswith(b"\xef\xbb\xbf"):
                    blob = blob[3:]
                typed = decode_document(blob, stats=stats, max_depth=limits.max_context_depth, to_event=mapper)
                if typed is not None:  # the typed decoder took it: spec-shaped, no error to name
                    batches = iter(typed)
                else:
                    request = _loads_document(blob, source)
                    del blob
                    batches = iter_request_events(request, source=source, stats=stats, decoder=decoder,
                                                  consume=True, to_event=mapper)
            else:
                batches = _json_lines(stream, source, stats, decoder, limits, mapper)
        else:
            proto = ProtoAnyValueDecoder(limits.max_context_depth)
            if detected is InputFormat.OTLP_PROTO:
                message = parse_request(stream.read(), source=source)
                batches = iter_message_events(message, source=source, stats=stats, decoder=proto, to_event=mapper)
            else:
                batches = _delimited(stream, source, stats, proto, limits, mapper)
        for batch in batches:
            for name, event in batch:
                events[name].append(event)
            count += len(batch)
            if count > limits.max_events:
                raise over()
    return read


def _json_lines(stream: Any, source: str, stats: DecodeStats, decoder: AnyValueDecoder, limits: Limits,
                mapper: SpanMapper) -> Iterator[list[tuple[str, DomainEvent]]]:
    offset = 0
    for number, line in iter_lines(stream, source=source, max_line=limits.max_line_bytes):
        request = loads_line(line, source=source, number=number)
        yield from iter_request_events(request, source=source, stats=stats, decoder=decoder,
                                       resource_offset=offset, where_prefix=f"line {number} ", to_event=mapper)
        offset += count_resources(request)


def _delimited(stream: Any, source: str, stats: DecodeStats, decoder: ProtoAnyValueDecoder, limits: Limits,
               mapper: SpanMapper) -> Iterator[list[tuple[str, DomainEvent]]]:
    offset = 0
    for number, blob in iter_delimited_records(stream, source=source, max_record=limits.max_body_bytes):
        message = parse_request(blob, source=source, where=f"record {number}")
        yield from iter_message_events(message, source=source, stats=stats, decoder=decoder,
                                       resource_offset=offset, where_prefix=f"record {number} ", to_event=mapper)
        offset += len(message.resource_spans)


def payload_mentions(path: str | os.PathLike[str], needles: Sequence[bytes], limits: Limits, *,
                     on_read: Callable[[int], None] | None = None) -> set[bytes]:
    """Which of ``needles`` occur in the payload's bytes (after gunzip): a quick scan that decides
    which domains' decoders need to run at all. A needle found in a value only costs a decode that
    finds no event. An attribute name is stored as its bytes in protobuf and in JSON as exporters
    write it; a name spelled with JSON escapes (``\\u002e`` for a dot) is missed, which ``--domain``
    overrides. Stops reading as soon as every needle is found. ``on_read(n)`` is told each read's
    inflated size (a caller with a budget raises from it to stop the scan)."""
    found: set[bytes] = set()
    tail = max((len(n) for n in needles), default=1) - 1
    carry = b""
    with open_payload(path, limits) as (stream, _compressed):
        while len(found) < len(needles):
            chunk = stream.read(8 * 1024 * 1024)
            if not chunk:
                break
            if on_read is not None:
                on_read(len(chunk))
            window = carry + chunk
            for needle in needles:
                if needle not in found and needle in window:
                    found.add(needle)
            carry = window[-tail:] if tail else b""
    return found
