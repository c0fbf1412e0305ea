"""The mock KvOnce service: real SDK spans, real OTLP/HTTP export, a payload the pipeline accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline import cli
from kvonce_pipeline.engine.errors import KvonceError
from kvonce_pipeline.devtools.mock_service import EXPECTED_EVENTS, MockKvOnceStore, Put, generate_payload, run_scenario
from kvonce_pipeline.collector.receiver import Receiver, ReceiverConfig

from ..s3_server import BUCKET
from ..collector.test_collector import PAYLOAD_NAME, conformance_events, payload_files, spans_in


def _event_tuples(events: list[dict]) -> list[tuple]:
    return [(e["type"], e["key"], e.get("value"), e.get("reason"), e.get("context")) for e in events]


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_generate_payload_is_a_valid_run_with_the_scenario_events(tmp_path: Path, gzip: bool) -> None:
    payload = generate_payload(tmp_path / "mock", gzip=gzip)
    assert payload.parent == tmp_path / "mock" and PAYLOAD_NAME.match(payload.name)
    code, events = conformance_events(payload, tmp_path / "out")
    assert code == 0
    assert _event_tuples(events) == [tuple(expected) for expected in EXPECTED_EVENTS]
    assert {e["actor"] for e in events} == {"kvonce-mock-service"}
    report = json.loads((tmp_path / "out" / "kvonce-validation.json").read_text())
    assert (report["summary"]["errors"], report["summary"]["warnings"]) == (0, 0)
    # the kvonce.put parent spans travel too: stored, and skipped by the reader as non-events
    assert report["summary"]["input"]["skippedSpans"] == 4


def test_kvonce_mock_prints_the_payload_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mock", "--drop-dir", str(tmp_path / "drops")]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.is_file() and payload_files(tmp_path / "drops") == [printed]


def test_kvonce_mock_uploads_the_payload_to_a_bucket_prefix(s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A drop folder in a bucket: one object, named as a local run names its file, the scenario's
    events in it; no local ``s3:`` folder appears."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["mock", "--drop-dir", f"s3://{BUCKET}/mock-drops/"]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith(f"s3://{BUCKET}/mock-drops/") and PAYLOAD_NAME.fullmatch(url.rsplit("/", 1)[1])
    local = tmp_path / "payload.pb"
    local.write_bytes(s3.cat_file(url.removeprefix("s3://")))
    code, events = conformance_events(local, tmp_path / "out")
    assert code == 0 and _event_tuples(events) == [tuple(expected) for expected in EXPECTED_EVENTS]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "payload.pb"], "no local s3: folder"


def test_kvonce_mock_sends_to_a_running_collector_with_the_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Receiver(ReceiverConfig(drop_dir=tmp_path / "drops", port=0, flush_seconds=3600, token="t0k")) as receiver:
        assert cli.main(["mock", "--endpoint", receiver.endpoint, "--gzip"]) == 2  # no token: 401
        monkeypatch.setenv("KVONCE_COLLECTOR_TOKEN", "t0k")
        assert cli.main(["mock", "--endpoint", receiver.endpoint, "--gzip"]) == 0
    assert receiver.refused == {401: 1}
    assert spans_in(payload_files(tmp_path / "drops")) == len(EXPECTED_EVENTS) + 4


def test_run_scenario_fails_loudly_when_nothing_listens(tmp_path: Path) -> None:
    receiver = Receiver(ReceiverConfig(drop_dir=tmp_path, port=0)).start()
    endpoint = receiver.endpoint
    receiver.stop()  # the port is closed now: connection refused
    with pytest.raises(KvonceError, match="did not accept the spans"):
        run_scenario(endpoint, timeout=2)


def test_the_store_never_retries_past_max_retries() -> None:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    store = MockKvOnceStore(provider.get_tracer("test"), max_retries=3)
    with pytest.raises(TimeoutError):
        store.put(Put("k", "v", transient_failures=5))
    kinds = [span.attributes.get("kvonce.event.type") for span in memory.get_finished_spans()]
    assert kinds.count("retry") == 3 and "success" not in kinds


def test_pipeline_falls_back_to_the_mock_service_without_a_sample(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kvonce_pipeline.orchestration.resources import KvonceSettings

    monkeypatch.setattr(artifacts, "BUNDLED_SAMPLE", tmp_path / "no-such-sample.json")
    payload = KvonceSettings(reports_dir=str(tmp_path / "reports")).resolve_payload()
    assert payload.parent == tmp_path / "reports" / "mock" and PAYLOAD_NAME.match(payload.name)
    assert conformance_events(payload, tmp_path / "out")[0] == 0


def test_the_mock_service_speaks_another_domain_through_the_sdk(tmp_path: Path) -> None:
    """``kvonce mock --domain inventory``: the domain's generated events as real SDK spans (object fields
    flattened into ``inventory.event.state.onHand`` and friends, as SDK attributes must be), through
    the real exporter and receiver; the payload checks valid and carries every event."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from kvonce_pipeline.domains.inventory import domain
    from kvonce_pipeline.engine.domain_decode import read_domain_events

    path = generate_payload(tmp_path / "drops", domain=domain, events=50)
    message = ExportTraceServiceRequest.FromString(path.read_bytes())
    names = {kv.key for rs in message.resource_spans for ss in rs.scope_spans for span in ss.spans
             for kv in span.attributes}
    assert {"inventory.event.type", "inventory.event.key", "inventory.event.state.onHand",
            "inventory.event.context.sku"} <= names
    assert spans_in([path]) == 50
    expected = list(domain.generate(50, seed=1))  # type: ignore[misc]
    read = read_domain_events(path, [domain]).events["inventory"]
    assert [(e.time_unix_nano, e.type, e.key, e.fields) for e in read] == \
        [(e.time_unix_nano, e.type, e.key, e.fields) for e in expected]
    assert cli.main(["conformance", "--input", str(path), "--output-dir", str(tmp_path / "out")]) == 0
