"""One payload, several domains: which are checked, the worst exit code, the trace summary."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kvonce_pipeline.engine.domain import Domain, DomainEvent
from kvonce_pipeline.engine.domain_render import requests
from kvonce_pipeline.engine.payload import PayloadRequest, check_payload

from ..conftest import SAMPLES

T0 = 1_767_225_600_000_000_000
KVONCE_FILES = ["kvonce-events.ndjson", "kvonce-projection.json", "kvonce-summary.md", "kvonce-validation.json",
                "projected"]


def _toy_spans(toy: Domain, bad: bool = False) -> list[dict]:
    events = [DomainEvent(T0, "open", "t1", {}, "c" * 32, "d" * 16, "toy-svc"),
              DomainEvent(T0 + 1, "close", "t2" if bad else "t1", {"reason": "done"}, "c" * 32, "e" * 16, "toy-svc")]
    return [resource for request in requests(toy, events) for resource in request["resourceSpans"]]


def _mixed(toy: Domain, path: Path, bad: bool = False) -> Path:
    document = orjson.loads((SAMPLES / "kvonce-otlp.json").read_bytes())
    document["resourceSpans"] += _toy_spans(toy, bad)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))  # a document, as the sample is
    return path


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_kvonce_payload_is_checked_as_kvonce_only(toy: Domain, tmp_path: Path) -> None:
    outcome = check_payload(PayloadRequest(SAMPLES / "kvonce-otlp.json", tmp_path))
    assert [r.domain.name for r in outcome.results] == ["kvonce"] and outcome.exit_code == 0
    assert _names(tmp_path) == KVONCE_FILES + ["trace-summary.json", "trace-summary.md"]


def test_a_payload_of_another_domain_leaves_no_kvonce_report(toy: Domain, tmp_path: Path) -> None:
    path = tmp_path / "toy.json"
    path.write_bytes(orjson.dumps({"resourceSpans": _toy_spans(toy)}))
    out = tmp_path / "out"
    outcome = check_payload(PayloadRequest(path, out))
    assert [r.domain.name for r in outcome.results] == ["toy"] and outcome.exit_code == 0
    assert _names(out) == ["toy", "trace-summary.json", "trace-summary.md"]
    assert _names(out / "toy") == ["toy-events.ndjson", "toy-projection.json", "toy-state-sequence.json",
                                   "toy-summary.md", "toy-validation.json"]


def test_a_mixed_payload_checks_both_and_kvonce_bytes_do_not_change(toy: Domain, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    check_payload(PayloadRequest(SAMPLES / "kvonce-otlp.json", alone, domains=("kvonce",)))
    mixed = tmp_path / "mixed"
    outcome = check_payload(PayloadRequest(_mixed(toy, tmp_path / "mixed.json", bad=True), mixed))
    assert [r.domain.name for r in outcome.results] == ["kvonce", "toy"]
    assert [r.status for r in outcome.results] == ["valid", "invalid"] and outcome.exit_code == 1
    for name in ("kvonce-events.ndjson", "kvonce-projection.json", "projected/kvonce-state-sequence.json"):
        assert (alone / name).read_bytes() == (mixed / name).read_bytes(), name
    summary = orjson.loads((mixed / "trace-summary.json").read_bytes())
    assert summary["schemaVersion"] == "trace-summary/v1"
    toy_entry = summary["domains"][1]
    assert toy_entry["key"] == "toy" and toy_entry["label"] == "Toy" and toy_entry["status"] == "invalid"
    assert toy_entry["artifacts"]["validationPath"] == "toy/toy-validation.json"
    assert toy_entry["traceIds"] == ["c" * 32] and toy_entry["metrics"]["eventCount"] == 2
    assert toy_entry["issues"] == 2  # close-without-open t2, left-open t1
    assert summary["domains"][0]["artifacts"]["stateSequencePath"] == "projected/kvonce-state-sequence.json"
    aggregate = summary["aggregate"]
    assert aggregate["status"] == "invalid" and aggregate["exitCode"] == 1 and aggregate["domains"] == 2
    assert "c" * 32 in aggregate["traceIds"] and aggregate["issues"] == 3
    text = (mixed / "trace-summary.md").read_text()
    assert "## KvOnce trace conformance" in text and "## Toy trace conformance" in text
    assert "| Toy | invalid | 2 |" in text


def test_only_the_domains_asked_for(toy: Domain, tmp_path: Path) -> None:
    outcome = check_payload(PayloadRequest(_mixed(toy, tmp_path / "m.json"), tmp_path / "o", domains=("toy",)))
    assert [r.domain.name for r in outcome.results] == ["toy"]
    assert not (tmp_path / "o" / "kvonce-validation.json").exists()


def test_asking_for_a_domain_the_payload_lacks_is_an_unusable_input(toy: Domain, tmp_path: Path) -> None:
    outcome = check_payload(PayloadRequest(SAMPLES / "kvonce-otlp.json", tmp_path, domains=("toy",)))
    (result,) = outcome.results
    assert result.status == "error" and outcome.exit_code == 2 and "no Toy events" in str(result.error)
    report = orjson.loads((tmp_path / "toy" / "toy-validation.json").read_bytes())
    assert report["valid"] is False and "no Toy events" in report["inputError"]["message"]


def test_a_later_run_removes_what_an_earlier_run_left_for_another_domain(toy: Domain, tmp_path: Path) -> None:
    check_payload(PayloadRequest(_mixed(toy, tmp_path / "m.json"), tmp_path / "o"))
    assert (tmp_path / "o" / "toy" / "toy-validation.json").exists()
    check_payload(PayloadRequest(SAMPLES / "kvonce-otlp.json", tmp_path / "o"))
    assert not (tmp_path / "o" / "toy").exists()


def test_an_ndjson_log_is_kvonce_unless_told(toy_project, toy: Domain, tmp_path: Path) -> None:
    outcome = check_payload(PayloadRequest(SAMPLES / "kvonce-sample.ndjson", tmp_path / "a"))
    assert [r.domain.name for r in outcome.results] == ["kvonce"]
    outcome = check_payload(PayloadRequest(toy_project.sample, tmp_path / "b", domains=("toy",)))
    assert [r.domain.name for r in outcome.results] == ["toy"] and outcome.exit_code == 0


def test_disable_names_must_exist(toy: Domain, tmp_path: Path) -> None:
    from kvonce_pipeline.engine.errors import KvonceError

    with pytest.raises(KvonceError, match="no-such-rule"):
        check_payload(PayloadRequest(SAMPLES / "kvonce-otlp.json", tmp_path, disabled=frozenset({"no-such-rule"})))


def test_an_artifact_checked_again_in_its_own_folder_is_never_removed(toy: Domain, tmp_path: Path) -> None:
    """Checking ``toy/toy-events.ndjson`` as KvOnce into the same folder: the toy artifacts are stale
    for that run, but the input is the user's now and stays."""
    out = tmp_path / "out"
    check_payload(PayloadRequest(_mixed(toy, tmp_path / "m.json"), out))
    events = out / "toy" / "toy-events.ndjson"
    before = events.read_bytes()
    check_payload(PayloadRequest(events, out))  # NDJSON: read as KvOnce's (unusable for it, no matter)
    assert events.read_bytes() == before
    kvonce_events = out / "kvonce-events.ndjson"  # the same, the other way round (here: toy events again)
    before = kvonce_events.read_bytes()
    check_payload(PayloadRequest(kvonce_events, out, domains=("toy",)))
    assert kvonce_events.read_bytes() == before


def test_a_broken_span_of_one_domain_is_reported_not_dropped(toy: Domain, tmp_path: Path) -> None:
    """In a mixed payload, a KvOnce span that cannot be read is KvOnce's unusable input (exit 2),
    not "this payload has no KvOnce": only a plain absence of a domain's events leaves it out."""
    document = orjson.loads((SAMPLES / "kvonce-otlp.json").read_bytes())
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    next(a for a in span["attributes"] if a["key"] == "kvonce.event.type")["value"] = {"intValue": "5"}
    document["resourceSpans"] += _toy_spans(toy)
    path = tmp_path / "broken.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    outcome = check_payload(PayloadRequest(path, tmp_path / "o"))
    assert [(r.domain.name, r.status) for r in outcome.results] == [("kvonce", "error"), ("toy", "valid")]
    assert outcome.exit_code == 2 and "must be a string" in str(outcome.results[0].error)
    # and the other way round: a toy span that cannot be read, beside valid KvOnce spans
    document = orjson.loads((SAMPLES / "kvonce-otlp.json").read_bytes())
    spans = _toy_spans(toy)
    attributes = spans[0]["scopeSpans"][0]["spans"][0]["attributes"]  # an object as a key: no key at all
    next(a for a in attributes if a["key"] == "toy.event.key")["value"] = {"kvlistValue": {"values": []}}
    document["resourceSpans"] += spans
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    outcome = check_payload(PayloadRequest(path, tmp_path / "p"))
    assert [(r.domain.name, r.status) for r in outcome.results] == [("kvonce", "valid"), ("toy", "error")]
    assert outcome.exit_code == 2
