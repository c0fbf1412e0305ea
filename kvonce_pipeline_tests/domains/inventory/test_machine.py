"""The Inventory machine, driven directly (the engine's pass is tested with the engine).

``replay`` below does what the engine does around a machine, in the smallest form: order by time
(stable), skip events of unknown type or without a key (they keep their index), call ``observe`` and
``finish`` with an ``emit`` that records findings and returns ``None`` for disabled rules.
"""

from __future__ import annotations

import ast
import itertools
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvonce_pipeline.domains.inventory import InventoryMachine, domain, generate_events
from kvonce_pipeline.domains.inventory.machine import NO_SKU
from kvonce_pipeline.engine.domain import DomainEvent

SAMPLES = Path(domain.folder) / "samples"
SEVERITY = {rule.id: rule.severity for rule in domain.rules()}
FIELDS = {spec.name for spec in domain.definition.fields}


def event(kind: str | None, key: str | None, at: int, **fields: Any) -> DomainEvent:
    """An event at second ``at`` of 2025-10-10 (tests build them by hand)."""
    return DomainEvent(1_760_054_400_000_000_000 + at * 1_000_000_000, kind, key, fields)


def read_ndjson(path: Path) -> list[DomainEvent]:
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        raw = orjson.loads(line)
        ns = int(datetime.fromisoformat(raw["timestamp"]).timestamp()) * 1_000_000_000
        events.append(DomainEvent(ns, raw.get("type"), raw.get("key"),
                                  {name: raw[name] for name in FIELDS if name in raw}, raw.get("traceId", "")))
    return events


def replay(events: list[DomainEvent], options: dict[str, Any] | None = None,
           disabled: frozenset[str] = frozenset()) -> tuple[list[dict[str, Any]], list[Any], InventoryMachine]:
    """(findings, state per observed event (encoded as the engine would), the machine)."""
    machine = InventoryMachine(domain.options(options))
    findings: list[dict[str, Any]] = []
    states: list[Any] = []

    def emit(rule_id: str, key: str | None, index: int, message: str) -> dict[str, Any] | None:
        assert rule_id in SEVERITY, f"{rule_id} is not declared in domain.toml"
        if rule_id in disabled:
            return None
        finding = {"type": rule_id, "key": key, "eventIndex": index, "severity": SEVERITY[rule_id],
                   "message": message}
        findings.append(finding)
        return finding

    ordered = sorted(events, key=lambda e: e.time_unix_nano or 0)
    for index, one in enumerate(ordered):
        if one.type not in domain.definition.type_names or not one.key:
            continue
        states.append(msgspec.json.decode(msgspec.json.encode(machine.observe(index, one, emit))))
    machine.finish(emit)
    findings.sort(key=lambda f: (f["eventIndex"], f["type"]))
    return findings, states, machine


def triples(findings: list[dict[str, Any]]) -> list[tuple[int, str, str | None]]:
    return [(f["eventIndex"], f["type"], f["key"]) for f in findings]


# -- the sample: the earlier tool's verdict ---------------------------------------------------------

def test_sample_is_valid_with_no_finding_and_replays_per_sku():
    findings, states, machine = replay(read_ndjson(SAMPLES / "inventory-sample.ndjson"))
    assert findings == []
    # the unnamed stock, then SKU-1 (learnt from its first report), the release inherits SKU-1 from
    # its order, and the validation (no SKU) snapshots the unnamed stock
    assert states == [
        {"sku": NO_SKU, "onHand": 50, "allocated": 10, "available": 40},
        {"sku": "SKU-1", "onHand": 50, "allocated": 15, "available": 35},
        {"sku": "SKU-1", "onHand": 50, "allocated": 12, "available": 38},
        {"sku": NO_SKU, "onHand": 50, "allocated": 12, "available": 38},
    ]
    projection = machine.projection()
    assert projection["eventTypes"] == {"projection": 1, "allocation": 1, "release": 1, "validation": 1}
    assert projection["orders"]["order-1001"] == {
        "sku": "SKU-1", "allocations": 1, "releases": 1, "allocated": 5, "released": 3, "net": 2,
        "firstTimestamp": "2025-10-09T00:05:00.000Z", "lastTimestamp": "2025-10-09T00:10:00.000Z"}
    assert projection["validations"] == [{"eventIndex": 3, "timestamp": "2025-10-09T00:15:00.000Z",
                                          "key": "inventory", "sku": NO_SKU, "result": "pass",
                                          "falseChecks": []}]
    assert projection["firstTimestamp"] == "2025-10-09T00:00:00.000Z"
    assert projection["lastTimestamp"] == "2025-10-09T00:15:00.000Z"
    assert projection["stocks"]["SKU-1"]["events"] == 2
    orjson.dumps(projection)  # JSON values only


def _otlp_events(path: Path) -> list[DomainEvent]:
    """The OTLP sample read with the generic mapping (kvlists as objects): the engine's job, done
    minimally here to show the sample carries the same events as the NDJSON one."""
    def value(v: dict[str, Any]) -> Any:
        if "kvlistValue" in v:
            return {kv["key"]: value(kv["value"]) for kv in v["kvlistValue"]["values"]}
        if "intValue" in v:
            return int(v["intValue"])
        return next(iter(v.values()))

    out = []
    for resource in orjson.loads(path.read_bytes())["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                assert re.fullmatch(r"[0-9a-f]{32}", span["traceId"])
                assert re.fullmatch(r"[0-9a-f]{16}", span["spanId"])
                attrs = {a["key"]: value(a["value"]) for a in span["attributes"]}
                fields = {name[len(domain.definition.prefix):]: v for name, v in attrs.items()
                          if name[len(domain.definition.prefix):] in FIELDS}
                out.append(DomainEvent(int(span["startTimeUnixNano"]), attrs["inventory.event.type"],
                                       attrs["inventory.event.key"], fields))
    return out


def test_otlp_sample_carries_the_ndjson_sample():
    otlp = _otlp_events(SAMPLES / "inventory-otlp.json")
    ndjson = read_ndjson(SAMPLES / "inventory-sample.ndjson")
    assert [(e.time_unix_nano, e.type, e.key, e.fields) for e in otlp] == \
        [(e.time_unix_nano, e.type, e.key, e.fields) for e in ndjson]
    assert domain.definition.samples == ("samples/inventory-sample.ndjson", "samples/inventory-otlp.json")
    assert all(path.is_file() for path in domain.sample_paths())


# -- the corpus: every rule where it should fire -----------------------------------------------------

#: samples/violations.ndjson, line by line (0-based = event index; the file is in time order):
#:  0 SKU-A counted 100/0/100 (baseline)           1 SKU-B counted 10/0/10 (baseline)
#:  2 order-1 allocates 5 of A, consistent          3 order-2 allocates 4 of B, consistent (B apart from A)
#:  4 order-3 allocates 10 of A but reports 16 allocated (replay: 15)        -> state_delta_mismatch
#:  5 order-1 releases 5 (no SKU: A from its order), reports 10 = 15 - 5: the replay kept 15, no cascade
#:  6 order-99 releases 2 of B, never allocated     -> release_without_allocation, order_net_negative,
#:                                                     order_released_gt_allocated
#:  7 order-4 releases 1 of B before its allocation at line 8               -> release_before_allocation
#:  9 SKU-A counted 100/10 with available 95        -> available_consistency
#: 10 order-5 allocates 8 of B: 12 allocated > 10 on hand                   -> allocated_le_onhand
#: 11 validation of B says pass, allocated_le_onhand true, while B is 12/10 -> validation_pass_contradicted
#: 12 validation of A says fail with onhand_min false -> validation_event_result, validation_event_failure
#: 13 SKU-C counted with only allocated -> allocated_le_onhand:data_missing, onhand_min:data_missing
#: 14 order-6 allocates with delta {"qty": 2} (no number) -> state_delta_mismatch:data_missing, and A's
#:    allocated is unknown -> allocated_le_onhand:data_missing
#: 15 SKU-A counted 90/12 (known again)            16 SKU-D counted 5/0 (onhand_min=10 catches it)
#: 17 order-2 ships 4 of B, onHand 10 - 12 = -2     -> onhand_min (B stays over-allocated: no new finding)
#: 18 order-7 allocates 2 of A but reports 20 (replay: 14): the service's books jump -> state_delta_mismatch
#: 19 order-8 allocates 1, reports 21 = 20 + 1: consistent with the service's books, no second finding
#: 20 order-7 releases 2, reports 19; 21 order-8 allocates a bare 1, reports 20: consistent
#: 22 validation of B says pass with a tidy state 20/8, while the replay before it is -2/8 (over-allocated
#:    and below the minimum)                          -> validation_pass_contradicted (both invariants)
CORPUS = [
    (4, "state_delta_mismatch", "order-3"),
    (6, "order_net_negative", "order-99"),
    (6, "order_released_gt_allocated", "order-99"),
    (6, "release_without_allocation", "order-99"),
    (7, "release_before_allocation", "order-4"),
    (9, "available_consistency", "inventory"),
    (10, "allocated_le_onhand", "order-5"),
    (11, "validation_pass_contradicted", "inventory"),
    (12, "validation_event_failure", "inventory"),
    (12, "validation_event_result", "inventory"),
    (13, "allocated_le_onhand:data_missing", "inventory"),
    (13, "onhand_min:data_missing", "inventory"),
    (14, "allocated_le_onhand:data_missing", "order-6"),
    (14, "state_delta_mismatch:data_missing", "order-6"),
    (17, "onhand_min", "order-2"),
    (18, "state_delta_mismatch", "order-7"),
    (22, "validation_pass_contradicted", "inventory"),
]


def test_corpus_fires_each_rule_exactly_where_expected():
    findings, states, _ = replay(read_ndjson(SAMPLES / "violations.ndjson"))
    assert triples(findings) == CORPUS
    # every rule the domain declares fires somewhere in the corpus (onhand_min included)
    assert {rule.id for rule in domain.definition.rules} == {rule for _, rule, _ in CORPUS}
    by_index = {(f["eventIndex"], f["type"]): f for f in findings}
    mismatch = by_index[(4, "state_delta_mismatch")]
    assert mismatch["sku"] == "SKU-A"
    assert mismatch["expected"] == {"onHand": 100, "allocated": 15}
    assert mismatch["reported"] == {"onHand": 100, "allocated": 16}
    assert by_index[(11, "validation_pass_contradicted")]["broken"] == ["allocated_le_onhand"]
    assert by_index[(22, "validation_pass_contradicted")]["broken"] == ["allocated_le_onhand", "onhand_min"]
    assert states[22] == {"sku": "SKU-B", "onHand": 20, "allocated": 8, "available": 12}  # then taken in
    # the state sequence shows the replay, not the wrong report
    assert states[4] == {"sku": "SKU-A", "onHand": 100, "allocated": 15, "available": 85}
    assert states[5] == {"sku": "SKU-A", "onHand": 100, "allocated": 10, "available": 90}
    # after the jump at 18 the replay follows the service's books
    assert states[19] == {"sku": "SKU-A", "onHand": 90, "allocated": 21, "available": 69}
    assert states[21] == {"sku": "SKU-A", "onHand": 90, "allocated": 20, "available": 70}


def test_onhand_min_option():
    findings, _, machine = replay(read_ndjson(SAMPLES / "violations.ndjson"), {"onhand_min": 10})
    assert machine.onhand_min == 10
    assert [t for t in triples(findings) if t[1] == "onhand_min"] == [
        (16, "onhand_min", "inventory"),  # SKU-D: 5 < 10
        (17, "onhand_min", "order-2"),    # SKU-B: -2 < 10 (it was exactly 10 before: not below)
    ]
    findings, _, _ = replay(read_ndjson(SAMPLES / "violations.ndjson"), {"onhand_min": "-5"})
    assert [t for t in triples(findings) if t[1] == "onhand_min"] == []


def test_disabled_rule_returns_none_and_the_machine_goes_on():
    findings, _, _ = replay(read_ndjson(SAMPLES / "violations.ndjson"),
                            disabled=frozenset({"state_delta_mismatch", "validation_pass_contradicted"}))
    assert triples(findings) == [t for t in CORPUS
                                 if t[1] not in ("state_delta_mismatch", "validation_pass_contradicted")]


# -- the replay's properties ----------------------------------------------------------------------

def test_two_skus_do_not_mix():
    events = [
        event("projection", "inventory", 0, state={"onHand": 10, "allocated": 0, "available": 10},
              context={"sku": "A"}),
        event("projection", "inventory", 1, state={"onHand": 500, "allocated": 100, "available": 400},
              context={"sku": "B"}),
        event("allocation", "order-1", 2, delta={"allocated": 4}, context={"sku": "A"},
              state={"onHand": 10, "allocated": 4, "available": 6}),
        event("allocation", "order-2", 3, delta={"allocated": 50}, context={"sku": "B"},
              state={"onHand": 500, "allocated": 150, "available": 350}),
        event("release", "order-1", 4, delta=-4, state={"onHand": 10, "allocated": 0, "available": 10}),
    ]
    findings, states, machine = replay(events)
    assert findings == []
    assert [s["sku"] for s in states] == ["A", "B", "A", "B", "A"]
    stocks = machine.projection()["stocks"]
    assert (stocks["A"]["allocated"], stocks["B"]["allocated"]) == (0, 150)
    assert NO_SKU not in stocks
    # one global stock (the earlier tool) would see 4 + 50 added to 100 and mismatch: prove the
    # check would fire if the SKUs were mixed, by naming the same SKU
    mixed = [msgspec.structs.replace(e, fields={**e.fields, "context": {"sku": "A"}}) for e in events]
    assert "state_delta_mismatch" in {f["type"] for f in replay(mixed)[0]}


def test_a_wrong_snapshot_is_one_finding_not_a_cascade():
    events = [event("projection", "inventory", 0, state={"onHand": 1000, "allocated": 0, "available": 1000})]
    allocated = 0
    for n in range(1, 40):
        allocated += 2
        reported = allocated + 7 if n == 5 else allocated  # one wrong report at event 5
        events.append(event("allocation", f"order-{n}", n, delta={"allocated": 2},
                            state={"onHand": 1000, "allocated": reported, "available": 1000 - reported}))
    findings, _, _ = replay(events)
    assert triples(findings) == [(5, "state_delta_mismatch", "order-5")]


def test_a_jump_in_the_books_is_one_finding_not_a_cascade():
    events = [event("projection", "inventory", 0, state={"onHand": 1000, "allocated": 0, "available": 1000})]
    allocated = 0
    for n in range(1, 40):
        allocated += 2 + (7 if n == 5 else 0)  # the service's books jump at event 5 and stay so
        events.append(event("allocation", f"order-{n}", n, delta={"allocated": 2},
                            state={"onHand": 1000, "allocated": allocated, "available": 1000 - allocated}))
    findings, states, _ = replay(events)
    assert triples(findings) == [(5, "state_delta_mismatch", "order-5")]
    assert states[-1]["allocated"] == allocated


def test_two_faults_are_two_findings():
    events = [event("projection", "inventory", 0, state={"onHand": 1000, "allocated": 0, "available": 1000})]
    for n, reported in enumerate([2, 9, 16, 8], start=1):  # replay: 2, 4, 6, 8; 9 and 16 disagree with both
        events.append(event("allocation", f"order-{n}", n, delta=2,
                            state={"onHand": 1000, "allocated": reported}))
    findings, _, _ = replay(events)
    assert triples(findings) == [(2, "state_delta_mismatch", "order-2"), (3, "state_delta_mismatch", "order-3")]


def test_an_invariant_broken_for_long_is_one_finding_until_it_recovers():
    events = [event("projection", "inventory", 0, state={"onHand": 5, "allocated": 0})]
    events += [event("allocation", f"order-{n}", n, delta=3) for n in range(1, 6)]  # 3 ok, then 6..15 > 5
    events.append(event("projection", "inventory", 6, state={"onHand": 100, "allocated": 15}))  # restocked
    events.append(event("allocation", "order-7", 7, delta=90))  # 105 > 100 again
    findings, states, _ = replay(events)
    assert triples(findings) == [(2, "allocated_le_onhand", "order-2"), (7, "allocated_le_onhand", "order-7")]
    assert states[5] == {"sku": NO_SKU, "onHand": 5, "allocated": 15, "available": -10}


def test_partial_data_gives_data_missing_warnings_never_an_exception():
    events = [
        event("allocation", "order-1", 0, delta={"allocated": 5}),                  # stock unknown
        event("allocation", "order-2", 1, delta={"allocated": 1}),                  # still unknown: no repeat
        event("projection", "inventory", 2, state={"onHand": 20}),                  # allocated still unknown
        event("projection", "inventory", 3, state={"onHand": 20, "available": 14}),  # two give the third
        event("allocation", "order-3", 4),                                          # no delta (engine reports)
        event("release", "order-3", 5, delta={"allocated": "3"}, state={}),         # no usable number
        event("projection", "inventory", 6, state={"onHand": True, "allocated": None, "available": 1.5}),
        event("validation", "inventory", 7, result="pass"),                         # no checks, no state
        event("validation", "inventory", 8, checks={"x": "yes"}, state="not an object"),
        event("projection", "inventory", 9, state={"onHand": 20.5, "allocated": 4.25}),
        event("allocation", "order-4", 10, delta={"onHand": -0.5}, context={"sku": None}),
        event("allocation", "order-5", 11, delta=1.5, context="SKU-X"),
        event("release", "order-5", 12, delta={"allocated": -1.5}, context={"sku": 7},
              state={"onHand": 3}),
    ]
    findings, states, machine = replay(events)
    assert triples(findings) == [
        (0, "allocated_le_onhand:data_missing", "order-1"),
        (0, "onhand_min:data_missing", "order-1"),
        (4, "allocated_le_onhand:data_missing", "order-3"),
        (5, "state_delta_mismatch:data_missing", "order-3"),
        (12, "allocated_le_onhand:data_missing", "order-5"),  # a new stock: onHand learnt, allocated not
    ]
    assert states[3] == {"sku": NO_SKU, "onHand": 20, "allocated": 6, "available": 14}
    assert states[10] == {"sku": NO_SKU, "onHand": 20.0, "allocated": 4.25, "available": 15.75}
    assert states[12] == {"sku": "7", "onHand": 3, "allocated": None, "available": None}  # numeric SKU as text
    orjson.dumps(machine.projection())


def test_a_mismatch_still_learns_the_numbers_the_replay_did_not_know():
    events = [event("projection", "inventory", 0, state={"allocated": 3}),            # onHand unknown
              event("allocation", "order-1", 1, delta=2, state={"onHand": 10, "allocated": 9}),  # 5 expected
              event("allocation", "order-2", 2, delta=1, state={"onHand": 10, "allocated": 6})]
    findings, states, _ = replay(events)
    assert triples(findings) == [(0, "allocated_le_onhand:data_missing", "inventory"),
                                 (0, "onhand_min:data_missing", "inventory"),
                                 (1, "state_delta_mismatch", "order-1")]
    assert states[1] == {"sku": NO_SKU, "onHand": 10, "allocated": 5, "available": 5}
    assert states[2] == {"sku": NO_SKU, "onHand": 10, "allocated": 6, "available": 4}


def test_unusable_delta_with_a_state_takes_the_state():
    events = [event("projection", "inventory", 0, state={"onHand": 9, "allocated": 1}),
              event("allocation", "order-1", 1, delta={"qty": 3}, state={"onHand": 9, "allocated": 4})]
    findings, states, _ = replay(events)
    assert triples(findings) == [(1, "state_delta_mismatch:data_missing", "order-1")]
    assert states[1] == {"sku": NO_SKU, "onHand": 9, "allocated": 4, "available": 5}


def test_a_validation_admitting_a_false_check_is_not_a_lie_about_it():
    events = [event("projection", "inventory", 0, state={"onHand": 1, "allocated": 3}),
              event("validation", "inventory", 1, result="pass", checks={"allocated_le_onhand": False}),
              event("validation", "inventory", 2, result="fail", checks={"allocated_le_onhand": True}),
              event("validation", "inventory", 3, result="fail", checks={})]
    findings, _, _ = replay(events)
    assert triples(findings) == [
        (0, "allocated_le_onhand", "inventory"),
        (1, "validation_event_failure", "inventory"),
        (2, "validation_event_result", "inventory"),
        (2, "validation_pass_contradicted", "inventory"),  # it says the check holds
        (3, "validation_event_result", "inventory"),
    ]


# -- the definition and the machine agree ---------------------------------------------------------

def test_every_rule_the_machine_emits_is_declared_and_every_declared_rule_is_emitted():
    source = (Path(domain.folder) / "machine.py").read_text(encoding="utf-8")
    emitted = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("emit",) and node.args:
            first = node.args[0]
            assert isinstance(first, ast.Constant), f"emit with a computed rule id at line {node.lineno}"
            emitted.add(first.value)
    assert emitted == {rule.id for rule in domain.definition.rules}
    assert domain.definition.name == "inventory" and domain.definition.prefix == "inventory.event."
    assert domain.definition.schema_version == "inventory-validation/v1"
    assert {t.name: t.required for t in domain.definition.types} == {
        "projection": ("state",), "allocation": ("delta",), "release": ("delta",),
        "validation": ("state", "result", "checks")}
    assert next(f for f in domain.definition.fields if f.name == "delta").json == ("object", "number")
    assert domain.options() == {"onhand_min": 0}


def test_registered_as_an_entry_point():
    from kvonce_pipeline.engine import registry

    assert registry.installed()["inventory"] is domain


# -- the generator --------------------------------------------------------------------------------

def _encode(events: list[DomainEvent]) -> bytes:
    return msgspec.json.encode(events)


def test_generate_is_deterministic_and_in_time_order():
    first = list(generate_events(3000, seed=7, violations=0.05))
    assert len(first) == 3000
    assert _encode(first) == _encode(list(generate_events(3000, seed=7, violations=0.05)))
    assert _encode(first) != _encode(list(generate_events(3000, seed=8, violations=0.05)))
    times = [e.time_unix_nano for e in first]
    assert all(a < b for a, b in itertools.pairwise(times))
    assert {e.type for e in first} == set(domain.definition.type_names)
    assert list(generate_events(0)) == []
    assert len(list(generate_events(5))) == 5


def test_generate_without_violations_is_valid_and_with_them_shows_each_fault():
    findings, _, machine = replay(list(generate_events(20_000, seed=3)))
    assert findings == []
    projection = machine.projection()
    assert len(projection["stocks"]) == 12 and NO_SKU not in projection["stocks"]
    assert all(order["sku"] for order in projection["orders"].values())
    findings, _, _ = replay(list(generate_events(20_000, seed=3, violations=0.01)))
    fired = {f["type"] for f in findings}
    assert {"state_delta_mismatch", "release_without_allocation", "validation_event_result",
            "validation_event_failure", "available_consistency", "allocated_le_onhand",
            "validation_pass_contradicted"} <= fired
    # one finding per injected wrong snapshot: no cascades over 20,000 events
    mismatches = sum(1 for f in findings if f["type"] == "state_delta_mismatch")
    assert 0 < mismatches <= 20_000 * 0.01 / 5 * 2


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError):
        list(generate_events(-1))
    with pytest.raises(ValueError):
        list(generate_events(10, violations=2.0))


def test_generated_valid_trace_replays_to_exactly_the_reported_states():
    """The replay's arithmetic against the generator's bookkeeping: with no violations every state
    the service reports is the state the replay computes (releases name no SKU: inherited)."""
    events = list(generate_events(5000, seed=11))
    _, states, _ = replay(events)
    assert len(states) == len(events)
    for one, state in zip(events, states):
        reported = one.fields["state"]
        assert {k: state[k] for k in ("onHand", "allocated", "available")} == reported
        if "context" in one.fields and "sku" in one.fields["context"]:
            assert state["sku"] == one.fields["context"]["sku"]


# -- any input: warnings or findings, never an exception --------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
_number = st.integers(-50, 50) | st.floats(-50, 50, allow_nan=False)
_stock = st.fixed_dictionaries({}, optional={"onHand": _number | _json, "allocated": _number | _json,
                                             "available": _number | _json})
_fields = st.fixed_dictionaries({}, optional={
    # what the engine lets through: each field of an allowed JSON type, its contents anything
    "state": _stock | st.dictionaries(st.text(max_size=5), _json, max_size=3),
    "delta": _number | st.fixed_dictionaries({}, optional={"allocated": _number | _json,
                                                           "onHand": _number | _json}),
    "context": st.fixed_dictionaries({}, optional={"sku": st.sampled_from(["A", "B", 3, None, True]),
                                                   "reason": _json}),
    "result": st.sampled_from(["pass", "fail", "PASS", ""]),
    "checks": st.dictionaries(st.sampled_from(["allocated_le_onhand", "onhand_min", "available_consistency",
                                               "x"]), st.booleans() | _json, max_size=4),
})
_events = st.lists(st.tuples(st.sampled_from(domain.definition.type_names),
                             st.sampled_from(["inventory", "order-1", "order-2", "order-3"]),
                             st.integers(0, 30), _fields), max_size=25)


@settings(max_examples=200, deadline=None)
@given(_events, st.sampled_from([0, 5, -1.5]))
def test_any_well_typed_events_replay_without_an_exception(raw, minimum):
    events = [event(kind, key, at, **fields) for kind, key, at, fields in raw]
    findings, states, machine = replay(events, {"onhand_min": minimum})
    assert len(states) == len(events)
    assert all(f["type"] in SEVERITY and isinstance(f["eventIndex"], int) for f in findings)
    msgspec.json.encode(machine.projection())
    # one finding per (rule, event) at most (no cascade within an event), each at a real event
    assert len({(f["type"], f["eventIndex"]) for f in findings}) == len(findings)
    assert all(0 <= f["eventIndex"] < len(events) for f in findings)
