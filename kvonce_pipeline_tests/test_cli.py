"""The `kvonce` command as CI uses it: a real subprocess, its exit code, its files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from .conftest import VENV_BIN


def kvonce(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "kvonce"), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_valid_trace_exits_0_and_writes_every_artifact(sample_otlp: Path, tmp_path: Path) -> None:
    done = kvonce("conformance", "--input", str(sample_otlp), "--output-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for name in ("kvonce-events.ndjson", "kvonce-projection.json", "projected/kvonce-state-sequence.json",
                 "kvonce-validation.json", "kvonce-summary.md"):
        assert (tmp_path / name).is_file(), name
    report = orjson.loads((tmp_path / "kvonce-validation.json").read_bytes())
    assert report["valid"] is True
    assert report["summary"]["input"]["format"] == "otlp-json"
    assert "valid: 7 events" in done.stderr
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files left behind"


def test_strict_and_max_retries_change_the_verdict(sample_ndjson: Path, tmp_path: Path) -> None:
    assert kvonce("conformance", "--input", str(sample_ndjson), "--output-dir", str(tmp_path)).returncode == 0
    strict = kvonce("conformance", "--input", str(sample_ndjson), "--output-dir", str(tmp_path), "--strict")
    assert strict.returncode == 1
    assert "duplicate-before-success key=beta" in strict.stderr
    zero = kvonce("conformance", "--input", str(sample_ndjson), "--output-dir", str(tmp_path), "--max-retries", "0")
    assert zero.returncode == 1
    report = orjson.loads((tmp_path / "kvonce-validation.json").read_bytes())
    assert report["maxRetries"] == 0
    assert any(i["type"] == "retry-bound-exceeded" for i in report["issues"])


def test_disable_leaves_a_kvonce_rule_out_of_the_verdict(sample_ndjson: Path, tmp_path: Path) -> None:
    """--disable works on KvOnce as on every domain: the strict run's only finding gone, exit 0, and the
    report and summary say which rules were left out; a rule KvOnce lacks is exit 2 before reading."""
    run = kvonce("conformance", "--input", str(sample_ndjson), "--output-dir", str(tmp_path), "--strict",
                 "--disable", "duplicate-before-success")
    assert run.returncode == 0, run.stderr
    report = orjson.loads((tmp_path / "kvonce-validation.json").read_bytes())
    assert report["disabledRules"] == ["duplicate-before-success"] and report["issues"] == []
    assert "disabled: duplicate-before-success" in (tmp_path / "kvonce-summary.md").read_text()
    typo = kvonce("conformance", "--input", str(sample_ndjson), "--output-dir", str(tmp_path / "t"),
                  "--disable", "duplicate-before-sucess")
    assert typo.returncode == 2 and "duplicate-before-sucess" in typo.stderr
    assert not (tmp_path / "t" / "kvonce-validation.json").exists()


def test_unusable_input_exits_2_and_leaves_no_valid_report(sample_otlp: Path, tmp_path: Path) -> None:
    assert kvonce("conformance", "--input", str(sample_otlp), "--output-dir", str(tmp_path)).returncode == 0
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"timestamp":"2025-10-04T06:00:00.000Z","type":"success","key":"a","value":"v"}\n{oops\n')
    before = bad.read_bytes()
    done = kvonce("conformance", "--input", str(bad), "--output-dir", str(tmp_path))
    assert done.returncode == 2
    assert f"{bad}: line 2: not valid JSON" in done.stderr
    report = orjson.loads((tmp_path / "kvonce-validation.json").read_bytes())
    assert report["valid"] is False and report["inputError"]["where"] == "line 2"
    assert not (tmp_path / "kvonce-events.ndjson").exists(), "stale events from the earlier run removed"
    assert bad.read_bytes() == before, "the input is never modified"


def test_missing_file_and_bad_arguments_exit_2(tmp_path: Path) -> None:
    done = kvonce("conformance", "--input", str(tmp_path / "nope.json"), "--output-dir", str(tmp_path))
    assert done.returncode == 2 and "no such file" in done.stderr
    assert kvonce("conformance").returncode == 2
    assert kvonce("conformance", "--input", "x", "--format", "xml").returncode == 2


def test_violations_exit_1_and_name_the_event(tmp_path: Path) -> None:
    trace = tmp_path / "t.ndjson"
    trace.write_text('{"timestamp":"2025-10-04T06:00:00.000Z","type":"success","key":"a","value":"v1"}\n'
                     '{"timestamp":"2025-10-04T06:00:01.000Z","type":"success","key":"a","value":"v2"}\n')
    done = kvonce("conformance", "--input", str(trace), "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "multiple-success key=a event=1 (line 2)" in done.stderr
    summary = (tmp_path / "out" / "kvonce-summary.md").read_text()
    assert "**Verdict: INVALID**" in summary and "`multiple-success`" in summary


def test_github_step_summary_is_appended(sample_ndjson: Path, tmp_path: Path) -> None:
    step_summary = tmp_path / "step.md"
    step_summary.write_text("earlier step\n")
    kvonce("conformance", "--input", str(sample_ndjson), "--output-dir", str(tmp_path / "o"),
           env={"GITHUB_STEP_SUMMARY": str(step_summary)})
    text = step_summary.read_text()
    assert text.startswith("earlier step\n") and "KvOnce trace conformance" in text


def test_convert_writes_ndjson_to_stdout_or_file(sample_otlp: Path, tmp_path: Path) -> None:
    done = kvonce("convert", "--input", str(sample_otlp))
    assert done.returncode == 0
    rows = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [r["type"] for r in rows] == ["success", "retry", "retry", "failure", "success", "failure", "success"]
    assert rows[0]["event"] == "success" and rows[0]["timeUnixNano"] == "1759557600000000000"
    out = tmp_path / "events.ndjson"
    assert kvonce("convert", "--input", str(sample_otlp), "--output", str(out)).returncode == 0
    assert out.read_text() == done.stdout


def test_module_entry_point(sample_ndjson: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "kvonce_pipeline", "conformance", "--input", str(sample_ndjson),
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_reported_format_label_is_accepted_back(sample_otlp: Path, tmp_path: Path) -> None:
    """A one-line OTLP/JSON document is reported as otlp-jsonl; --format must take that label back."""
    one_line = tmp_path / "one-line.json"
    one_line.write_bytes(orjson.dumps(orjson.loads(sample_otlp.read_bytes())))
    out = tmp_path / "out"
    assert kvonce("conformance", "--input", str(one_line), "--output-dir", str(out)).returncode == 0
    label = orjson.loads((out / "kvonce-validation.json").read_bytes())["summary"]["input"]["format"]
    assert label == "otlp-jsonl"
    again = kvonce("conformance", "--input", str(one_line), "--output-dir", str(out), "--format", label)
    assert again.returncode == 0, again.stderr
    assert orjson.loads((out / "kvonce-validation.json").read_bytes())["summary"]["input"]["format"] == label
    delimited = tmp_path / "trace.pbd"
    assert kvonce("generate", "--events", "50", "--keys", "10", "--format", "otlp-proto-delimited",
                  "--output", str(delimited)).returncode == 0
    assert kvonce("conformance", "--input", str(delimited), "--output-dir", str(out)).returncode == 0
    label = orjson.loads((out / "kvonce-validation.json").read_bytes())["summary"]["input"]["format"]
    assert label == "otlp-proto-delimited"
    assert kvonce("conformance", "--input", str(delimited), "--output-dir", str(out), "--format", label).returncode == 0


def test_messages_name_the_real_problem(sample_otlp: Path, sample_ndjson: Path, tmp_path: Path) -> None:
    pretty = kvonce("conformance", "--input", str(sample_otlp), "--output-dir", str(tmp_path / "a"),
                    "--format", "ndjson")
    assert pretty.returncode == 2
    assert "OTLP/JSON document" in pretty.stderr and "--format otlp-json" in pretty.stderr
    a_file = tmp_path / "README.md"
    a_file.write_text("mine")
    into_file = kvonce("conformance", "--input", str(sample_ndjson), "--output-dir", str(a_file))
    assert into_file.returncode == 2
    assert "is a file, not a folder" in into_file.stderr and "File exists" not in into_file.stderr
    assert a_file.read_text() == "mine"
    into_dir = kvonce("convert", "--input", str(sample_ndjson), "--output", str(tmp_path))
    assert into_dir.returncode == 2
    assert "is a folder" in into_dir.stderr and "cannot write reports" not in into_dir.stderr


def test_cli_says_how_many_findings_it_did_not_print(tmp_path: Path) -> None:
    trace = tmp_path / "broken.ndjson"
    assert kvonce("generate", "--events", "400", "--keys", "80", "--format", "ndjson", "--violations", "0.08",
                  "--output", str(trace)).returncode == 0
    done = kvonce("conformance", "--input", str(trace), "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 1
    report = orjson.loads((tmp_path / "out" / "kvonce-validation.json").read_bytes())
    total = len(report["issues"])
    assert total > 20
    printed = [line for line in done.stderr.splitlines() if line.startswith(("  error:", "  warning:"))]
    assert len(printed) == 20
    assert f"... and {total - 20} more findings ({total} in all)" in done.stderr
    assert "kvonce-validation.json" in done.stderr.splitlines()[-1]
    summary = (tmp_path / "out" / "kvonce-summary.md").read_text()
    assert "0-based line index into `kvonce-events.ndjson`" in summary
    assert "### Findings by rule" in summary
    for rule, count in report["summary"]["byRule"].items():
        assert f"| `{rule}` |" in summary and f"| {count} |" in summary


def test_unreadable_input_is_exit_2_and_replaces_the_valid_report(sample_ndjson: Path, tmp_path: Path) -> None:
    assert kvonce("conformance", "--input", str(sample_ndjson), "--output-dir", str(tmp_path)).returncode == 0
    (tmp_path / "collected-kvonce-otlp.json").write_text("{}")  # another input's collected copy
    done = kvonce("conformance", "--input", "/proc/self/mem", "--output-dir", str(tmp_path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "cannot read" in done.stderr
    report = orjson.loads((tmp_path / "kvonce-validation.json").read_bytes())
    assert report["valid"] is False and report["inputError"]["source"] == "/proc/self/mem"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvonce-summary.md", "kvonce-validation.json",
                                                          "trace-summary.json", "trace-summary.md"]
    trace_summary = orjson.loads((tmp_path / "trace-summary.json").read_bytes())
    assert [(d["key"], d["status"]) for d in trace_summary["domains"]] == [("kvonce", "error")]
    assert trace_summary["aggregate"]["exitCode"] == 2


def test_default_output_is_apart_from_the_dagster_jobs_artifacts(sample_ndjson: Path, tmp_path: Path) -> None:
    """The CLI without --output-dir writes <reports>/cli/trace, never the job's <reports>/trace."""
    reports = tmp_path / "reports"
    job_report = reports / "trace" / "kvonce-validation.json"
    job_report.parent.mkdir(parents=True)
    job_report.write_text('{"the job": "wrote this"}')
    done = kvonce("conformance", "--input", str(sample_ndjson), env={"KVONCE_REPORTS_DIR": str(reports)})
    assert done.returncode == 0, done.stderr
    assert (reports / "cli" / "trace" / "kvonce-validation.json").is_file()
    assert job_report.read_text() == '{"the job": "wrote this"}'
    assert str(reports / "cli" / "trace") in done.stderr
