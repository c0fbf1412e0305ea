"""The projection keeps the earlier tool's fields and stays linear in events."""

from __future__ import annotations

from pathlib import Path

import orjson

from kvonce_pipeline.domains.kvonce.own_pass.conformance import run_conformance


def test_seed_sample_projection(sample_ndjson: Path, tmp_path: Path) -> None:
    run_conformance(sample_ndjson, tmp_path)
    projection = orjson.loads((tmp_path / "kvonce-projection.json").read_bytes())
    assert projection["schemaVersion"] == "kvonce/v1"
    assert projection["eventCount"] == 4
    beta = projection["perKey"]["beta"]
    assert beta["successCount"] == 1 and beta["retries"] == 1
    assert beta["failureReasons"] == ["duplicate"]
    assert beta["value"] == "v2"
    assert beta["firstTimestamp"] == "2025-10-04T06:00:02.000Z"
    assert beta["lastTimestamp"] == "2025-10-04T06:00:04.000Z"
    assert set(beta) >= {"retryContexts", "successContexts", "failureContexts"}
    stats = projection["stats"]
    assert stats["totalEvents"] == 4 and stats["uniqueKeys"] == 2
    assert stats["byType"] == {"success": 2, "retry": 1, "failure": 1, "unknown": 0}
    assert (stats["keysWithSuccess"], stats["keysWithRetries"], stats["keysWithFailures"]) == (2, 1, 1)
    assert stats["duplicateFailureKeys"] == 1
    assert stats["successRate"] == 0.5
    assert projection["outputs"]["stateSequence"] == "projected/kvonce-state-sequence.json"


def test_state_sequence_holds_only_the_touched_key(sample_otlp: Path, tmp_path: Path) -> None:
    run_conformance(sample_otlp, tmp_path)
    steps = orjson.loads((tmp_path / "projected" / "kvonce-state-sequence.json").read_bytes())
    assert [s["index"] for s in steps] == list(range(7))
    assert all(set(s) == {"index", "timestamp", "type", "key", "state", "totals"} for s in steps)
    beta_success = steps[4]
    assert beta_success["key"] == "beta"
    assert beta_success["state"] == {"written": True, "value": "v2", "retries": 2, "failures": 1,
                                     "lastFailureReason": "duplicate",
                                     "lastSuccessAt": "2025-10-04T06:00:04.000Z"}
    assert beta_success["totals"] == {"events": 5, "success": 2, "retry": 2, "failure": 1, "unknown": 0,
                                      "writtenKeys": 2}


def test_state_sequence_size_is_linear_in_events(tmp_path: Path) -> None:
    # 6,000 events over 3,000 keys: the earlier tool's per-event store copy would write ~9M key states
    lines = []
    for k in range(3000):
        lines.append(orjson.dumps({"timestamp": f"2025-10-04T06:00:{k % 60:02d}.000Z", "type": "success",
                                   "key": f"key-{k:05d}", "value": "v"}))
        lines.append(orjson.dumps({"timestamp": f"2025-10-04T06:01:{k % 60:02d}.000Z", "type": "failure",
                                   "key": f"key-{k:05d}", "reason": "duplicate"}))
    source = tmp_path / "many.ndjson"
    source.write_bytes(b"\n".join(lines))
    out = tmp_path / "out"
    result = run_conformance(source, out)
    assert result.valid
    size = (out / "projected" / "kvonce-state-sequence.json").stat().st_size
    assert size < 6000 * 400, f"{size} bytes for 6,000 events: not linear"
