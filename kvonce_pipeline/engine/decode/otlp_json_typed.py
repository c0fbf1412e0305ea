"""Whole OTLP/JSON documents decoded by msgspec straight into typed structs: the fast path.

``orjson.loads`` of a 486 MB document builds about 5 GB of dicts, lists and strings, most of
which (span names, end times, kinds, scopes, the ``"key"``/``"value"`` names of every attribute)
the mapping never reads. Decoding into the structs below skips every field we do not need and
builds slotted objects instead of dicts: measured 2.4 s and 2.2 GB against orjson's 5.9 s and
5 GB for the 1M-event trace of issue #5.

Exactness comes before speed. The structs are declared so that anything the general decoder
(:mod:`kvonce_pipeline.engine.decode.otlp_json`) would read differently makes this path give up and return
``None``: explicit ``null`` where a value is expected (no field admits ``null``), unknown or
non-standard fields in an AnyValue (``forbid_unknown_fields``), the snake_case and legacy names
the general path accepts, AnyValues with more than one value set (the general path takes the
first in document order, which structs cannot see), and every value the general path would
turn into an error. The caller then runs the general path, which reads leniently or names the
error with its place. One difference is accepted: members the structs do not declare are skipped
unread, as OTLP receivers skip unknown fields, so a number beyond the double range there (``1e400``
in a span's ``kind``) passes here where orjson would refuse the whole document. Spans are mapped by the
:class:`~kvonce_pipeline.engine.decode.spans.SpanMapping` the caller gives, the same mapping as every
other form, with a decoder for these structs.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, Union

import msgspec
from msgspec import UNSET, UnsetType
from msgspec.structs import astuple

from ..timestamps import MAX_TIME_NS
from .spans import NO_EVENT, TAP_EVENTS, DecodeStats, SpanMapping, Tap, resource_fallbacks
from .otlp_json import _HEX16, _HEX32, INT64_MAX, INT64_MIN

# --- the structs: only what the mapping reads, nothing may be null ----------------------------


class _Strict(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """An AnyValue and its parts: any field outside the spec sends the document to the general path."""


#: Integers msgspec may decode here (its bounds stop at int64): wider literals, which orjson (the
#: general path) reads as uint64, as a float or not at all, make the typed path give up.
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_UInt64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class AnyValue(_Strict):
    stringValue: Union[str, UnsetType] = UNSET
    intValue: Union[_Int64, str, UnsetType] = UNSET
    boolValue: Union[bool, UnsetType] = UNSET
    doubleValue: Union[float, str, UnsetType] = UNSET
    bytesValue: Union[str, UnsetType] = UNSET
    kvlistValue: Union["KeyValueList", UnsetType] = UNSET
    arrayValue: Union["ArrayValue", UnsetType] = UNSET


class KeyValue(_Strict):
    key: str
    value: Union[AnyValue, UnsetType] = UNSET


class KeyValueList(_Strict):
    values: list[KeyValue] = []


class ArrayValue(_Strict):
    values: list[AnyValue] = []


class Span(msgspec.Struct, gc=False):
    traceId: str = ""
    spanId: str = ""
    startTimeUnixNano: Union[_UInt64, str, UnsetType] = UNSET
    attributes: list[KeyValue] = []
    # the general path's other spellings: present means "not for this path"
    trace_id: Any = UNSET
    span_id: Any = UNSET
    start_time_unix_nano: Any = UNSET


class ScopeSpans(msgspec.Struct, gc=False):
    spans: list[Span] = []


class Resource(msgspec.Struct, gc=False):
    attributes: list[KeyValue] = []


class ResourceSpans(msgspec.Struct, gc=False):
    resource: Union[Resource, UnsetType] = UNSET
    scopeSpans: list[ScopeSpans] = []
    scope_spans: Any = UNSET
    instrumentationLibrarySpans: Any = UNSET


class TracesRequest(msgspec.Struct, gc=False):
    resourceSpans: Union[list[ResourceSpans], UnsetType] = UNSET
    resource_spans: Any = UNSET


_DECODER = msgspec.json.Decoder(TracesRequest)
_ONE_SET = len(AnyValue.__struct_fields__) - 1  # UNSET count of an AnyValue with exactly one value


class _GiveUp(Exception):
    """This document needs the general path (lenient forms, or an error it must name)."""


# --- AnyValue -> JSON-compatible value, as otlp_json.AnyValueDecoder -----------------------------


class TypedAnyValueDecoder:
    """The general decoder's results for these structs; anything it would reject gives up instead."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth

    def __call__(self, value: Any, name: str) -> Any:
        try:
            return self.decode(value, 0)
        except RecursionError:
            raise _GiveUp from None

    def decode(self, value: AnyValue, depth: int) -> Any:
        text = value.stringValue
        if text is not UNSET:
            return text
        unset = astuple(value).count(UNSET)
        if unset != _ONE_SET:
            if unset == _ONE_SET + 1:
                return None  # {}: an empty AnyValue
            raise _GiveUp  # several values: the general path takes the first in document order
        number = value.intValue
        if number is not UNSET:
            return _int64(number)
        flag = value.boolValue
        if flag is not UNSET:
            return flag
        double = value.doubleValue
        if double is not UNSET:
            return _double(double)
        data = value.bytesValue
        if data is not UNSET:
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise _GiveUp from None
            return data
        if depth >= self.max_depth:
            raise _GiveUp
        pairs = value.kvlistValue
        if pairs is not UNSET:
            out: dict[str, Any] = {}
            for entry in pairs.values:
                name = entry.key
                if name in out:
                    raise _GiveUp
                raw = entry.value
                out[name] = None if raw is UNSET else self.decode(raw, depth + 1)
            return out
        # the one member set (counted above): every other member is UNSET
        return [self.decode(item, depth + 1) for item in value.arrayValue.values]  # type: ignore[union-attr]


def _int64(item: int | str) -> int:
    if isinstance(item, str):
        if not (item.isascii() and (item.isdigit() or (item[:1] == "-" and item[1:].isdigit()))):
            raise _GiveUp
        item = int(item)
    if not INT64_MIN <= item <= INT64_MAX:
        raise _GiveUp
    return item


def _double(item: float | str) -> float | str:
    if isinstance(item, str):
        if item in ("NaN", "Infinity", "-Infinity"):
            return item
        raise _GiveUp  # other numeric strings: the general path decides
    if not math.isfinite(item):
        raise _GiveUp
    return item


# --- the walk ---------------------------------------------------------------------------------

def _attr_map(attributes: list[KeyValue], owned: tuple[str, ...]) -> dict[str, AnyValue]:
    """``{name: value}``; an attribute without a value counts as absent, as in the general path."""
    out: dict[str, Any] = {}
    valueless = False
    for attribute in attributes:
        name = attribute.key
        if name in out and name.startswith(owned):
            raise _GiveUp  # the general path names the duplicate
        value = out[name] = attribute.value
        if value is UNSET:
            if name.startswith(owned):
                raise _GiveUp  # e.g. a flattened part: the general path decodes every part, and refuses this one
            valueless = True
    if valueless:
        return {name: value for name, value in out.items() if value is not UNSET}
    return out


def decode_document(blob: bytes, *, stats: DecodeStats, max_depth: int,
                    keep: list[Any] | None = None, tap: Tap | None = None,
                    to_event: SpanMapping) -> list[Any] | None:
    """The events of one OTLP/JSON document in document order, or ``None`` for the general path.

    ``stats`` is only updated when events are returned. Nothing here raises for bad input: an
    input the general path would reject returns ``None``, so that path can name the problem.
    Freeing the decoded structs takes over a second at 1M spans; a caller that will end the
    process soon passes ``keep`` to have them parked there instead of freed as the walk goes.
    ``tap(start, events)`` sees the events as the walk makes them (see :data:`Tap`); when this
    returns ``None`` the events tapped so far are void.

    A large document is decoded a chunk of resources at a time (:func:`_chunk_bounds`), so the
    first events reach ``tap`` after a few megabytes instead of after the whole decode.

    ``to_event`` maps spans to events (as for the general decoder,
    :func:`kvonce_pipeline.engine.decode.otlp_json.iter_request_events`); its ``fast_typed`` is tried
    first for each span.
    """
    if not blob.isascii():
        try:  # msgspec does not check the UTF-8 of members it skips; orjson refuses the document
            blob.decode()
        except UnicodeDecodeError:
            return None
    decoder = TypedAnyValueDecoder(max_depth)
    bounds = _chunk_bounds(blob)
    walk = _Walk(decoder, free=keep is None, tap=tap, to_event=to_event)
    try:
        if bounds is not None:
            try:
                decode_chunk = _ChunkDecoder()
                for start, end in bounds:
                    resources = decode_chunk(blob, start, end)
                    walk.resources(resources)
                    if keep is not None:
                        keep.append(resources)
            except _NotChunks:
                walk = _Walk(decoder, free=keep is None, tap=tap, to_event=to_event)  # starts over: ``tap`` sees 0 again
                bounds = None
        if bounds is None:
            try:
                request = _DECODER.decode(blob)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
                return None
            if request.resource_spans is not UNSET or request.resourceSpans is UNSET:
                return None  # snake_case, or not a trace request: the general path reads or names it
            walk.resources(request.resourceSpans)  # type: ignore[arg-type]  # not UNSET: checked above
            if keep is not None:
                keep.append(request)
        walk.finish()
    except (_GiveUp, ValueError, TypeError, RecursionError):
        return None
    stats.spans += walk.spans_seen
    stats.skipped_spans += walk.skipped
    stats.absorb(walk.notes)
    return walk.events


# --- large documents in chunks -----------------------------------------------------------------

#: The document form that may be decoded in chunks: one member, the resources' array.
_HEAD, _TAIL = b'{"resourceSpans":[', b"]}"
#: Where a resource may start after a comma: the likely cut points, each proved by decoding.
_CUT = b'},{"resource":{'
_JSON_SPACE = b" \t\n\r"
#: Chunk sizes: a small first one so the events start flowing at once, then larger ones.
FIRST_CHUNK_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 16 * 1024 * 1024

_CHUNK_DECODER = msgspec.json.Decoder(list[ResourceSpans])


class _NotChunks(Exception):
    """A cut was not between two resources after all: decode the document whole."""


def _chunk_bounds(blob: bytes) -> list[tuple[int, int]] | None:
    """``(start, end)`` of runs of whole resources in ``{"resourceSpans":[...]}``, or None.

    Each run is decoded as a JSON array of its own (:func:`_decode_chunk`). That is exact: the
    runs start at the array's first element and right after a cut comma, and a run decodes as
    an array only if its cut comma stands between two elements of the outer array (a cut inside
    an element or a string leaves that run unbalanced or unterminated, and the document is then
    decoded whole). So the runs' arrays, in order, are the document's ``resourceSpans``, and
    with the head and tail checked byte for byte the document has no other member.
    """
    if len(blob) < FIRST_CHUNK_BYTES + CHUNK_BYTES:
        return None
    first = 0
    while first < len(blob) and blob[first] in _JSON_SPACE:
        first += 1
    last = len(blob)
    while last > first and blob[last - 1] in _JSON_SPACE:
        last -= 1
    last -= len(_TAIL)
    if not blob.startswith(_HEAD, first) or not blob.startswith(_TAIL, last):
        return None
    bounds: list[tuple[int, int]] = []
    start = first + len(_HEAD)
    target = start + FIRST_CHUNK_BYTES
    while target < last - CHUNK_BYTES // 2:
        cut = blob.find(_CUT, target, last)
        if cut < 0:
            break
        bounds.append((start, cut + 1))  # up to the closing brace of the resource before the comma
        start = cut + 2
        target = start + CHUNK_BYTES
    if not bounds:
        return None
    bounds.append((start, last))
    return bounds


class _ChunkDecoder:
    """Decodes runs of the document as arrays, through one reused buffer.

    A run is copied between ``[`` and ``]`` into the buffer, which grows to the largest run and
    is then reused: a fresh bytes object per run would cost its page faults again every time.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def __call__(self, blob: bytes, start: int, end: int) -> list[ResourceSpans]:
        size = end - start
        buffer = self._buffer
        if len(buffer) < size + 2:
            buffer.extend(bytes(size + 2 - len(buffer)))
        buffer[0] = 0x5B  # [
        buffer[1:size + 1] = memoryview(blob)[start:end]
        buffer[size + 1] = 0x5D  # ]
        with memoryview(buffer)[:size + 2] as run:
            try:
                resources = _CHUNK_DECODER.decode(run)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
                raise _NotChunks from None
        if not resources:
            raise _NotChunks  # an empty run: "[,]" is no array
        return resources


class _Walk:
    """The events of the resources, in the order given, and how many spans were seen and skipped."""

    def __init__(self, decoder: TypedAnyValueDecoder, *, free: bool, tap: Tap | None,
                 to_event: SpanMapping) -> None:
        self.decoder = decoder
        self.free = free
        self.tap = tap
        self.to_event = to_event
        #: a span's event without the general mapping, or None to send it there
        self.fast: Any = to_event.fast_typed
        self.owned = to_event.owned_prefixes
        self.events: list[Any] = []
        self.spans_seen = self.skipped = self._tapped = self._resources = 0
        #: what the mapping counted (scalar keys or values); added to the caller's stats if kept
        self.notes = DecodeStats()

    def resources(self, resources: list[ResourceSpans]) -> None:
        decoder, tap, events, fast, to_event = self.decoder, self.tap, self.events, self.fast, self.to_event
        append = events.append
        first = self._resources
        self._resources += len(resources)
        for i, resource_spans in enumerate(resources):
            r = first + i
            if resource_spans.scope_spans is not UNSET or resource_spans.instrumentationLibrarySpans is not UNSET:
                raise _GiveUp
            resource = resource_spans.resource
            fallbacks = resource_fallbacks(_attr_map(resource.attributes, self.owned)  # type: ignore[union-attr]
                                           if resource is not UNSET else {}, decoder, to_event)
            actor = fallbacks.actor or "unknown"
            for s, scope_spans in enumerate(resource_spans.scopeSpans):
                spans = scope_spans.spans
                self.spans_seen += len(spans)
                prefix = f"span r{r}/s{s}/p"
                for p, span in enumerate(spans):
                    event = fast(span, decoder, actor, prefix, p)
                    if event is NO_EVENT:  # the fast path's "this span carries no event": skipped
                        self.skipped += 1
                        continue
                    if event is None:
                        event = _general_event(span, decoder, fallbacks, (r, s, p), prefix, self.notes, to_event)
                        if event is None:
                            self.skipped += 1
                            continue
                    append(event)
            if tap is not None and len(events) - self._tapped >= TAP_EVENTS:
                tap(self._tapped, events[self._tapped:])
                self._tapped = len(events)
            if self.free:
                resources[i] = None  # type: ignore[call-overload]  # hand the memory over to the events

    def finish(self) -> None:
        if self.tap is not None and len(self.events) > self._tapped:
            self.tap(self._tapped, self.events[self._tapped:])
            self._tapped = len(self.events)


_LOWER_HEX = "0123456789abcdef"


def typed_ids_and_start(span: Span) -> tuple[str, str, int | None] | None:
    """A spec-shaped span's ids (lower-case hex) and start time (``None``: 0, OTLP's "unset"), or
    ``None`` for the general mapping. The snake_case spellings give the whole document up (the
    general path reads them)."""
    if span.trace_id is not UNSET or span.span_id is not UNSET or span.start_time_unix_nano is not UNSET:
        raise _GiveUp
    trace_id = span.traceId
    if len(trace_id) != 32 or trace_id.strip(_LOWER_HEX):
        return None  # not 32 lower-case hex digits (str.strip is the cheapest exact test)
    span_id = span.spanId
    if span_id and (len(span_id) != 16 or span_id.strip(_LOWER_HEX)):
        return None
    raw = span.startTimeUnixNano
    if isinstance(raw, str):
        if not (raw.isascii() and raw.isdigit()):
            return None
        start = int(raw)
    elif isinstance(raw, int):
        start = raw
    else:
        return None  # unset
    if not 0 <= start <= MAX_TIME_NS:
        return None
    return trace_id, span_id, start or None


def _only_pairs(value: AnyValue) -> bool:
    """``kvlistValue`` is the one value set (cheaper than counting, on the hot path)."""
    return (value.stringValue is UNSET and value.intValue is UNSET and value.boolValue is UNSET
            and value.doubleValue is UNSET and value.bytesValue is UNSET and value.arrayValue is UNSET)


def _only_int(value: AnyValue) -> bool:
    """``intValue`` is the one value set (``stringValue`` already known unset)."""
    return (value.kvlistValue is UNSET and value.boolValue is UNSET and value.doubleValue is UNSET
            and value.bytesValue is UNSET and value.arrayValue is UNSET)


def _scalar_pairs(pairs: KeyValueList, decoder: TypedAnyValueDecoder) -> dict[str, Any]:
    """A kvlist context (the usual ``{"attempt": 1}``) without a decoder call per scalar."""
    out: dict[str, Any] = {}
    for entry in pairs.values:
        name = entry.key
        if name in out:
            raise _GiveUp
        item = entry.value
        if item is UNSET:
            out[name] = None
            continue
        text = item.stringValue
        if text is not UNSET:
            out[name] = text
            continue
        number = item.intValue
        if type(number) is str and number.isdigit() and len(number) < 19 and number.isascii() \
                and _only_int(item):
            out[name] = int(number)
            continue
        out[name] = decoder.decode(item, 1)
    return out


def _general_event(span: Span, decoder: TypedAnyValueDecoder, fallbacks: Any, position: tuple[int, int, int],
                   prefix: str, notes: DecodeStats, to_event: SpanMapping) -> Any:
    """Any other span, through the mapping every form shares (skipped spans return ``None``)."""
    if span.trace_id is not UNSET or span.span_id is not UNSET or span.start_time_unix_nano is not UNSET:
        raise _GiveUp
    trace_id = span.traceId
    if trace_id and not _HEX32.fullmatch(trace_id):
        raise _GiveUp
    span_id = span.spanId
    if span_id and not _HEX16.fullmatch(span_id):
        raise _GiveUp
    start = span.startTimeUnixNano
    if start is UNSET:
        start_ns = None
    elif isinstance(start, str):
        if not (start.isascii() and start.isdigit()):
            raise _GiveUp
        start_ns = int(start)
    elif start < 0:  # type: ignore[operator]  # an int: UNSET and str are ruled out
        raise _GiveUp
    else:
        start_ns = start  # type: ignore[assignment]
    return to_event(_attr_map(span.attributes, to_event.owned_prefixes), decoder, fallbacks, trace_id=trace_id.lower(),
                         span_id=span_id.lower(), start_ns=start_ns, position=position,
                         origin=f"{prefix}{position[2]}", stats=notes)

