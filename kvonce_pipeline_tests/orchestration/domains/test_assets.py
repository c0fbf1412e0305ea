"""Every generic domain's asset group (kvonce_pipeline.orchestration.domains), proven with the
template-made ``toy`` domain on a real ephemeral instance, and the CI command as a real subprocess."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import dagster as dg
import orjson
import pandas as pd
import pytest

from kvonce_pipeline.definitions import defs
from kvonce_pipeline.orchestration.conformance.definitions import conformance_assets
from kvonce_pipeline.engine import registry
from kvonce_pipeline.engine.domain import Domain, DomainEvent
from kvonce_pipeline.engine.domain_render import requests, write_trace
from kvonce_pipeline.engine.payload import PayloadRequest, check_payload
from kvonce_pipeline.orchestration.domains import assets as domain_assets
from kvonce_pipeline.orchestration.domains.assets import build_domain_definitions
from kvonce_pipeline.orchestration.resources import KvonceSettings
from kvonce_pipeline.domains.kvonce.schemas import check_frame

from ...conftest import SAMPLES, VENV_BIN
from ...toy_domain import ToyProject

T0 = 1_767_225_600_000_000_000
TOY_ASSETS = ["toy_events", "toy_projection", "toy_validation"]
KVONCE_ASSETS = ["collected_kvonce_otlp", "kvonce_events", "kvonce_projection", "kvonce_validation"]


def _toy_events(bad: bool = False) -> list[DomainEvent]:
    """An open and a close of ``t1``; ``bad``: the close is of ``t2``, never opened (an error)."""
    return [DomainEvent(T0, "open", "t1", {}, "c" * 32, "d" * 16, "toy-svc"),
            DomainEvent(T0 + 1_000_000, "close", "t2" if bad else "t1", {"reason": "done"}, "c" * 32, "e" * 16,
                        "toy-svc")]


def _toy_payload(toy: Domain, path: Path, bad: bool = False) -> Path:
    write_trace(toy, _toy_events(bad), path, "otlp-json")
    return path


def _mixed(toy: Domain, path: Path, *, bad_toy: bool = False, bad_kvonce: bool = False) -> Path:
    sample = (SAMPLES / "kvonce-otlp.json").read_bytes()
    if bad_kvonce:
        sample = sample.replace(b'"retry"', b'"success"', 1)
    document = orjson.loads(sample)
    document["resourceSpans"] += [r for q in requests(toy, _toy_events(bad_toy)) for r in q["resourceSpans"]]
    path.write_bytes(orjson.dumps(document))
    return path


def _run(toy: Domain, job: str, payload: Path, reports: Path,
         run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    merged = dg.Definitions.merge(
        dg.Definitions(assets=conformance_assets,
                       resources={"kvonce": KvonceSettings(payload=str(payload), reports_dir=str(reports))}),
        build_domain_definitions([toy]))
    return merged.resolve_job_def(job).execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                                           raise_on_error=False, run_config=run_config)


def _materialized(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetMaterialization]:
    return {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}


def _checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {(c.asset_key.to_user_string(), c.check_name): c.passed for c in result.get_asset_check_evaluations()}


def _failure(result: dg.ExecuteInProcessResult, step: str) -> dg.Failure | None:
    for event in result.all_events:
        if event.is_step_failure and event.step_key == step:
            return event.step_failure_data.user_failure_data  # type: ignore[union-attr,return-value]
    return None


def test_the_factory_makes_the_toy_group_and_leaves_kvonce_as_it_was(toy: Domain) -> None:
    built = build_domain_definitions([toy])
    merged = dg.Definitions.merge(dg.Definitions(assets=conformance_assets,
                                                 resources={"kvonce": KvonceSettings()}), built)
    dg.Definitions.validate_loadable(merged)
    graph = merged.resolve_asset_graph()
    group = sorted(k.to_user_string() for k in graph.get_all_asset_keys()
                   if graph.get(k).group_name == "toy")
    assert group == TOY_ASSETS
    checks = sorted((k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys
                    if k.asset_key.to_user_string().startswith("toy_"))
    assert checks == [("toy_events", "events_schema"), ("toy_projection", "projection_schema"),
                      ("toy_validation", "toy_conformance"), ("toy_validation", "validation_schema")]
    assert graph.get(dg.AssetKey("toy_events")).parent_keys == {dg.AssetKey("collected_otlp")}
    toy_job = merged.resolve_job_def("toy_conformance_job")
    assert {k.to_user_string() for k in toy_job.asset_layer.executable_asset_keys} == {"collected_otlp", *TOY_ASSETS}
    trace_job = merged.resolve_job_def("trace_conformance_job")
    assert {k.to_user_string() for k in trace_job.asset_layer.executable_asset_keys} == {
        "collected_otlp", "trace_summary", *TOY_ASSETS, *KVONCE_ASSETS}
    # the KvOnce CI job of the real definitions: the same assets and checks as before the domain groups
    kvonce_job = defs.resolve_job_def("kvonce_conformance_job")
    assert sorted(k.to_user_string() for k in kvonce_job.asset_layer.executable_asset_keys) == sorted(KVONCE_ASSETS)
    assert sorted(k.name for k in kvonce_job.asset_layer.asset_graph.asset_check_keys) == [
        "collected_schema", "events_schema", "kvonce_conformance", "projection_schema", "validation_schema"]
    with pytest.raises(ValueError, match="its own pass"):
        domain_assets.build_domain_assets(registry.get("kvonce"))


def test_a_valid_toy_payload_materializes_the_group_with_metadata_matching_the_files(toy: Domain,
                                                                                    tmp_path: Path) -> None:
    payload = _toy_payload(toy, tmp_path / "toy.json")
    result = _run(toy, "toy_conformance_job", payload, tmp_path / "reports")
    assert result.success
    trace = tmp_path / "reports" / "trace"
    done = _materialized(result)
    assert list(done) == ["collected_otlp", *TOY_ASSETS]
    for name, materialization in done.items():
        meta = materialization.metadata
        path = Path(meta["path"].value)
        assert path.parent == (trace if name == "collected_otlp" else trace / "toy"), name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"].value, name
        assert meta["bytes"].value == path.stat().st_size, name
        assert materialization.tags["dagster/data_version"] == meta["sha256"].value, name
        assert materialization.tags.get("dagster/code_version"), name
    assert (trace / "collected-otlp.json").read_bytes() == payload.read_bytes(), "a spec document is a byte copy"
    assert done["collected_otlp"].metadata["domains"].value == ["toy"]
    assert _checks(result) == {("toy_events", "events_schema"): True, ("toy_projection", "projection_schema"): True,
                               ("toy_validation", "validation_schema"): True,
                               ("toy_validation", "toy_conformance"): True}
    report = orjson.loads((trace / "toy" / "toy-validation.json").read_bytes())
    assert report["valid"] and report["summary"]["input"]["source"] == str(payload)
    assert report["summary"]["events"] == 2 and done["toy_events"].metadata["dagster/row_count"].value == 2


def test_a_violation_fails_the_verdict_check_and_the_run_with_the_verdict(toy: Domain, tmp_path: Path) -> None:
    payload = _toy_payload(toy, tmp_path / "bad.json", bad=True)
    result = _run(toy, "toy_conformance_job", payload, tmp_path / "reports")
    assert not result.success
    checks = _checks(result)
    assert checks[("toy_validation", "toy_conformance")] is False
    assert checks[("toy_validation", "validation_schema")] is True, "a violation is no schema break"
    assert "toy_validation" not in _materialized(result), "the violating report is not materialized"
    failure = _failure(result, "toy_conformance_pass")
    assert failure is not None and failure.metadata["verdict"].value == "violations"
    assert failure.description.startswith(f"1 Toy violation in {payload}:")
    assert "close-without-open" in failure.description
    report = orjson.loads((tmp_path / "reports" / "trace" / "toy" / "toy-validation.json").read_bytes())
    assert report["valid"] is False and [i["type"] for i in report["issues"]] == ["left-open", "close-without-open"]


def test_the_engines_own_findings_keep_the_schema_checks_green(toy: Domain, tmp_path: Path) -> None:
    """An undeclared type and a wrongly typed required field are findings, not broken artifacts."""
    events = [*_toy_events(), DomainEvent(T0 + 2_000_000, "jump", "t1", {}, "c" * 32, "f" * 16, "toy-svc"),
              DomainEvent(T0 + 3_000_000, "close", "t1", {"reason": 3}, "c" * 32, "a" * 16, "toy-svc")]
    payload = tmp_path / "odd.json"
    write_trace(toy, events, payload, "otlp-json")
    result = _run(toy, "toy_conformance_job", payload, tmp_path / "reports")
    assert not result.success
    checks = _checks(result)
    assert checks.pop(("toy_validation", "toy_conformance")) is False and all(checks.values()) and len(checks) == 3
    report = orjson.loads((tmp_path / "reports" / "trace" / "toy" / "toy-validation.json").read_bytes())
    assert set(report["summary"]["byRule"]) >= {"unknown-event-type", "invalid-field-type", "missing-required-field"}


def test_run_config_sets_the_domains_options_and_disabled_rules(toy: Domain, tmp_path: Path) -> None:
    step = {"config": {"disable": ["close-without-open"], "options": {"allow_left_open": "true"}}}
    payload = _toy_payload(toy, tmp_path / "bad.json", bad=True)
    result = _run(toy, "toy_conformance_job", payload, tmp_path / "reports", {"ops": {"toy_conformance_pass": step}})
    assert result.success
    report = orjson.loads((tmp_path / "reports" / "trace" / "toy" / "toy-validation.json").read_bytes())
    assert report["disabledRules"] == ["close-without-open"] and report["options"] == {"allow_left_open": True}
    assert report["issues"] == []
    # a config given by the user does not drop the job's own rule: no toy spans is still unusable there
    result = _run(toy, "toy_conformance_job", SAMPLES / "kvonce-otlp.json", tmp_path / "reports",
                  {"ops": {"toy_conformance_pass": step}})
    failure = _failure(result, "toy_conformance_pass")
    assert failure is not None and failure.metadata["verdict"].value == "unusable"
    wrong = {"ops": {"toy_conformance_pass": {"config": {"options": {"nope": "1"}}}}}
    failure = _failure(_run(toy, "toy_conformance_job", payload, tmp_path / "reports", wrong), "toy_conformance_pass")
    assert failure is not None and "has no option 'nope'" in failure.description


def test_the_toy_job_on_a_payload_without_toy_spans_is_unusable_input(toy: Domain, tmp_path: Path) -> None:
    result = _run(toy, "toy_conformance_job", SAMPLES / "kvonce-otlp.json", tmp_path / "reports")
    assert not result.success
    failure = _failure(result, "toy_conformance_pass")
    assert failure is not None and failure.metadata["verdict"].value == "unusable"
    assert failure.description == (f"unusable input: {SAMPLES / 'kvonce-otlp.json'}: no Toy events "
                                   "(no span carries toy.event.type)")
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceSpans": [\n')
    result = _run(toy, "toy_conformance_job", broken, tmp_path / "reports")
    failure = _failure(result, "toy_conformance_pass")  # a JSON document is collected byte for byte
    assert failure is not None and failure.description.startswith(f"unusable input: {broken}: line 2: not valid JSON")
    assert "(read from its collected copy " in failure.description
    assert not result.success and list(_materialized(result)) == ["collected_otlp"]
    report = orjson.loads((tmp_path / "reports" / "trace" / "toy" / "toy-validation.json").read_bytes())
    assert report["valid"] is False and report["inputError"]["source"] == str(broken)
    missing = tmp_path / "missing.json"
    result = _run(toy, "toy_conformance_job", missing, tmp_path / "reports")
    failure = _failure(result, "collected_otlp")
    assert failure is not None and failure.description == f"unusable input: {missing}: no such file"


def test_an_ndjson_log_of_the_toy_domain_is_collected_through_its_mapping(toy: Domain, tmp_path: Path) -> None:
    log = tmp_path / "toy.ndjson"
    write_trace(toy, _toy_events(), log, "ndjson")
    result = _run(toy, "toy_conformance_job", log, tmp_path / "reports")
    assert result.success
    meta = _materialized(result)["collected_otlp"].metadata
    assert meta["converted"].value is True and meta["source_format"].value == "ndjson"
    report = orjson.loads((tmp_path / "reports" / "trace" / "toy" / "toy-validation.json").read_bytes())
    assert report["summary"]["events"] == 2 and report["summary"]["input"]["format"] == "ndjson"


def test_an_ndjson_log_gets_the_clis_verdict_line_for_line(toy: Domain, tmp_path: Path) -> None:
    """An NDJSON log is read itself, not its rendering as spans: an event without a type and a string
    that looks like JSON read as the CLI reads them, and findings name the log's lines."""
    log = tmp_path / "toy.ndjson"
    log.write_text('{"timestamp": "2026-01-01T00:00:00Z", "type": "open", "key": "a"}\n'
                   '{"timestamp": "2026-01-01T00:00:01Z", "key": "a"}\n'
                   '{"timestamp": "2026-01-01T00:00:02Z", "type": "close", "key": "a", "reason": "x", '
                   '"context": "{\\"looks\\": \\"like json\\"}"}\n')
    result = _run(toy, "toy_conformance_job", log, tmp_path / "reports")
    assert not result.success
    dagster = orjson.loads((tmp_path / "reports" / "trace" / "toy" / "toy-validation.json").read_bytes())
    cli = check_payload(PayloadRequest(log, tmp_path / "cli", domains=("toy",))).results[0].report
    assert [(i["type"], i["eventIndex"], i.get("origin")) for i in dagster["issues"]] == \
        [(i["type"], i["eventIndex"], i.get("origin")) for i in cli["issues"]]
    assert ("missing-required-field", 1, "line 2") in [(i["type"], i["eventIndex"], i.get("origin"))
                                                      for i in dagster["issues"]]
    assert ("invalid-field-type", 2, "line 3") in [(i["type"], i["eventIndex"], i.get("origin"))
                                                  for i in dagster["issues"]]


def test_the_trace_job_checks_both_domains_of_a_mixed_payload(toy: Domain, tmp_path: Path) -> None:
    payload = _mixed(toy, tmp_path / "mixed.json", bad_toy=True)
    result = _run(toy, "trace_conformance_job", payload, tmp_path / "reports")
    assert not result.success  # the toy violation
    assert set(_materialized(result)) == {"collected_otlp", "trace_summary", *TOY_ASSETS[:2], *KVONCE_ASSETS}
    assert [key for key, passed in _checks(result).items() if not passed] == [("toy_validation", "toy_conformance")]
    trace = tmp_path / "reports" / "trace"
    summary = orjson.loads((trace / "trace-summary.json").read_bytes())
    assert [(d["key"], d["status"]) for d in summary["domains"]] == [("kvonce", "valid"), ("toy", "invalid")]
    assert summary["aggregate"]["exitCode"] == 1
    # the same bytes as `kvonce conformance` writes for the same payload: the toy files and the summary
    cli = tmp_path / "cli"
    assert check_payload(PayloadRequest(payload, cli)).exit_code == 1
    for name in ["toy/toy-events.ndjson", "toy/toy-state-sequence.json", "toy/toy-projection.json",
                 "toy/toy-validation.json", "toy/toy-summary.md", "trace-summary.json", "trace-summary.md",
                 "kvonce-validation.json"]:
        assert (trace / name).read_bytes() == (cli / name).read_bytes(), name


def test_the_trace_job_on_a_kvonce_violation_still_checks_the_other_domain(toy: Domain, tmp_path: Path) -> None:
    payload = _mixed(toy, tmp_path / "mixed.json", bad_kvonce=True)
    result = _run(toy, "trace_conformance_job", payload, tmp_path / "reports")
    assert not result.success
    done = _materialized(result)
    assert {*TOY_ASSETS, "trace_summary"} <= set(done) and "kvonce_validation" not in done
    summary = orjson.loads((tmp_path / "reports" / "trace" / "trace-summary.json").read_bytes())
    assert [(d["key"], d["status"]) for d in summary["domains"]] == [("kvonce", "invalid"), ("toy", "valid")]
    assert summary["aggregate"]["exitCode"] == 1


def test_a_payload_of_one_domain_does_not_fail_the_other_domains_group(toy: Domain, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    # an earlier toy payload leaves toy artifacts; a KvOnce-only payload then removes them
    assert _run(toy, "toy_conformance_job", _toy_payload(toy, tmp_path / "toy.json"), reports).success
    result = _run(toy, "trace_conformance_job", SAMPLES / "kvonce-otlp.json", reports)
    assert result.success
    assert set(_materialized(result)) == {"collected_otlp", "trace_summary", *KVONCE_ASSETS}
    assert not (reports / "trace" / "toy").exists()
    summary = orjson.loads((reports / "trace" / "trace-summary.json").read_bytes())
    assert [d["key"] for d in summary["domains"]] == ["kvonce"]
    # a toy-only payload: the toy group passes; KvOnce's step steps aside (kvonce_part), so the run passes
    result = _run(toy, "trace_conformance_job", _toy_payload(toy, tmp_path / "toy.json"), reports)
    done = _materialized(result)
    assert set(done) == {"collected_otlp", "trace_summary", *TOY_ASSETS}
    assert all(passed for (asset, _), passed in _checks(result).items() if asset.startswith("toy_"))
    assert _failure(result, "kvonce_conformance_pass") is None and result.success
    assert not (reports / "trace" / "kvonce-validation.json").exists(), "the KvOnce payload's report went"
    summary = orjson.loads((reports / "trace" / "trace-summary.json").read_bytes())
    assert [(d["key"], d["status"]) for d in summary["domains"]] == [("toy", "valid")], "as kvonce conformance says"


def test_the_schemas_built_from_the_definition_catch_broken_tables(toy: Domain) -> None:
    events = _toy_events()
    report = {"issues": []}
    good = domain_assets.events_frame(toy, events, report)
    assert check_frame(domain_assets.events_schema(toy), good).passed
    unreported = domain_assets.events_frame(toy, [*events, DomainEvent(T0 + 2_000_000, "jump", "t1", {})], report)
    outcome = check_frame(domain_assets.events_schema(toy), unreported)
    assert not outcome.passed and "no finding reports" in outcome.failure_markdown
    reported = {"issues": [{"type": "unknown-event-type", "eventIndex": 2}]}
    assert check_frame(domain_assets.events_schema(toy),
                       domain_assets.events_frame(toy, [*events, DomainEvent(T0 + 2_000_000, "jump", "t1", {})],
                                                  reported)).passed
    wrong = domain_assets.events_frame(toy, [events[1], DomainEvent(T0, "close", "t1", {"reason": 3})], report)
    outcome = check_frame(domain_assets.events_schema(toy), wrong)
    assert not outcome.passed and "JSON type string" in outcome.failure_markdown
    assert "not in time order" in outcome.failure_markdown
    no_reason = domain_assets.events_frame(toy, [DomainEvent(T0, "close", "t1", {})], report)
    assert not check_frame(domain_assets.events_schema(toy), no_reason).passed
    assert check_frame(domain_assets.events_schema(toy, frozenset({"missing-required-field"})), no_reason).passed
    assert check_frame(domain_assets.events_schema(toy, frozenset({"unknown-event-type"})), unreported).passed

    stats = {"events": 2, "keys": 1, "byType": {"open": 1, "close": 1, "unknown": 0}, "firstTimestamp": "a",
             "lastTimestamp": "b", "traceIdCount": 1, "traceIds": ["c"]}
    assert check_frame(domain_assets.projection_schema(toy, stats), domain_assets.projection_frame(stats)).passed
    off = {**stats, "byType": {"open": 1, "close": 2, "unknown": 0}}
    outcome = check_frame(domain_assets.projection_schema(toy, off), domain_assets.projection_frame(off))
    assert not outcome.passed and "does not add up" in outcome.failure_markdown

    issue = {"type": "close-without-open", "key": "t2", "severity": "error", "message": "m", "eventIndex": 1}
    report = {"valid": False, "issues": [issue], "summary": {"events": 2, "errors": 1, "warnings": 0}}
    assert check_frame(domain_assets.validation_schema(toy, report), domain_assets.issues_frame(report)).passed
    foreign = {**report, "issues": [{**issue, "type": "multiple-success", "eventIndex": 7}]}
    outcome = check_frame(domain_assets.validation_schema(toy, foreign), domain_assets.issues_frame(foreign))
    assert not outcome.passed and "multiple-success" in outcome.failure_markdown
    assert isinstance(domain_assets.issues_frame(report), pd.DataFrame)


def _job_execute(toy_project: ToyProject, tmp_path: Path, payload: Path) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    env = {**toy_project.env(), "DAGSTER_HOME": str(home), "KVONCE_OTLP_PAYLOAD": str(payload),
           "KVONCE_REPORTS_DIR": str(tmp_path / "reports")}
    return subprocess.run([str(VENV_BIN / "dagster"), "job", "execute", "-m", "kvonce_pipeline",
                           "-j", "toy_conformance_job"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("valid", [True, False])
def test_dagster_job_execute_of_the_toy_job_exits_with_the_verdict(toy: Domain, toy_project: ToyProject,
                                                                    tmp_path: Path, valid: bool) -> None:
    payload = _toy_payload(toy, tmp_path / "toy.json", bad=not valid)
    done = _job_execute(toy_project, tmp_path, payload)
    assert done.returncode == (0 if valid else 1), done.stderr[-3000:]
    report = orjson.loads((tmp_path / "reports" / "trace" / "toy" / "toy-validation.json").read_bytes())
    assert report["valid"] is valid
    if not valid:
        assert "1 Toy violation in" in done.stdout + done.stderr
        # make run's verdict reader tells a violation (1) from unusable input (2) for this job too
        verdict = subprocess.run([str(VENV_BIN / "python"), "-m", "kvonce_pipeline.orchestration.run_verdict",
                                  "--job", "toy_conformance_job", "--dagster-exit", "1"], cwd=tmp_path,
                                 env={**toy_project.env(), "DAGSTER_HOME": str(tmp_path / "dagster_home")},
                                 capture_output=True, text=True, timeout=120)
        assert verdict.returncode == 1, verdict.stderr
        assert verdict.stdout.startswith(f"1 Toy violation in {payload}:")


def test_an_ndjson_log_in_a_bucket_is_read_itself_while_its_sha256_is_the_collected_one(s3, s3_prefix: str,
                                                                                       tmp_path: Path) -> None:
    """The log is downloaded for the read and removed afterwards; replaced or gone, the collected copy is read."""
    log = b'{"timestamp":"2025-10-04T06:00:00Z","type":"success","key":"k","value":1}\n'
    url = f"s3://{s3_prefix}/stock.inventory.ndjson"
    s3.pipe(url, log)
    collected = tmp_path / "collected.json"
    collected.write_bytes(b"{}")
    record = {"source_format": "ndjson", "source_path": url, "source_sha256": hashlib.sha256(log).hexdigest()}
    settings = KvonceSettings()
    with domain_assets._what_to_read(record, collected, settings) as read:
        assert read != collected and read.read_bytes() == log
    assert not read.exists(), "the private download is removed after the read"
    s3.pipe(url, log + log)  # replaced since it was collected
    with domain_assets._what_to_read(record, collected, settings) as read:
        assert read == collected
    s3.rm(url)
    with domain_assets._what_to_read(record, collected, settings) as read:
        assert read == collected
