"""Inventory through the engine, as users run it: the CLI, every input form, a mixed payload."""

from __future__ import annotations

from pathlib import Path

import orjson

from kvonce_pipeline.domains.inventory import domain
from kvonce_pipeline.engine.domain_decode import read_domain_events
from kvonce_pipeline.engine.domain_render import requests, write_trace
from kvonce_pipeline.engine.payload import PayloadRequest, check_payload

from ...conftest import SAMPLES as KVONCE_SAMPLES
from ...test_cli import kvonce
from .test_machine import CORPUS

SAMPLES = Path(domain.folder) / "samples"


def _strip_origin(path: Path) -> list[dict]:
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    for line in lines:
        line.pop("origin", None)
    return lines


def test_the_samples_give_the_earlier_tools_verdict_through_the_cli(tmp_path: Path) -> None:
    ndjson = kvonce("conformance", "--input", str(SAMPLES / "inventory-sample.ndjson"), "--domain", "inventory",
                    "--output-dir", str(tmp_path / "a"))
    assert ndjson.returncode == 0, ndjson.stderr
    assert "[inventory] valid: 4 events" in ndjson.stderr
    otlp = kvonce("conformance", "--input", str(SAMPLES / "inventory-otlp.json"), "--output-dir", str(tmp_path / "b"))
    assert otlp.returncode == 0, otlp.stderr  # found without --domain: the spans say inventory.event.*
    events = "inventory/inventory-events.ndjson"
    a, b = _strip_origin(tmp_path / "a" / events), _strip_origin(tmp_path / "b" / events)
    assert [(x["type"], x["key"], x.get("state"), x.get("delta")) for x in a] == \
        [(x["type"], x["key"], x.get("state"), x.get("delta")) for x in b]
    summary = orjson.loads((tmp_path / "b" / "trace-summary.json").read_bytes())
    assert [(d["key"], d["status"]) for d in summary["domains"]] == [("inventory", "valid")]
    assert not (tmp_path / "b" / "kvonce-validation.json").exists()


def test_the_corpus_through_the_engine_gives_the_machines_findings(tmp_path: Path) -> None:
    outcome = check_payload(PayloadRequest(SAMPLES / "violations.ndjson", tmp_path, domains=("inventory",)))
    (result,) = outcome.results
    assert [(i["eventIndex"], i["type"], i["key"]) for i in result.report["issues"]] == CORPUS
    assert outcome.exit_code == 1
    mismatch = next(i for i in result.report["issues"] if i["type"] == "state_delta_mismatch")
    assert mismatch["origin"] == "line 5" and mismatch["expected"] == {"onHand": 100, "allocated": 15}


def test_flattened_and_kvlist_attributes_read_the_same(tmp_path: Path) -> None:
    """SDKs cannot set map attributes: a service sends ``inventory.event.state.onHand`` and friends."""
    events = read_domain_events(SAMPLES / "violations.ndjson", [domain]).events["inventory"]
    kvlist = tmp_path / "kvlist.json"
    write_trace(domain, events, kvlist, "otlp-json")
    document = {"resourceSpans": [r for request in requests(domain, events) for r in request["resourceSpans"]]}
    for resource in document["resourceSpans"]:
        for span in resource["scopeSpans"][0]["spans"]:
            flat = []
            for attribute in span["attributes"]:
                value = attribute["value"]
                if attribute["key"] in ("inventory.event.state", "inventory.event.context") and "kvlistValue" in value:
                    flat += [{"key": f"{attribute['key']}.{item['key']}", "value": item["value"]}
                             for item in value["kvlistValue"]["values"]]
                else:
                    flat.append(attribute)
            span["attributes"] = flat
    flattened = tmp_path / "flat.json"
    flattened.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    for path in (kvlist, flattened):
        outcome = check_payload(PayloadRequest(path, tmp_path / path.stem))
        (result,) = outcome.results
        assert [(i["eventIndex"], i["type"], i["key"]) for i in result.report["issues"]] == CORPUS, path.name


def test_a_mixed_kvonce_and_inventory_payload(tmp_path: Path) -> None:
    document = orjson.loads((KVONCE_SAMPLES / "kvonce-otlp.json").read_bytes())
    document["resourceSpans"] += orjson.loads((SAMPLES / "inventory-otlp.json").read_bytes())["resourceSpans"]
    mixed = tmp_path / "mixed.json"
    mixed.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    done = kvonce("conformance", "--input", str(mixed), "--output-dir", str(tmp_path / "out"), "--strict")
    # --strict: KvOnce's sample has a duplicate-before-success warning, now an error; Inventory is valid
    assert done.returncode == 1, done.stderr
    assert "kvonce: INVALID: 7 events" in done.stderr and "[inventory] valid: 4 events" in done.stderr
    summary = orjson.loads((tmp_path / "out" / "trace-summary.json").read_bytes())
    assert [(d["key"], d["status"]) for d in summary["domains"]] == [("kvonce", "invalid"), ("inventory", "valid")]
    assert summary["domains"][1]["artifacts"]["validationPath"] == "inventory/inventory-validation.json"
    assert summary["aggregate"]["exitCode"] == 1
    text = (tmp_path / "out" / "trace-summary.md").read_text()
    assert "## KvOnce trace conformance" in text and "## Inventory trace conformance" in text
    kvonce_only = kvonce("conformance", "--input", str(mixed), "--domain", "kvonce", "--output-dir",
                         str(tmp_path / "k"))
    assert kvonce_only.returncode == 0 and not (tmp_path / "k" / "inventory").exists()


def test_onhand_min_through_the_cli(tmp_path: Path) -> None:
    done = kvonce("conformance", "--input", str(SAMPLES / "inventory-sample.ndjson"), "--domain", "inventory",
                  "--option", "onhand_min=60", "--output-dir", str(tmp_path))
    assert done.returncode == 1 and "onhand_min" in done.stderr
