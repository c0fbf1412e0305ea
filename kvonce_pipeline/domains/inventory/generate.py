"""Synthetic Inventory traces for ``kvonce generate --domain inventory`` and the benchmarks.

A small store is simulated: a dozen SKUs, each counted first (a ``projection``), then orders that
reserve stock (``allocation``) and are later shipped, cancelled or partly released (``release``),
restocks and counts reported as ``projection`` snapshots, and the service's periodic self-checks
(``validation``). Every event reports the SKU's true state after it, so with ``violations=0`` the
trace is valid and gives no finding at all. Releases name no SKU (their order's allocation did), as
in the earlier tool's sample, so the replay's order-to-SKU inheritance is exercised at scale.

With ``violations=R`` each event is, with probability R, replaced by a fault (in turn):
a wrong snapshot after an allocation (``state_delta_mismatch``, the true books unaffected), a release
on an order never allocated (``release_without_allocation`` with its ``order_*`` warnings), a
validation that says ``fail`` with a false check (``validation_event_result``,
``validation_event_failure``), a count whose ``available`` is off (``available_consistency``), and a
validation that says ``pass`` about a stock it reports over-allocated (``allocated_le_onhand``,
``validation_pass_contradicted``; the next count corrects it).

Deterministic: the same arguments give the same events (one ``random.Random(seed)``); times strictly
increase, 1 to 100 ms apart.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from ...engine.domain import DomainEvent

#: 2025-10-09T00:00:00Z, the sample's first event.
BASE_NS = 1_759_968_000_000_000_000
SKUS = tuple(f"SKU-{n:04d}" for n in range(1, 13))
SERVICE = "inventory-service"
#: Open orders beyond this are released first (keeps the working set and the stock bounded).
MAX_OPEN = 4096
#: Events per trace id (one batch of the service's work).
EVENTS_PER_TRACE = 64
FAULTS = ("state_delta_mismatch", "release_without_allocation", "validation_event_result",
          "available_consistency", "validation_pass_contradicted")


def generate_events(events: int, *, seed: int = 0, violations: float = 0.0) -> Iterator[DomainEvent]:
    """``events`` Inventory events in time order (see the module docstring)."""
    if events < 0:
        raise ValueError("events must be zero or more")
    if not 0.0 <= violations <= 1.0:
        raise ValueError("violations must be between 0 and 1")
    rng = random.Random(seed)
    on_hand = {sku: 0 for sku in SKUS}
    allocated = {sku: 0 for sku in SKUS}
    open_orders: list[tuple[str, str, int]] = []  # (key, sku, still allocated)
    next_order = 1000
    fault = 0
    ns = BASE_NS
    trace_id = ""
    count = 0

    def state(sku: str) -> dict[str, int]:
        return {"onHand": on_hand[sku], "allocated": allocated[sku], "available": on_hand[sku] - allocated[sku]}

    def make(kind: str, key: str, fields: dict[str, object]) -> DomainEvent:
        nonlocal ns, trace_id, count
        ns += 1_000_000 * (1 + rng.randrange(100))
        if count % EVENTS_PER_TRACE == 0:
            trace_id = f"{rng.getrandbits(128):032x}"
        count += 1
        return DomainEvent(ns, kind, key, fields, trace_id, f"{rng.getrandbits(64):016x}", SERVICE)

    # every SKU is counted first: its baseline
    for sku in SKUS:
        if count >= events:
            return
        on_hand[sku] = rng.randrange(200, 2000)
        yield make("projection", "inventory", {"state": state(sku), "context": {"sku": sku}})

    while count < events:
        if violations and rng.random() < violations:
            name = FAULTS[fault % len(FAULTS)]
            fault += 1
            sku = rng.choice(SKUS)
            if name == "state_delta_mismatch":
                quantity = 1 + rng.randrange(5)
                if on_hand[sku] - allocated[sku] < quantity:
                    continue
                allocated[sku] += quantity
                wrong = state(sku)
                wrong["allocated"] += 1
                wrong["available"] -= 1
                key = f"order-{next_order}"
                next_order += 1
                open_orders.append((key, sku, quantity))
                yield make("allocation", key, {"delta": {"allocated": quantity}, "state": wrong,
                                               "context": {"sku": sku, "reservationId": f"res-{key[6:]}"}})
            elif name == "release_without_allocation":
                if allocated[sku] < 1:
                    continue
                allocated[sku] -= 1
                key = f"order-{next_order}"
                next_order += 1
                yield make("release", key, {"delta": {"allocated": -1}, "state": state(sku),
                                            "context": {"sku": sku, "reason": "order-cancelled"}})
            elif name == "validation_event_result":
                yield make("validation", "inventory", {
                    "result": "fail", "checks": {"allocated_le_onhand": True, "onhand_min": False},
                    "state": state(sku), "context": {"sku": sku}})
            elif name == "available_consistency":
                wrong = state(sku)
                wrong["available"] += 1
                yield make("projection", "inventory", {"state": wrong, "context": {"sku": sku}})
            else:  # a validation that reports over-allocation and says pass; a count corrects it
                lie = state(sku)
                lie["allocated"] = lie["onHand"] + 1
                lie["available"] = -1
                yield make("validation", "inventory", {
                    "result": "pass", "checks": {"allocated_le_onhand": True, "onhand_min": True},
                    "state": lie, "context": {"sku": sku}})
                if count < events:
                    yield make("projection", "inventory", {"state": state(sku), "context": {"sku": sku}})
            continue

        roll = rng.random()
        if open_orders and (roll < 0.40 or len(open_orders) >= MAX_OPEN):
            # release an open order: shipped (stock leaves), cancelled, or partly released
            at = rng.randrange(len(open_orders))
            key, sku, held = open_orders[at]
            how = rng.random()
            if how < 0.6:
                allocated[sku] -= held
                on_hand[sku] -= held
                delta: dict[str, int] = {"allocated": -held, "onHand": -held}
                reason, part = "order-shipped", held
            elif how < 0.9:
                allocated[sku] -= held
                delta = {"allocated": -held}
                reason, part = "order-cancelled", held
            else:
                part = 1 + rng.randrange(held)
                allocated[sku] -= part
                delta = {"allocated": -part}
                reason = "partly-cancelled"
            if part == held:
                open_orders[at] = open_orders[-1]
                open_orders.pop()
            else:
                open_orders[at] = (key, sku, held - part)
            yield make("release", key, {"delta": delta, "state": state(sku), "context": {"reason": reason}})
        elif roll < 0.80:
            sku = rng.choice(SKUS)
            quantity = 1 + rng.randrange(10)
            if on_hand[sku] - allocated[sku] < quantity:  # restock first: a delivery, then a count
                on_hand[sku] += rng.randrange(500, 1500)
                yield make("projection", "inventory", {"state": state(sku),
                                                       "context": {"sku": sku, "reason": "restock"}})
                if count >= events:
                    break
            allocated[sku] += quantity
            key = f"order-{next_order}"
            next_order += 1
            open_orders.append((key, sku, quantity))
            yield make("allocation", key, {"delta": {"allocated": quantity}, "state": state(sku),
                                           "context": {"sku": sku, "reservationId": f"res-{key[6:]}"}})
        elif roll < 0.90:
            sku = rng.choice(SKUS)
            on_hand[sku] += rng.randrange(0, 20)  # a count: small receipts since the last one
            yield make("projection", "inventory", {"state": state(sku), "context": {"sku": sku}})
        else:
            sku = rng.choice(SKUS)
            yield make("validation", "inventory", {
                "result": "pass", "checks": {"allocated_le_onhand": True, "onhand_min": True},
                "state": state(sku), "context": {"sku": sku}})
