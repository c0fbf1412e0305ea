"""The projection: per-key aggregates, run totals, and the per-event state sequence.

Field names follow the earlier projector (``kvonce/v1``) so existing consumers keep working. The
state sequence holds, per event, the state of *the key that event touched* and the running totals:
O(events) in time and size. (The earlier tool copied the whole store per event, which is
O(events x keys) and died at a few thousand keys.) The events themselves are not repeated in the
projection: they are in ``kvonce-events.ndjson``, line ``index + 1``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from .events import EVENT_TYPES, Event

SCHEMA_VERSION = "kvonce/v1"


_KNOWN = frozenset(EVENT_TYPES)
#: Stands for an empty list until the first item arrives: most keys never get a retry or failure
#: context, and four empty lists per key were a fifth of the projection's memory at 400k keys.
#: orjson writes a tuple as an array, so the JSON is the same.
_EMPTY: tuple[()] = ()


_LIST_FIELDS = ("failureReasons", "retryContexts", "successContexts", "failureContexts")


#: Distinct small contexts kept for sharing, at most this many (a bound on the cache itself).
_SHARED_LIMIT = 1 << 16


class _Shared:
    """One object per distinct small context or reason in the per-key lists.

    ``perKey`` keeps every context and failure reason of every key (the projection file holds
    them), so it grows with events; but real contexts repeat (``{"attempt": 1}``, ``"duplicate"``).
    At 10M events over 400k keys, sharing equal values cut the streamed run's peak memory by
    more than half. The JSON written is the same: equal values serialise equally.
    """

    def __init__(self) -> None:
        self._values: dict[Any, Any] = {}

    def __call__(self, value: Any) -> Any:
        kind = type(value)
        if kind is str:
            token: Any = value
        elif kind is dict and len(value) <= 4:
            token = orjson.dumps(value)
        else:
            return value
        shared = self._values.get(token)
        if shared is not None:
            return shared
        if len(self._values) < _SHARED_LIMIT:
            self._values[token] = value
        return value


class KeyAggregate(msgspec.Struct, gc=False):
    """One key's entry in ``perKey``; the field order is the file's.

    A mutable struct rather than a dict: cheaper to make for 400,000 keys and to update, and
    msgspec encodes the whole ``perKey`` mapping in C. The lists start as the shared empty
    tuple (:data:`_EMPTY`) and become lists on their first item.
    """

    successCount: int = 0
    retries: int = 0
    failureReasons: Any = _EMPTY
    retryContexts: Any = _EMPTY
    successContexts: Any = _EMPTY
    failureContexts: Any = _EMPTY
    value: Any = None
    firstTimestamp: Any = None
    lastTimestamp: Any = None
    lastType: Any = None
    lastFailureReason: Any = None


class PerKeyFold:
    """The per-key aggregates (``perKey``) and the run's stats: what ``kvonce-projection.json`` holds.

    ``share=False`` keeps each event's own context objects instead of one per distinct value:
    right when the events stay in memory anyway (sharing then saves nothing and costs a
    serialisation per context, about a fifth of the fold).
    """

    def __init__(self, *, share: bool = True) -> None:
        self.per_key: dict[str, KeyAggregate] = {}
        self.by_type = {"success": 0, "retry": 0, "failure": 0, "unknown": 0}
        self.event_count = 0
        self._failure_keys: set[str] = set()
        self._duplicate_keys: set[str] = set()
        self._share: _Shared | None = _Shared() if share else None

    def fold(self, event: Event, timestamp: str | None) -> None:
        self.event_count += 1
        kind = event.type
        self.by_type[kind if kind in _KNOWN else "unknown"] += 1
        key = event.key
        if key is None:
            return
        entry = self.per_key.get(key)
        if entry is None:
            entry = self.per_key[key] = KeyAggregate()
        if entry.firstTimestamp is None:
            entry.firstTimestamp = timestamp
        if timestamp is not None:
            entry.lastTimestamp = timestamp
        entry.lastType = kind
        context = event.context
        share = self._share
        if context is not None and share is not None:
            context = share(context)
        if kind == "success":
            entry.successCount += 1
            if event.value is not None:
                entry.value = event.value
            if context is not None:
                items = entry.successContexts
                if items is _EMPTY:
                    entry.successContexts = [context]
                else:
                    items.append(context)
        elif kind == "retry":
            entry.retries += 1
            if context is not None:
                items = entry.retryContexts
                if items is _EMPTY:
                    entry.retryContexts = [context]
                else:
                    items.append(context)
        elif kind == "failure":
            reason = event.reason
            shown = ("unknown" if reason is None else reason if share is None else share(reason))
            items = entry.failureReasons
            if items is _EMPTY:
                entry.failureReasons = [shown]
            else:
                items.append(shown)
            if context is not None:
                items = entry.failureContexts
                if items is _EMPTY:
                    entry.failureContexts = [context]
                else:
                    items.append(context)
            if reason is not None:
                entry.lastFailureReason = reason
                if reason == "duplicate" or reason.lower() == "duplicate":
                    self._duplicate_keys.add(key)
            self._failure_keys.add(key)

    def stats(self) -> dict[str, Any]:
        total = self.event_count
        entries = self.per_key.values()
        return {
            "totalEvents": total,
            "uniqueKeys": len(self.per_key),
            "byType": dict(self.by_type),
            "keysWithSuccess": sum(1 for e in entries if e.successCount > 0),
            "keysWithRetries": sum(1 for e in entries if e.retries > 0),
            "keysWithFailures": len(self._failure_keys),
            "duplicateFailureKeys": len(self._duplicate_keys),
            "successRate": round(self.by_type["success"] / total, 3) if total else 0,
            "stateSequenceLength": total,
        }

    def encoded(self, *, state_sequence_path: str | None = None, indent: bool = False) -> tuple[bytes, dict[str, Any]]:
        """``kvonce-projection.json``'s bytes (without the final newline) and the stats, straight from the structs."""
        out = self._document(self.per_key, state_sequence_path)
        if indent:
            return orjson.dumps(msgspec.to_builtins(out), option=orjson.OPT_INDENT_2), out["stats"]
        return _ENCODE(out), out["stats"]

    def result(self, *, state_sequence_path: str | None = None) -> dict[str, Any]:
        """The projection as plain JSON values (``perKey`` entries as dicts with lists)."""
        per_key = {key: _as_dict(entry) for key, entry in self.per_key.items()}
        return self._document(per_key, state_sequence_path)

    def _document(self, per_key: dict[str, Any], state_sequence_path: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": SCHEMA_VERSION,
            "eventCount": self.event_count,
            "perKey": per_key,
            "stats": self.stats(),
        }
        if state_sequence_path is not None:
            out["outputs"] = {"stateSequence": state_sequence_path}
        return out


_ENCODE = msgspec.json.Encoder().encode


def _as_dict(entry: KeyAggregate) -> dict[str, Any]:
    out = msgspec.structs.asdict(entry)
    for name in _LIST_FIELDS:
        if out[name] is _EMPTY:
            out[name] = []
    return out


class KeyState(msgspec.Struct, gc=False):
    """One key's state after an event: the ``state`` of a state-sequence entry.

    A mutable struct rather than a dict: msgspec encodes it in C straight from the live object,
    so an entry costs no copy and no dict (the state sequence was the largest cost of the
    events-and-states pass: 4.1 s per million events with dicts and ``orjson.dumps``).
    """

    written: bool = False
    value: Any = None
    retries: int = 0
    failures: int = 0
    lastFailureReason: Any = None
    lastSuccessAt: Any = None


class Totals(msgspec.Struct, gc=False):
    """The running totals after an event (``totals`` of a state-sequence entry)."""

    events: int = 0
    success: int = 0
    retry: int = 0
    failure: int = 0
    unknown: int = 0
    writtenKeys: int = 0


class _Entry(msgspec.Struct, gc=False):
    """One state-sequence entry; one instance is refilled and encoded per event."""

    index: int
    timestamp: Any
    type: Any
    key: Any
    state: Any
    totals: Totals


class StateFold:
    """Each key's state and the running totals: what the state sequence holds, one entry per event.

    Separate from :class:`PerKeyFold` so the two halves of the projection can be made on two
    cores (:mod:`kvonce_pipeline.domains.kvonce.own_pass.parallel`); :class:`ProjectionBuilder` runs both. The states
    are :class:`KeyState` structs that :class:`StateSequence` encodes as they stand.
    """

    def __init__(self) -> None:
        self._state: dict[str, KeyState] = {}
        self.totals = Totals()

    @property
    def event_count(self) -> int:
        return self.totals.events

    @property
    def written_keys(self) -> int:
        return self.totals.writtenKeys

    def fold(self, event: Event, timestamp: str | None) -> KeyState | None:
        """Apply one event; returns the live state of its key (``None`` for a keyless event)."""
        totals = self.totals
        totals.events += 1
        kind = event.type
        key = event.key
        state = None
        if key is not None:
            state = self._state.get(key)
            if state is None:
                state = self._state[key] = KeyState()
        if kind == "success":
            totals.success += 1
            if state is not None:
                if event.value is not None:
                    state.value = event.value
                if not state.written:
                    state.written = True
                    totals.writtenKeys += 1
                state.lastSuccessAt = timestamp
        elif kind == "retry":
            totals.retry += 1
            if state is not None:
                state.retries += 1
        elif kind == "failure":
            totals.failure += 1
            if state is not None:
                reason = event.reason
                if reason is not None:
                    state.lastFailureReason = reason
                state.failures += 1
        else:
            totals.unknown += 1
        return state

    def entry(self, index: int, event: Event, timestamp: str | None,
              state: KeyState | None) -> dict[str, Any]:
        """The entry for the event just folded, as plain JSON values (a copy: the caller may keep it)."""
        return {
            "index": index,
            "timestamp": timestamp,
            "type": event.type,
            "key": event.key,
            "state": None if state is None else msgspec.structs.asdict(state),
            "totals": msgspec.structs.asdict(self.totals),
        }


class StateSequence:
    """The bytes of ``kvonce-state-sequence.json``, an entry at a time, for a writer to take in chunks.

    The file is a JSON array with one entry per line (``[``, then the entries joined by
    ``\n,``, then ``\n]``). Each entry is encoded by msgspec into one growing buffer straight
    from the live :class:`KeyState` and :class:`Totals` (no dict, no copy). Every entry is
    followed by ``\n,``; :meth:`take` holds the last byte back, so the final comma can be
    dropped when the array closes.
    """

    def __init__(self, fold: StateFold) -> None:
        self._fold = fold
        self._entry = _Entry(0, None, None, None, None, fold.totals)
        self._buffer = bytearray(b"[\n")
        self._encode_into = msgspec.json.Encoder().encode_into

    def add(self, index: int, event: Event, timestamp: str | None) -> KeyState | None:
        """Fold ``event`` and encode its entry; returns the key's live state, as :meth:`StateFold.fold`."""
        state = self._fold.fold(event, timestamp)
        entry = self._entry
        entry.index = index
        entry.timestamp = timestamp
        entry.type = event.type
        entry.key = event.key
        entry.state = state
        buffer = self._buffer
        self._encode_into(entry, buffer, -1)
        buffer += b"\n,"
        return state

    def take(self) -> bytes:
        """The bytes encoded since the last call, but the last (held back until :meth:`close`)."""
        buffer = self._buffer
        data = bytes(memoryview(buffer)[:-1])
        del buffer[:-1]
        return data

    def close(self) -> bytes:
        """The rest of the file: the held-back byte (unless it is the last entry's comma) and ``]``."""
        data = self.take()
        last = bytes(self._buffer)
        self._buffer = bytearray()
        return data + (b"" if last == b"," else last) + b"]\n"


class ProjectionBuilder:
    """Fold events one at a time into both halves: per-key aggregates and the state sequence."""

    def __init__(self) -> None:
        self.per_key_fold = PerKeyFold()
        self.states = StateFold()
        self.entry = self.states.entry
        self.by_type = self.per_key_fold.by_type

    @property
    def event_count(self) -> int:
        return self.per_key_fold.event_count

    @property
    def written_keys(self) -> int:
        return self.states.written_keys

    def fold(self, event: Event, timestamp: str | None) -> KeyState | None:
        """Apply one event; returns the live state of its key (``None`` for a keyless event)."""
        self.per_key_fold.fold(event, timestamp)
        return self.states.fold(event, timestamp)

    def observe(self, index: int, event: Event, timestamp: str | None) -> dict[str, Any]:
        """Fold one event and return its state-sequence entry as plain JSON values."""
        return self.entry(index, event, timestamp, self.fold(event, timestamp))

    def stats(self) -> dict[str, Any]:
        return self.per_key_fold.stats()

    def result(self, *, state_sequence_path: str | None = None) -> dict[str, Any]:
        return self.per_key_fold.result(state_sequence_path=state_sequence_path)
