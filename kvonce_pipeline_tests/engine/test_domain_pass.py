"""The generic pass: order, the engine's own rules, the machine's findings, the artifacts."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kvonce_pipeline.engine.domain import Domain, DomainEvent
from kvonce_pipeline.engine.domain_decode import read_domain_events
from kvonce_pipeline.engine.domain_pass import DomainFailure, DomainOptions, check_domain, time_order
from kvonce_pipeline.engine.errors import InputError

T0 = 1_767_225_600_000_000_000


def ev(i: int | None, kind: str | None, key: str | None, **fields: object) -> DomainEvent:
    return DomainEvent(None if i is None else T0 + i, kind, key, dict(fields), "t", "", "unknown", f"line {i}")


def _findings(result) -> list[tuple[str, str | None, int]]:
    return [(issue["type"], issue["key"], issue["eventIndex"]) for issue in result.report["issues"]]


def test_events_are_replayed_in_time_order(toy: Domain, tmp_path: Path) -> None:
    # the close is written first but happened after the open: no finding
    result = check_domain(toy, [ev(2, "close", "a", reason="x"), ev(1, "open", "a")], tmp_path)
    assert result.valid and _findings(result) == []
    lines = (tmp_path / "toy-events.ndjson").read_bytes().splitlines()
    assert [orjson.loads(line)["type"] for line in lines] == ["open", "close"]


def test_an_event_without_a_time_keeps_its_place() -> None:
    events = [ev(5, "open", "a"), ev(None, "open", "b"), ev(1, "open", "c")]
    assert [e.key for e in time_order(events)] == ["c", "a", "b"]


def test_the_engine_checks_every_event_before_the_machine(toy: Domain, tmp_path: Path) -> None:
    events = [ev(1, "open", "a"), ev(2, "explode", "a"), ev(3, None, "a"), ev(4, "open", None), ev(5, "open", ""),
              ev(None, "close", "a", reason="x"), ev(7, "close", "b"), ev(8, "open", "c", context="not an object")]
    result = check_domain(toy, events, tmp_path)
    found = _findings(result)
    assert ("unknown-event-type", "a", 1) in found
    assert ("missing-required-field", "a", 2) in found  # no type
    assert ("missing-required-field", None, 3) in found and ("missing-required-field", "", 4) in found
    assert ("missing-required-field", "a", 5) in found  # no timestamp
    assert ("missing-required-field", "b", 6) in found  # a close without its required reason
    assert ("invalid-field-type", "c", 7) in found
    # the machine saw the known types with keys: b was closed without being opened
    assert ("close-without-open", "b", 6) in found
    line = orjson.loads((tmp_path / "toy-events.ndjson").read_bytes().splitlines()[7])
    assert "context" not in line  # a wrongly typed field is dropped, and said so
    assert not result.valid and result.exit_code == 1


def test_findings_point_at_the_event(toy: Domain, tmp_path: Path) -> None:
    event = DomainEvent(T0, "close", "k", {"reason": "x"}, "a" * 32, "b" * 16, "svc", "span r0/s0/p3")
    issue = check_domain(toy, [event], tmp_path).report["issues"][0]
    assert issue == {"type": "close-without-open", "key": "k", "severity": "error", "message": "closed while not open",
                     "eventIndex": 0, "origin": "span r0/s0/p3", "traceId": "a" * 32, "spanId": "b" * 16}


def test_strict_disable_and_options(toy: Domain, tmp_path: Path) -> None:
    events = [ev(1, "open", "a"), ev(2, "open", "a")]  # open twice (warning), left open (warning)
    plain = check_domain(toy, events, tmp_path / "1")
    assert plain.valid and sorted(_findings(plain)) == [("left-open", "a", 1), ("open-twice", "a", 1)]
    strict = check_domain(toy, [ev(1, "open", "a"), ev(2, "open", "a")], tmp_path / "2",
                          options=DomainOptions(strict=True))
    assert not strict.valid and {i["severity"] for i in strict.report["issues"]} == {"error"}
    disabled = check_domain(toy, [ev(1, "open", "a"), ev(2, "open", "a")], tmp_path / "3",
                            options=DomainOptions(disabled=frozenset({"open-twice"})))
    assert _findings(disabled) == [("left-open", "a", 1)] and disabled.report["disabledRules"] == ["open-twice"]
    allowed = check_domain(toy, [ev(1, "open", "a")], tmp_path / "4",
                           options=DomainOptions(options={"allow_left_open": "true"}))
    assert _findings(allowed) == [] and allowed.report["options"] == {"allow_left_open": True}
    with pytest.raises(InputError, match="no-such-rule"):
        check_domain(toy, events, tmp_path / "5", options=DomainOptions(disabled=frozenset({"no-such-rule"})))


def test_a_machine_may_only_report_declared_rules(toy: Domain, tmp_path: Path) -> None:
    from dataclasses import replace

    class Rogue:
        def __init__(self, options):
            pass

        def observe(self, index, event, emit):
            emit("made-up", event.key, index, "?")

        def finish(self, emit):
            pass

        def projection(self):
            return {}

    with pytest.raises(DomainFailure, match="'toy' failed at event 0 \\(line 1\\).*made-up.*does not declare"):
        check_domain(replace(toy, machine=Rogue), [ev(1, "open", "a")], tmp_path)


def test_a_failing_machine_is_an_error_naming_the_event_and_nothing_vouches_for_the_run(
        toy: Domain, tmp_path: Path) -> None:
    from dataclasses import replace

    check_domain(toy, [ev(1, "open", "a")], tmp_path)  # an earlier, valid run in the folder
    assert (tmp_path / "toy-validation.json").exists()

    class Broken:
        def __init__(self, options):
            pass

        def observe(self, index, event, emit):
            if index == 1:
                raise ZeroDivisionError("division by zero")

        def finish(self, emit):
            pass

        def projection(self):
            return {"sum": 2**70}  # beyond 64 bits: written all the same

    with pytest.raises(DomainFailure, match="failed at event 1 \\(line 2\\): ZeroDivisionError"):
        check_domain(replace(toy, machine=Broken), [ev(1, "open", "a"), ev(2, "open", "b")], tmp_path)
    assert not (tmp_path / "toy-validation.json").exists() and not (tmp_path / "toy-summary.md").exists()
    result = check_domain(replace(toy, machine=Broken), [ev(1, "open", "a")], tmp_path / "big")
    assert result.valid
    assert orjson.loads((tmp_path / "big" / "toy-projection.json").read_bytes())["sum"] == 2**70


def test_the_artifacts(toy_project, toy: Domain, tmp_path: Path) -> None:
    read = read_domain_events(toy_project.sample, [toy])
    result = check_domain(toy, read.events["toy"], tmp_path, input_summary=read.summary("toy"))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["toy-events.ndjson", "toy-projection.json", "toy-state-sequence.json", "toy-summary.md",
                     "toy-validation.json"]
    states = orjson.loads((tmp_path / "toy-state-sequence.json").read_bytes())
    assert [s["index"] for s in states] == [0, 1, 2, 3]
    assert states[2]["state"] == {"open": False, "opens": 1, "closes": 1, "opened_at": 0}
    projection = orjson.loads((tmp_path / "toy-projection.json").read_bytes())
    assert projection["stats"]["byType"] == {"open": 2, "close": 2, "unknown": 0}
    assert projection["perKey"]["k2"] == {"open": False, "opens": 1, "closes": 1}
    report = orjson.loads((tmp_path / "toy-validation.json").read_bytes())
    assert report == result.report and report["schemaVersion"] == "toy-validation/v1"
    assert report["summary"]["input"]["format"] == "ndjson"
    summary = (tmp_path / "toy-summary.md").read_text()
    assert "**Verdict: valid**" in summary and "| open events | 2 |" in summary


def test_the_event_log_reads_back_as_the_same_events(toy: Domain, tmp_path: Path) -> None:
    """``<name>-events.ndjson`` is itself an event log of the domain: reading it gives the events."""
    events = [ev(3, "close", "a", reason="x"), ev(1, "open", "a", context={"k": [1, 2]})]
    check_domain(toy, events, tmp_path / "one")
    again = read_domain_events(tmp_path / "one" / "toy-events.ndjson", [toy]).events["toy"]
    check_domain(toy, again, tmp_path / "two")
    for name in ("toy-events.ndjson", "toy-state-sequence.json", "toy-projection.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_the_state_sequence_is_json_whatever_lands_on_a_flush(toy: Domain, tmp_path: Path, count: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer flushes every MiB of event log; a flush on the very last event once closed the
    array twice. Here every event is a flush (the threshold made tiny) and the files must still parse."""
    import kvonce_pipeline.engine.domain_pass as domain_pass

    monkeypatch.setattr(domain_pass, "FLUSH_BYTES", 1)
    events = [ev(i, "open" if i % 2 == 0 else "close", "a", **({} if i % 2 == 0 else {"reason": "x"}))
              for i in range(count)]
    check_domain(toy, events, tmp_path)
    states = orjson.loads((tmp_path / "toy-state-sequence.json").read_bytes())
    assert [entry["index"] for entry in states] == list(range(count))
    assert len((tmp_path / "toy-events.ndjson").read_bytes().splitlines()) == count
    unflushed = tmp_path / "unflushed"
    monkeypatch.setattr(domain_pass, "FLUSH_BYTES", 1 << 20)
    check_domain(toy, events, unflushed)
    for name in ("toy-state-sequence.json", "toy-events.ndjson"):
        assert (unflushed / name).read_bytes() == (tmp_path / name).read_bytes()
