"""The verdict of a run (kvonce_pipeline.orchestration.run_verdict): the worst across its failed steps."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import orjson

from kvonce_pipeline.engine import registry
from kvonce_pipeline.orchestration.conformance.definitions import conformance_assets
from kvonce_pipeline.orchestration.domains.assets import build_domain_definitions
from kvonce_pipeline.orchestration.resources import KvonceSettings
from kvonce_pipeline.orchestration.run_verdict import run_verdict

from ..conftest import SAMPLES


def test_a_run_failing_in_several_steps_reports_its_worst_verdict(tmp_path: Path) -> None:
    """A mixed payload whose KvOnce part violates (1) while Inventory's step fails on its config (3)."""
    document = orjson.loads((SAMPLES / "kvonce-otlp.json").read_bytes().replace(b'"retry"', b'"success"', 1))
    inventory = Path(registry.get("inventory").folder) / "samples" / "inventory-otlp.json"
    document["resourceSpans"] += orjson.loads(inventory.read_bytes())["resourceSpans"]
    payload = tmp_path / "mixed.json"
    payload.write_bytes(orjson.dumps(document))
    defs = dg.Definitions.merge(
        dg.Definitions(assets=conformance_assets, resources={"kvonce": KvonceSettings(
            payload=str(payload), reports_dir=str(tmp_path / "reports"))}),
        build_domain_definitions())
    instance = dg.DagsterInstance.ephemeral()
    config = {"ops": {"inventory_conformance_pass": {"config": {"options": {"nope": "1"}}}}}
    result = defs.resolve_job_def("trace_conformance_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=config)
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    assert failed == {"kvonce_conformance_pass", "inventory_conformance_pass"}
    code, message = run_verdict(instance, "trace_conformance_job")
    assert code == 3 and message.startswith("step inventory_conformance_pass failed:") and "nope" in message
    # without the broken config the same payload's verdict is KvOnce's violation
    defs.resolve_job_def("trace_conformance_job").execute_in_process(instance=instance, raise_on_error=False)
    code, message = run_verdict(instance, "trace_conformance_job")
    assert code == 1 and message.startswith("4 violations in ") and "multiple-success" in message
