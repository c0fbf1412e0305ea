"""The Inventory replay: one stock per SKU and one tally per order, moved by each event in time order.

The earlier tool kept one global snapshot and checked each snapshot alone, so a service that reported
a wrong snapshot, released an order it never reserved, or said ``pass`` about a broken stock passed.
This machine replays the deltas per SKU and compares every reported state with the replay. The rules
and how the stock moves are described in ``domain.toml`` (its ``doc``); the choices behind them:

- **The stock starts unknown**, not at zeros: a SKU's first event is its baseline. The earlier
  tool's zeros would turn a trace that starts mid-day (the sample's allocation reports 15 allocated
  after a delta of 5) into a false ``state_delta_mismatch``; unknown numbers are honest and give
  ``*:data_missing`` warnings where a check cannot be made.
- **No cascades.** After a mismatch the replay keeps its own numbers and remembers the service's as
  an alternative (``_Track.alt_*``, moved by later deltas too); the next compared event that agrees
  with either ends the doubt without a finding. A wrong report and a jump in the service's books each
  give one finding. The invariant and data-missing rules report when a stock *enters* the condition,
  so a stock that stays over-allocated for 10,000 events is one finding, and another only after it
  has recovered.
- **Speed**: per-SKU and per-order state are ``msgspec.Struct`` with ``gc=False`` (no cyclic-GC
  tracking; created in C). ``observe`` creates no dict or tuple on the common path and returns the
  SKU's live :class:`Stock`, which the engine encodes before the next event. Timestamps stay
  integers until :meth:`InventoryMachine.projection` formats the few it shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ...engine.domain import DomainEvent, Emit

#: The stock of events that name no SKU (and whose order names none): a trace without SKUs has one
#: stock under this name. Parentheses: no plausible SKU looks like this.
NO_SKU = "(none)"

Number = int | float


class Stock(msgspec.Struct, gc=False, rename="camel"):
    """A SKU's replayed stock: what a state-sequence entry shows (``None``: not known)."""

    sku: str
    on_hand: Number | None = None
    allocated: Number | None = None
    available: Number | None = None


class _Track(msgspec.Struct, gc=False):
    """A SKU's stock and what the replay remembers about it (not part of the state sequence)."""

    stock: Stock
    events: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    mismatches: int = 0
    #: after a mismatch: the service's books (its reported numbers plus later deltas)
    alt: bool = False
    alt_on_hand: Number | None = None
    alt_allocated: Number | None = None
    #: episodes: the stock currently breaks the invariant / lacks the numbers (reported on entry)
    over: bool = False
    below: bool = False
    missing_le: bool = False
    missing_min: bool = False


class _Order(msgspec.Struct, gc=False):
    """One order key's tally over its allocation and release events."""

    sku: str | None = None
    allocations: int = 0
    releases: int = 0
    allocated: Number = 0
    released: Number = 0
    net: Number = 0
    first_ns: int | None = None
    last_ns: int | None = None
    #: the first release seen while the order had no allocation yet (-1: none)
    early_release: int = -1
    #: the event from which net < 0 / released > allocated holds (-1: does not hold now)
    negative_at: int = -1
    over_at: int = -1


_NUMBER = (int, float)  # type(x) in _NUMBER: True and False are not quantities


def _number(value: Any) -> Number | None:
    return value if type(value) in _NUMBER else None


def _differs(a: Number, b: Number) -> bool:
    """Exact for integers; floats within a relative 1e-9 (0.1 + 0.2 is 0.3 in a stock's books).
    Callers test ``a != b`` first: equal numbers, the common case, cost no call."""
    return a != b and abs(a - b) > 1e-9 * (abs(a) + abs(b) + 1)


_MILLIS = tuple(f".{n:03d}Z" for n in range(1000))


def _formatter() -> Callable[[int | None], str | None]:
    """ISO 8601 UTC with milliseconds and ``Z`` (the events file's form). The date part is cached by
    second: a projection of 400,000 orders formats 800,000 times, in far fewer distinct seconds, and
    the orders' first and last times interleave, so a one-entry cache missed (``strftime`` per call
    was most of the projection's time)."""
    prefixes: dict[int, str] = {}

    def iso(ns: int | None) -> str | None:
        if ns is None:
            return None
        second, rest = divmod(ns, 1_000_000_000)
        prefix = prefixes.get(second)
        if prefix is None:
            prefix = prefixes[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return prefix + _MILLIS[rest // 1_000_000]

    return iso


def _show(value: Number | None) -> str:
    return "unknown" if value is None else repr(value)


class InventoryMachine:
    """Feed events in time order with :meth:`observe`; :meth:`finish` reports the per-order rules."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        minimum = options.get("onhand_min", 0)
        if type(minimum) not in _NUMBER:
            raise ValueError(f"onhand_min must be a number, not {minimum!r}")
        self.onhand_min: Number = minimum
        self._tracks: dict[str, _Track] = {}
        self._orders: dict[str, _Order] = {}
        #: (eventIndex, time, key, sku, result, falseChecks) of each validation event
        self._validations: list[tuple[int, int | None, str, str, Any, list[str]]] = []
        self._projections = self._allocations = self._releases = self._validation_count = 0
        self._first_ns: int | None = None
        self._last_ns: int | None = None

    # -- the replay ------------------------------------------------------------------------------

    def observe(self, index: int, event: DomainEvent, emit: Emit) -> Stock:
        fields = event.fields
        kind = event.type
        key: str = event.key  # type: ignore[assignment]  # the engine passes only events with a key
        ns = event.time_unix_nano
        if ns is not None:
            if self._first_ns is None:
                self._first_ns = ns
            self._last_ns = ns

        context = fields.get("context")
        sku = context.get("sku") if type(context) is dict else None
        if sku is not None and type(sku) is not str:
            sku = str(sku) if type(sku) in _NUMBER else None
        order: _Order | None = None
        if kind == "allocation" or kind == "release":
            order = self._orders.get(key)
            if order is None:
                order = self._orders[key] = _Order(first_ns=ns)
            order.last_ns = ns
            if sku is None:
                sku = order.sku
            elif order.sku is None:
                order.sku = sku
        if sku is None:
            sku = NO_SKU
        track = self._tracks.get(sku)
        if track is None:
            track = self._tracks[sku] = _Track(Stock(sku), first_ns=ns)
        track.events += 1
        track.last_ns = ns
        stock = track.stock

        # the delta: numbers to apply, or nothing usable
        d_alloc: Number | None = None
        d_on: Number | None = None
        delta = fields.get("delta")
        has_delta = delta is not None
        if has_delta:
            if type(delta) in _NUMBER:
                d_alloc = delta
            elif type(delta) is dict:
                # _number() inlined here and below: a call per number was a sixth of observe's time
                d_alloc = delta.get("allocated")
                if type(d_alloc) not in _NUMBER:
                    d_alloc = None
                d_on = delta.get("onHand")
                if d_on is not None and type(d_on) not in _NUMBER:
                    d_on = None
            if d_alloc is None and d_on is None:
                has_delta = False
                emit("state_delta_mismatch:data_missing", key, index,
                     f"the delta {delta!r:.80} carries no number (allocated, onHand or a bare number); "
                     f"the replay cannot apply it")
                if kind == "allocation" or kind == "release":
                    stock.allocated = None  # the reservation moved by an amount we do not know
        elif kind == "allocation" or kind == "release":
            stock.allocated = None  # no delta (the engine reported the missing field)

        on = stock.on_hand
        al = stock.allocated
        if has_delta:
            if d_alloc is not None and al is not None:
                al = al + d_alloc
            if d_on is not None and on is not None:
                on = on + d_on
            if track.alt:
                if d_alloc is not None and track.alt_allocated is not None:
                    track.alt_allocated = track.alt_allocated + d_alloc
                if d_on is not None and track.alt_on_hand is not None:
                    track.alt_on_hand = track.alt_on_hand + d_on

        before_on = on  # the replay before a reported state is taken in (a validation is checked on it)
        before_al = al
        state = fields.get("state")
        reported_available: Number | None = None
        if type(state) is dict:
            s_on = state.get("onHand")
            if type(s_on) not in _NUMBER:
                s_on = None
            s_al = state.get("allocated")
            if type(s_al) not in _NUMBER:
                s_al = None
            s_av = state.get("available")
            if s_av is not None and type(s_av) not in _NUMBER:
                s_av = None
            reported_available = s_av
            if s_on is not None and s_al is not None:
                if s_av is not None and s_av != s_on - s_al and _differs(s_av, s_on - s_al):
                    finding = emit("available_consistency", key, index,
                                   f"reported available {s_av!r} is not onHand - allocated "
                                   f"({s_on!r} - {s_al!r} = {s_on - s_al!r}) for SKU {sku!r}")
                    if finding is not None:
                        finding["sku"] = sku
            elif s_av is not None:  # two of three give the third
                if s_on is None and s_al is not None:
                    s_on = s_al + s_av
                elif s_al is None and s_on is not None:
                    s_al = s_on - s_av
            if has_delta:
                if (on is not None and s_on is not None and on != s_on and _differs(on, s_on)) or (
                        al is not None and s_al is not None and al != s_al and _differs(al, s_al)):
                    if track.alt and not (
                            (track.alt_on_hand is not None and s_on is not None
                             and _differs(track.alt_on_hand, s_on))
                            or (track.alt_allocated is not None and s_al is not None
                                and _differs(track.alt_allocated, s_al))):
                        # the service's books since the last mismatch: it jumped once, then stayed
                        # consistent. Already reported; the replay follows the service from here.
                        on = s_on if s_on is not None else on
                        al = s_al if s_al is not None else al
                        track.alt = False
                    else:
                        track.mismatches += 1
                        finding = emit(
                            "state_delta_mismatch", key, index,
                            f"reported state onHand {_show(s_on)}, allocated {_show(s_al)} for SKU {sku!r} "
                            f"disagrees with the replay (previous onHand {_show(stock.on_hand)}, allocated "
                            f"{_show(stock.allocated)} plus the delta: onHand {_show(on)}, allocated {_show(al)})")
                        if finding is not None:
                            finding["sku"] = sku
                            finding["expected"] = {"onHand": on, "allocated": al}
                            finding["reported"] = {"onHand": s_on, "allocated": s_al}
                        track.alt = True
                        track.alt_on_hand = s_on if s_on is not None else on
                        track.alt_allocated = s_al if s_al is not None else al
                        if on is None:  # a number the replay did not know is learnt all the same
                            on = s_on
                        if al is None:
                            al = s_al
                else:
                    track.alt = False  # agrees with the replay: the earlier report was the odd one
                    if on is None:  # learn what the replay did not know
                        on = s_on
                    if al is None:
                        al = s_al
            else:
                # a snapshot: what it gives replaces the replay's numbers, what it lacks is kept
                if s_on is not None:
                    on = s_on
                if s_al is not None:
                    al = s_al
                track.alt = False
        stock.on_hand = on
        stock.allocated = al
        if on is not None and al is not None:
            stock.available = on - al
        else:
            stock.available = reported_available

        # the invariants, on the replayed stock; reported when the stock enters the condition
        if on is None or al is None:
            track.over = False
            if not track.missing_le:
                track.missing_le = True
                finding = emit("allocated_le_onhand:data_missing", key, index,
                               f"SKU {sku!r}: onHand {_show(on)}, allocated {_show(al)}; "
                               f"allocated <= onHand cannot be checked")
                if finding is not None:
                    finding["sku"] = sku
        else:
            track.missing_le = False
            if al > on:
                if not track.over:
                    track.over = True
                    finding = emit("allocated_le_onhand", key, index,
                                   f"SKU {sku!r}: allocated {al!r} exceeds onHand {on!r}")
                    if finding is not None:
                        finding["sku"] = sku
            else:
                track.over = False
        if on is None:
            track.below = False
            if not track.missing_min:
                track.missing_min = True
                finding = emit("onhand_min:data_missing", key, index,
                               f"SKU {sku!r}: onHand unknown; onHand >= {self.onhand_min!r} cannot be checked")
                if finding is not None:
                    finding["sku"] = sku
        else:
            track.missing_min = False
            if on < self.onhand_min:
                if not track.below:
                    track.below = True
                    finding = emit("onhand_min", key, index,
                                   f"SKU {sku!r}: onHand {on!r} is below the minimum {self.onhand_min!r}")
                    if finding is not None:
                        finding["sku"] = sku
            else:
                track.below = False

        if order is not None:
            if kind == "allocation":
                self._allocations += 1
                order.allocations += 1
                if d_alloc is not None:
                    order.allocated += d_alloc
                    order.net += d_alloc
            else:
                self._releases += 1
                if order.allocations == 0 and order.early_release < 0:
                    order.early_release = index
                order.releases += 1
                if d_alloc is not None:
                    order.released += abs(d_alloc)
                    order.net += d_alloc
            if order.net < 0:
                if order.negative_at < 0:
                    order.negative_at = index
            else:
                order.negative_at = -1
            if order.released > order.allocated:
                if order.over_at < 0:
                    order.over_at = index
            else:
                order.over_at = -1
        elif kind == "validation":
            self._validation_count += 1
            self._validation(index, key, sku, ns, fields, track, state, before_on, before_al, emit)
        elif kind == "projection":
            self._projections += 1
        return stock

    def _validation(self, index: int, key: str, sku: str, ns: int | None, fields: dict[str, Any],
                    track: _Track, state: Any, before_on: Number | None, before_al: Number | None,
                    emit: Emit) -> None:
        """The service's verdict on itself, against its own checks and against the replay.

        An invariant counts as broken if the replay breaks it just before the validation (what the
        service's events imply) or just after (its own state taken in): a service that reports a
        tidy state while its allocations and releases say otherwise is caught, and so is one that
        reports a broken state and says ``pass``. A receipt that cured the stock in between would
        have been reported as a projection, so the replay before is the service's own account."""
        result = fields.get("result")
        checks = fields.get("checks")
        if type(checks) is not dict:
            checks = {}
        false_checks = [name for name, value in checks.items() if value is False]
        self._validations.append((index, ns, key, sku, result, false_checks))
        if result is not None and result != "pass":
            emit("validation_event_result", key, index, f"validation result is {result!r:.80}, not 'pass'")
        if false_checks:
            emit("validation_event_failure", key, index,
                 f"validation reports false checks: {', '.join(false_checks)}")
        stock = track.stock
        broken: list[str] = []
        if track.over or (before_on is not None and before_al is not None and before_al > before_on):
            broken.append("allocated_le_onhand")
        if track.below or (before_on is not None and before_on < self.onhand_min):
            broken.append("onhand_min")
        if type(state) is dict:
            s_on = _number(state.get("onHand"))
            s_al = _number(state.get("allocated"))
            s_av = _number(state.get("available"))
            if (s_on is not None and s_al is not None and s_av is not None and s_av != s_on - s_al
                    and _differs(s_av, s_on - s_al)):
                broken.append("available_consistency")
        lies = [name for name in broken
                if checks.get(name) is True or (result == "pass" and checks.get(name) is not False)]
        if lies:
            said = "pass" if result == "pass" else f"{', '.join(n for n in lies if checks.get(n) is True)} true"
            finding = emit("validation_pass_contradicted", key, index,
                           f"validation says {said} but the replayed stock of SKU {sku!r} breaks "
                           f"{', '.join(lies)} (before the validation: onHand {_show(before_on)}, allocated "
                           f"{_show(before_al)}; with its state: onHand {_show(stock.on_hand)}, allocated "
                           f"{_show(stock.allocated)})")
            if finding is not None:
                finding["sku"] = sku
                finding["broken"] = lies

    def finish(self, emit: Emit) -> None:
        """The per-order rules: they need the whole trace (an allocation may come after a release)."""
        for key, order in self._orders.items():
            if order.early_release >= 0:
                if order.allocations:
                    emit("release_before_allocation", key, order.early_release,
                         "release before the order's first allocation (which comes later)")
                else:
                    emit("release_without_allocation", key, order.early_release,
                         f"release on an order that is never allocated ({order.releases} release(s), "
                         f"{order.released!r} released)")
            if order.negative_at >= 0:
                emit("order_net_negative", key, order.negative_at,
                     f"the order's net allocation is {order.net!r} (below zero from this event on)")
            if order.over_at >= 0:
                emit("order_released_gt_allocated", key, order.over_at,
                     f"the order released {order.released!r} but allocated {order.allocated!r} "
                     f"(more released than allocated from this event on)")

    # -- the projection --------------------------------------------------------------------------

    def projection(self) -> dict[str, Any]:
        iso = _formatter()
        stocks = {
            sku: {
                "onHand": track.stock.on_hand,
                "allocated": track.stock.allocated,
                "available": track.stock.available,
                "events": track.events,
                "stateMismatches": track.mismatches,
                "firstTimestamp": iso(track.first_ns),
                "lastTimestamp": iso(track.last_ns),
            }
            for sku, track in self._tracks.items()
        }
        orders = {
            key: {
                "sku": order.sku,
                "allocations": order.allocations,
                "releases": order.releases,
                "allocated": order.allocated,
                "released": order.released,
                "net": order.net,
                "firstTimestamp": iso(order.first_ns),
                "lastTimestamp": iso(order.last_ns),
            }
            for key, order in self._orders.items()
        }
        validations = [
            {"eventIndex": index, "timestamp": iso(ns), "key": key, "sku": sku, "result": result,
             "falseChecks": false_checks}
            for index, ns, key, sku, result, false_checks in self._validations
        ]
        return {
            "eventTypes": {
                "projection": self._projections,
                "allocation": self._allocations,
                "release": self._releases,
                "validation": self._validation_count,
            },
            "firstTimestamp": iso(self._first_ns),
            "lastTimestamp": iso(self._last_ns),
            "stockWithoutSku": NO_SKU,
            "stocks": stocks,
            "orders": orders,
            "validations": validations,
        }
