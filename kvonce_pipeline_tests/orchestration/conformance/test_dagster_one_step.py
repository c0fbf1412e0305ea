"""The conformance graph as one Dagster step doing the CLI's one pass (issue #5).

Real ephemeral instances and real runs throughout: what the step materializes and checks, that
its artifacts are the CLI's bytes (serial pass and parallel pass with its workers), that failed
checks still fail the run (and ``dagster job execute``), and that the drop variant still
reconciles with the store when its events are observed inside the pass.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvonce_pipeline.engine import drops
from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.domains.kvonce import envelope
from kvonce_pipeline.domains.kvonce import schemas
from kvonce_pipeline.domains.kvonce.otlp_render import render_event_log
from kvonce_pipeline.engine.collect import collect_payload
from kvonce_pipeline.engine.errors import InputError
from kvonce_pipeline.domains.kvonce.own_pass.conformance import ConformanceOptions, run_conformance
from kvonce_pipeline.definitions import defs
from kvonce_pipeline.orchestration.conformance.definitions import conformance_assets
from kvonce_pipeline.engine.timestamps import format_timestamp
from kvonce_pipeline.devtools.generate import GenerateOptions, generate
from kvonce_pipeline.orchestration.conformance import assets as assets_module
from kvonce_pipeline.orchestration.conformance.assets import (ASSET_NAMES, CODE_VERSIONS, STEP_NAME,
                                                              build_conformance_assets)
from kvonce_pipeline.orchestration.drops.assets import (PARTITIONS_NAME, PREFIX, TAG_NAME, TAG_SHA, drop_assets,
                                                        drop_hooks,
                                                        drop_output, drop_partitions)
from kvonce_pipeline.orchestration.resources import KvonceSettings
from kvonce_pipeline.orchestration.conformance.schema_worker import SchemaWorker

from ...conftest import VENV_BIN

CHECKS = {"collected_schema", "events_schema", "projection_schema", "validation_schema", "kvonce_conformance"}
COMPARED = (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE, artifacts.VALIDATION, artifacts.SUMMARY)


def materialize(assets: list[dg.AssetsDefinition], payload: Path, reports: Path,
                **settings_: Any) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, instance=dg.DagsterInstance.ephemeral(),
                          resources={"kvonce": KvonceSettings(payload=str(payload), reports_dir=str(reports),
                                                              **settings_)},
                          raise_on_error=False)


def steps_run(result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]


def step_failure(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data
    return str(failure.user_failure_data.description if failure.user_failure_data else failure.error.message)


def uppercase_ids(sample_otlp: Path, target: Path) -> Path:
    """The sample plus one HTTP span with upper-case ids: the reader accepts it, ``collected_schema`` does not."""
    doc = orjson.loads(sample_otlp.read_bytes())
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"].append({
        "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "A1B2C3D4E5F60001", "name": "GET /",
        "startTimeUnixNano": "1759557600000000000", "endTimeUnixNano": "1759557600000000001", "attributes": []})
    target.write_bytes(orjson.dumps(doc))
    return target


# --- the shape of the graph ------------------------------------------------------------------


def test_the_four_assets_are_one_step_that_materializes_all_of_them(sample_otlp: Path, tmp_path: Path) -> None:
    result = materialize(conformance_assets, sample_otlp, tmp_path)
    assert result.success
    assert steps_run(result) == [STEP_NAME]
    materialized = result.get_asset_materialization_events()
    assert [m.asset_key.to_user_string() for m in materialized] == list(ASSET_NAMES)
    evaluations = result.get_asset_check_evaluations()
    assert {c.check_name for c in evaluations} == CHECKS and len(evaluations) == 5
    assert all(c.passed for c in evaluations)
    versions = {m.asset_key.to_user_string(): m.materialization.tags["dagster/code_version"] for m in materialized}
    assert versions == CODE_VERSIONS, "each asset keeps its own code version"


def test_lineage_deps_and_the_execution_set() -> None:
    graph = defs.resolve_asset_graph()
    parents = {name: {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys} for name in ASSET_NAMES}
    assert parents == {"collected_kvonce_otlp": set(), "kvonce_events": {"collected_kvonce_otlp"},
                       "kvonce_projection": {"kvonce_events"},
                       "kvonce_validation": {"kvonce_events", "kvonce_projection"}}
    keys = {dg.AssetKey([PREFIX, name]) for name in ASSET_NAMES}
    for key in keys:  # the drop graph: materializing any one of them materializes all four
        assert graph.get(key).execution_set_asset_keys == keys
    with pytest.raises(dg.DagsterInvalidDefinitionError):
        dg.materialize(drop_assets, selection=["drops/kvonce_events"], instance=dg.DagsterInstance.ephemeral(),
                       resources={"kvonce": KvonceSettings()})
    # the CI graph is subsettable only so that it may step aside in trace_conformance_job (kvonce_part):
    # a partial selection is refused by its step before anything is written
    result = dg.materialize(conformance_assets, selection=["kvonce_events"], instance=dg.DagsterInstance.ephemeral(),
                            resources={"kvonce": KvonceSettings()}, raise_on_error=False)
    failures = [e.step_failure_data.user_failure_data for e in result.all_events if e.is_step_failure]
    assert not result.success and "materialized as a whole" in failures[0].description


# --- the same bytes as the CLI -----------------------------------------------------------------


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_artifacts_are_the_clis_bytes(tmp_path: Path, parallel: bool) -> None:
    """``parallel`` runs the projection in its worker and the two whole-file checks in the schema worker."""
    payload = tmp_path / "trace.json"
    generate(payload, GenerateOptions(events=4000, keys=1500, violations=0.0, batch_spans=300))
    payload = payload.resolve()
    result = materialize(build_conformance_assets(parallel=parallel), payload, tmp_path / "dagster")
    assert result.success, step_failure(result)
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()} == dict.fromkeys(CHECKS, True)
    cli = run_conformance(payload, tmp_path / "cli", ConformanceOptions(parallel=parallel))
    assert cli.valid
    for name in COMPARED:
        ours, theirs = (tmp_path / "dagster" / "trace" / name).read_bytes(), (tmp_path / "cli" / name).read_bytes()
        assert ours == theirs, name
    meta = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}
    assert meta["kvonce_projection"]["dagster/row_count"].value == 1500
    assert meta["kvonce_events"]["dagster/row_count"].value == 4000
    assert meta["collected_kvonce_otlp"]["spans"].value == 4000
    assert meta["collected_kvonce_otlp"]["kvonce_spans"].value == 4000


def test_a_violation_in_the_parallel_pass_fails_with_the_verdict_and_leaves_the_report_unmaterialized(
        tmp_path: Path) -> None:
    """The three stages before the verdict are materialized; the report is written but its asset fails
    (so the UI shows it failed), and the step's failure message is the verdict, not the framework's."""
    payload = tmp_path / "bad.json"
    generate(payload, GenerateOptions(events=3000, keys=1000, violations=0.02, batch_spans=300))
    result = materialize(build_conformance_assets(parallel=True), payload.resolve(), tmp_path / "reports")
    assert not result.success
    assert [m.asset_key.to_user_string() for m in result.get_asset_materialization_events()] == list(ASSET_NAMES[:3])
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["kvonce_conformance"].passed is False
    assert all(checks[name].passed for name in CHECKS - {"kvonce_conformance"})
    report = orjson.loads((tmp_path / "reports" / "trace" / artifacts.VALIDATION).read_bytes())
    errors = report["summary"]["errors"]
    assert report["valid"] is False and errors == checks["kvonce_conformance"].metadata["errors"].value
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.user_failure_data
    first = report["issues"][0]
    assert failure.description.startswith(f"{errors} violations in {payload.resolve()}:\n\n| severity | rule |")
    assert f"| {first['severity']} | {first['type']} | {first['key']} | {first['eventIndex']} |" in failure.description
    assert f"and {len(report['issues']) - assets_module.VERDICT_FINDINGS} more findings" in failure.description
    assert failure.metadata["verdict"].value == "violations"
    assert failure.metadata["sha256"].value == hashlib.sha256(
        (tmp_path / "reports" / "trace" / artifacts.VALIDATION).read_bytes()).hexdigest()


def test_a_failed_schema_check_fails_the_run(sample_otlp: Path, tmp_path: Path) -> None:
    payload = uppercase_ids(sample_otlp, tmp_path / "upper.json")
    result = materialize(conformance_assets, payload, tmp_path / "reports")
    assert not result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["collected_schema"].passed is False and checks["kvonce_conformance"].passed is True
    assert "A1B2C3D4E5F60001" in checks["collected_schema"].metadata["failures"].value
    assert "collected_schema" in step_failure(result)


def test_dagster_job_execute_exits_1_on_a_failed_schema_check(sample_otlp: Path, tmp_path: Path) -> None:
    payload = uppercase_ids(sample_otlp, tmp_path / "upper.json")
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "KVONCE_OTLP_PAYLOAD": str(payload),
           "KVONCE_REPORTS_DIR": str(tmp_path / "reports")}
    done = subprocess.run([str(VENV_BIN / "dagster"), "job", "execute", "-m", "kvonce_pipeline",
                           "-j", "kvonce_conformance_job"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "collected_schema" in done.stdout + done.stderr


def test_an_unusable_document_records_the_collected_copy_then_fails_naming_the_span(sample_otlp: Path,
                                                                                     tmp_path: Path) -> None:
    doc = orjson.loads(sample_otlp.read_bytes())
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["spanId"] = "a1b2c3"  # hex digits cut short
    payload = tmp_path / "bad-span.json"
    payload.write_bytes(orjson.dumps(doc))
    result = materialize(conformance_assets, payload, tmp_path / "reports")
    assert not result.success
    assert [m.asset_key.to_user_string() for m in result.get_asset_materialization_events()] == [
        "collected_kvonce_otlp"]
    message = step_failure(result)
    assert message.startswith("unusable input: ") and "span r0/s0/p1" in message and "a1b2c3" in message
    report = orjson.loads((tmp_path / "reports" / "trace" / artifacts.VALIDATION).read_bytes())
    assert report["valid"] is False and report["inputError"]["where"].endswith("span r0/s0/p1")
    assert not (tmp_path / "reports" / "trace" / artifacts.EVENTS).exists()


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_legacy_ids_pass_every_check_with_a_warning(sample_otlp: Path, tmp_path: Path, parallel: bool) -> None:
    """Ids such as ``trace-legacy-1`` (legacy exporters) are kept as written: the verdict and every
    schema check are the ones the same trace gets with hex ids, and the report says what was kept."""
    doc = orjson.loads(sample_otlp.read_bytes())
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans[0]["traceId"] = spans[1]["traceId"] = "trace-legacy-1"
    spans[2]["spanId"] = "span-legacy-2"
    payload = tmp_path / "legacy.json"
    payload.write_bytes(orjson.dumps(doc))
    result = materialize(build_conformance_assets(parallel=parallel), payload, tmp_path / "reports")
    assert result.success, step_failure(result)
    assert all(c.passed for c in result.get_asset_check_evaluations())
    report = orjson.loads((tmp_path / "reports" / "trace" / artifacts.VALIDATION).read_bytes())
    warnings = report["summary"]["input"]["warnings"]
    assert any(w.startswith("2 span(s) with a traceId that is not 32 hex digits (first: 'trace-legacy-1')")
               for w in warnings), warnings
    assert any(w.startswith("1 span(s) with a spanId") for w in warnings), warnings
    events = (tmp_path / "reports" / "trace" / artifacts.EVENTS).read_bytes()
    assert events.count(b'"traceId":"trace-legacy-1"') == 2 and b'"spanId":"span-legacy-2"' in events


# --- the drop variant in the parallel pass ---------------------------------------------------------


def test_the_drop_variant_reconciles_with_the_store_in_the_parallel_pass(tmp_path: Path) -> None:
    """Two payloads write the same key: the second's report names the first partition (its events
    were observed by the drop hooks during the one pass, in the parallel path)."""
    parallel_drops = build_conformance_assets(key_prefix=[PREFIX], partitions_def=drop_partitions,
                                              group_name="kvonce_drops", payload_for=drop_hooks.payload,
                                              output_for=drop_output, hooks=drop_hooks, parallel=True)
    folder = tmp_path / "drops"
    folder.mkdir()
    settings_ = KvonceSettings(drop_dir=str(folder), reports_dir=str(tmp_path / "reports"))
    first = b'{"timestamp":"2025-10-04T06:00:00.000Z","type":"success","key":"k","value":"v1"}\n'
    second = (b'{"timestamp":"2025-10-04T06:00:05.000Z","type":"retry","key":"other"}\n'
              b'{"timestamp":"2025-10-04T06:00:09.000Z","type":"success","key":"k","value":"v2"}\n')
    with dg.DagsterInstance.ephemeral() as instance:
        runs = []
        for name, data in (("p1.ndjson", first), ("p2.ndjson", second)):
            (folder / name).write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            key = drops.partition_key_for(name, sha)
            instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
            runs.append((key, dg.materialize(parallel_drops, instance=instance, partition_key=key,
                                             resources={"kvonce": settings_}, tags={TAG_NAME: name, TAG_SHA: sha},
                                             raise_on_error=False)))
    (key1, run1), (key2, run2) = runs
    assert run1.success and steps_run(run1) == [f"{PREFIX}__{STEP_NAME}"]
    assert not run2.success
    assert f"1 violation in {folder / 'p2.ndjson'}:" in step_failure(run2)
    report = orjson.loads((tmp_path / "reports" / "trace" / key2 / artifacts.VALIDATION).read_bytes())
    [issue] = report["issues"]
    assert issue["type"] == "multiple-success" and issue["crossPayload"]["otherPartition"] == key1
    doc = envelope.read_envelope(tmp_path / "reports" / "trace" / key2)
    assert doc["valid"] is False and {a["name"] for a in doc["artifacts"]} == set(envelope.ARTIFACT_NAMES)
    for item in doc["artifacts"]:
        assert hashlib.sha256((tmp_path / "reports" / "trace" / key2 / item["name"]).read_bytes()
                              ).hexdigest() == item["sha256"], item["name"]
    materialized = run2.get_asset_materialization_events()
    assert [m.asset_key.path[-1] for m in materialized] == list(ASSET_NAMES[:3])  # the verdict failed
    assert {(c.check_name, c.partition, c.passed) for c in run2.get_asset_check_evaluations()
            if c.check_name == "kvonce_conformance"} == {("kvonce_conformance", key2, False)}
    for event in [*materialized, *run1.get_asset_materialization_events()]:
        name = event.asset_key.path[-1]
        assert event.materialization.metadata["code_version"].value == drop_hooks.code_version(
            name, CODE_VERSIONS[name])


# --- the schema worker --------------------------------------------------------------------------


def test_the_schema_worker_answers_as_the_checks_in_process(tmp_path: Path) -> None:
    payload = tmp_path / "trace.json"
    generate(payload, GenerateOptions(events=2000, keys=700, violations=0.01, batch_spans=300))
    run_conformance(payload, tmp_path / "out", ConformanceOptions(parallel=False))
    stats = orjson.loads((tmp_path / "out" / artifacts.PROJECTION).read_bytes())["stats"]
    worker = SchemaWorker.check(payload)
    try:
        assert worker.collected() == schemas.check_collected_file(payload)
        worker.request_projection(tmp_path / "out" / artifacts.PROJECTION, stats)
        assert worker.projection() == schemas.check_projection_file(tmp_path / "out" / artifacts.PROJECTION, stats)
    finally:
        worker.close()


def test_the_schema_worker_collects_as_collect_payload_does(sample_otlp: Path, sample_ndjson: Path,
                                                            tmp_path: Path) -> None:
    for source in (sample_otlp, sample_ndjson):
        worker = SchemaWorker.collect(source, tmp_path / "w" / source.name, "auto")
        try:
            copy = worker.copy()
            here = collect_payload(source, tmp_path / "here" / source.name, render_log=render_event_log)
            assert (copy.format, copy.compressed, copy.converted, copy.sha256, copy.size) == (
                here.format, here.compressed, here.converted, here.sha256, here.size)
            assert copy.path.read_bytes() == here.path.read_bytes()
        finally:
            worker.close()
    broken = tmp_path / "broken.ndjson"
    broken.write_text('{"timestamp": "2025-10-04T06:00:00Z", "type": "success", "key": [42]}\n')
    worker = SchemaWorker.collect(broken, tmp_path / "w" / "broken.json", "auto")
    try:
        with pytest.raises(InputError) as raised:
            worker.copy()
    finally:
        worker.close()
    with pytest.raises(InputError) as here_raised:
        collect_payload(broken, tmp_path / "here" / "broken.json", render_log=render_event_log)
    assert raised.value.to_json() == here_raised.value.to_json()


def test_a_failing_schema_worker_only_costs_time(tmp_path: Path) -> None:
    """The worker's error comes back; the check then runs in process and says what is wrong itself."""
    not_json = tmp_path / "collected.json"
    not_json.write_bytes(b"{not json")
    checks = assets_module._SchemaChecks(not_json, SchemaWorker.check(not_json))
    try:
        with pytest.raises(orjson.JSONDecodeError):
            checks.collected()
    finally:
        checks.close()


# --- the vectorised tables and checks -------------------------------------------------------------


def _hex32_or_empty(value: str) -> bool:
    return re.fullmatch(r"(?:[0-9a-f]{32})?", value) is not None


def _iso_ms(value: str) -> bool:
    return re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", value, flags=re.ASCII) is not None


near_hex = st.text(alphabet=st.sampled_from("0123456789abcdefABx\u00e9\u0660 \n"), min_size=0, max_size=34)
near_iso = st.builds(lambda t, cut, junk: (format_timestamp(t)[:cut] + junk),
                     st.integers(1, 2**63 - 1), st.integers(0, 24),
                     st.sampled_from(["", "Z", "\n", "0", "\u0661"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(near_hex, st.builds(lambda n: f"{n:032x}", st.integers(0, 2**128 - 1)), st.none()),
                max_size=40))
def test_matches_form_is_the_regular_expression(values: list[str | None]) -> None:
    series = pd.Series(pd.array(values, dtype="string"))
    expected = [v is None or _hex32_or_empty(v) for v in values]
    assert schemas.matches_form(series, schemas.HEX32_FORM, allow_empty=True).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(near_iso, st.none()), max_size=40))
def test_matches_form_reads_iso_timestamps_as_the_regular_expression(values: list[str | None]) -> None:
    series = pd.Series(pd.array(values, dtype="string"))
    assert schemas.matches_form(series, schemas.ISO_MS_FORM).tolist() == [v is None or _iso_ms(v) for v in values]


def test_matches_form_fails_values_that_are_not_text() -> None:
    series = pd.Series(["0" * 32, 7, None, b"0" * 32], dtype="object")
    assert schemas.matches_form(series, schemas.HEX32_FORM).tolist() == [True, False, True, False]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 2**63 - 1), st.integers(1_759_557_600_000_000_000,
                                                                    1_759_557_700_000_000_000), st.none()),
                max_size=50))
def test_vectorised_timestamps_are_format_timestamp(times: list[int | None]) -> None:
    stamps = schemas.iso_ms(pd.array(times, dtype="Int64"))
    assert [None if s is pd.NA else s for s in stamps.tolist()] == [
        None if t is None else format_timestamp(t) for t in times]


def test_typed_span_table_is_the_general_one(sample_otlp: Path) -> None:
    blob = sample_otlp.read_bytes()
    fast, general = schemas.collected_spans_frame(blob), schemas.spans_frame(orjson.loads(blob))
    pd.testing.assert_frame_equal(fast, general)
    assert len(fast) == 8 and fast["isKvonce"].sum() == 7  # one span of the sample is not a kvonce event


@pytest.mark.parametrize("odd", [
    {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5, "spanId": "a1b2c3d4e5f60001"}]}]}]},
    {"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "1e3", "attributes": None}]}]}]},
    {"resourceSpans": None},
    [1, 2],
], ids=["number-id", "odd-start-null-attributes", "null-list", "not-an-object"])
def test_documents_the_typed_decoder_refuses_go_the_general_way(odd: Any) -> None:
    blob = orjson.dumps(odd)
    pd.testing.assert_frame_equal(schemas.collected_spans_frame(blob), schemas.spans_frame(odd))


def test_a_number_where_an_id_should_be_fails_the_collected_schema() -> None:
    blob = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": 5, "spanId": "a1b2c3d4e5f60001",
         "attributes": [{"key": "kvonce.event.type"}, {"key": "kvonce.event.key"}]}]}]}]})
    outcome = schemas.check_frame(schemas.collected_schema, schemas.collected_spans_frame(blob))
    assert not outcome.passed and "traceId" in outcome.failure_markdown


def test_per_key_table_from_the_file_is_the_one_from_the_projection(tmp_path: Path) -> None:
    payload = tmp_path / "trace.json"
    generate(payload, GenerateOptions(events=1500, keys=500, violations=0.02, batch_spans=300))
    run_conformance(payload, tmp_path / "out", ConformanceOptions(parallel=False))
    path = tmp_path / "out" / artifacts.PROJECTION
    projection = orjson.loads(path.read_bytes())
    pd.testing.assert_frame_equal(schemas.per_key_frame_from_file(path), schemas.per_key_frame(projection))
    assert schemas.check_projection_file(path, projection["stats"]).passed


def test_the_projection_schema_still_catches_inconsistent_counts(tmp_path: Path) -> None:
    payload = tmp_path / "trace.json"
    generate(payload, GenerateOptions(events=500, keys=200))
    run_conformance(payload, tmp_path / "out", ConformanceOptions(parallel=False))
    path = tmp_path / "out" / artifacts.PROJECTION
    projection = orjson.loads(path.read_bytes())
    projection["stats"]["byType"]["success"] -= 1
    first = next(iter(projection["perKey"].values()))
    first["firstTimestamp"] = "yesterday"
    path.write_bytes(orjson.dumps(projection))
    outcome = schemas.check_projection_file(path, projection["stats"])
    assert not outcome.passed
    assert "yesterday" in outcome.failure_markdown and "exceed the totals" in outcome.failure_markdown


# --- collecting while the source is decoded -------------------------------------------------------


def test_a_whole_document_feeds_the_worker_as_the_cli_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A document held whole (several lines, so not JSON Lines) goes to the fed worker in the step
    too; the files are the sequential CLI pass's, byte for byte."""
    from kvonce_pipeline.domains.kvonce.own_pass import parallel

    finished: list[int] = []
    real_finish = parallel.FedProjection.finish

    def counting_finish(self: parallel.FedProjection) -> dict[str, Any]:
        finished.append(self.sent)
        return real_finish(self)

    monkeypatch.setattr(parallel.FedProjection, "finish", counting_finish)
    payload = tmp_path / "trace.json"
    generate(payload, GenerateOptions(events=6000, keys=2000, violations=0.01, batch_spans=500))
    payload.write_bytes(orjson.dumps(orjson.loads(payload.read_bytes()), option=orjson.OPT_INDENT_2))
    result = materialize(build_conformance_assets(parallel=True), payload, tmp_path / "dagster")
    assert finished == [6000], "the step's pass was fed while the document was decoded"
    # 1% violations: the verdict fails, so the report is written but not materialized
    assert [m.asset_key.to_user_string() for m in result.get_asset_materialization_events()] == list(ASSET_NAMES[:3])
    run_conformance(payload, tmp_path / "cli", ConformanceOptions(parallel=False))
    for name in (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE):
        assert (tmp_path / "dagster" / "trace" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "dagster" / "trace").rglob(".*")) == []


def test_a_lenient_document_is_judged_from_its_rewritten_copy(sample_otlp: Path, tmp_path: Path) -> None:
    """snake_case names: the copy is a rewrite, not the source's bytes, so the pass reads the copy."""
    payload = tmp_path / "snake.json"
    payload.write_bytes(sample_otlp.read_bytes().replace(b'"traceId"', b'"trace_id"')
                        .replace(b'"startTimeUnixNano"', b'"start_time_unix_nano"'))
    result = materialize(build_conformance_assets(parallel=True), payload, tmp_path / "dagster")
    assert result.success, step_failure(result)
    collected = result.get_asset_materialization_events()[0].materialization.metadata
    assert collected["converted"].value is True
    assert collected["source_sha256"].value == hashlib.sha256(payload.read_bytes()).hexdigest()
    copy = tmp_path / "dagster" / "trace" / artifacts.COLLECTED
    assert b'"traceId"' in copy.read_bytes() and b'"trace_id"' not in copy.read_bytes()
    run_conformance(copy, tmp_path / "cli", ConformanceOptions(parallel=True))
    for name in (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE):
        assert (tmp_path / "dagster" / "trace" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    report = orjson.loads((tmp_path / "dagster" / "trace" / artifacts.VALIDATION).read_bytes())
    assert report["summary"]["input"]["source"] == str(payload) and report["summary"]["input"]["format"] == "otlp-json"


@pytest.mark.parametrize("parallel", [False, True], ids=["collected-first", "collected-by-the-worker"])
def test_a_copy_that_cannot_be_written_fails_the_step(tmp_path: Path, parallel: bool) -> None:
    """The copy fails (its folder is a file): that error is the step's, also when the worker made
    the copy while the source was decoded."""
    payload = tmp_path / "trace.json"
    generate(payload, GenerateOptions(events=300, keys=100))
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "trace").write_text("a file where the folder should be")
    result = materialize(build_conformance_assets(parallel=parallel), payload, reports)
    assert not result.success
    assert steps_run(result) == [STEP_NAME] and result.get_asset_materialization_events() == []
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    chain = []
    while error is not None:
        chain.append((error.cls_name, error.message))
        error = error.cause
    assert any(name == "OutputError" and "collected-kvonce-otlp.json" in message for name, message in chain), chain
