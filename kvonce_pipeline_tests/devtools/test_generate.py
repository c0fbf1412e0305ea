"""``kvonce generate``: deterministic traces in every input form, valid or with each violation."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from kvonce_pipeline.cli import main
from kvonce_pipeline.domains.kvonce.own_pass.conformance import ConformanceOptions, run_conformance
from kvonce_pipeline.devtools.generate import FORMATS, VIOLATIONS, GenerateOptions, generate
from kvonce_pipeline.engine.decode.reader import InputFormat
from kvonce_pipeline.domains.kvonce.reader import read_trace
from kvonce_pipeline.domains.kvonce.validation import RULES

from ..conftest import VENV_BIN


def _fields(events):
    return [(e.time_unix_nano, e.type, e.key, e.value, e.reason, e.context, e.trace_id, e.span_id, e.actor)
            for e in events]


def test_same_arguments_same_bytes(tmp_path: Path) -> None:
    options = GenerateOptions(events=500, keys=200, violations=0.01)
    generate(tmp_path / "a.json", options)
    generate(tmp_path / "b.json", options)
    generate(tmp_path / "c.json", GenerateOptions(events=500, keys=200, violations=0.01, seed=2))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()


def test_every_form_holds_the_same_events(tmp_path: Path) -> None:
    expected = {
        "ndjson": InputFormat.NDJSON,
        "otlp-json": InputFormat.OTLP_JSONL,  # one line: a one-batch JSON Lines file to the sniffer
        "otlp-jsonl": InputFormat.OTLP_JSONL,
        "otlp-proto": InputFormat.OTLP_PROTO,
        "otlp-proto-delimited": InputFormat.OTLP_PROTO_DELIMITED,
    }
    reference = None
    for form in FORMATS:
        path = tmp_path / f"trace.{form}"
        assert generate(path, GenerateOptions(events=1200, keys=400, format=form, batch_spans=100)) == 1200
        trace = read_trace(path)
        assert trace.format is expected[form]
        assert len(trace.events) == 1200
        assert len({e.key for e in trace.events}) == 400
        assert not trace.reordered, "generated traces are in time order"
        if reference is None:
            reference = _fields(trace.events)
        assert _fields(trace.events) == reference, form


def test_gzip_output_reads_the_same(tmp_path: Path) -> None:
    options = GenerateOptions(events=300, keys=100, format="otlp-proto-delimited")
    generate(tmp_path / "plain.pbd", options)
    generate(tmp_path / "packed.pbd.gz", GenerateOptions(**{**options.__dict__, "gzip": True}))
    assert gzip.decompress((tmp_path / "packed.pbd.gz").read_bytes()) == (tmp_path / "plain.pbd").read_bytes()
    assert read_trace(tmp_path / "packed.pbd.gz").compressed


def test_a_valid_trace_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "valid.json"
    generate(path, GenerateOptions(events=3000, keys=1000))
    result = run_conformance(path, tmp_path / "out")
    assert result.valid
    assert result.report["issues"] == []
    assert result.report["summary"]["keys"] == 1000


def test_each_violation_shows_up_at_its_rate(tmp_path: Path) -> None:
    path = tmp_path / "broken.ndjson"
    generate(path, GenerateOptions(events=6000, keys=2000, format="ndjson", violations=0.02))
    report = run_conformance(path, tmp_path / "out").report
    by_rule = report["summary"]["byRule"]
    assert set(VIOLATIONS) <= set(RULES)
    for rule in VIOLATIONS:
        # 2000 keys x 2% = 40 expected per rule; a wide band, as the draw is random (but fixed)
        assert 10 <= by_rule.get(rule, 0) <= 120, (rule, by_rule)
    assert not report["valid"]


def test_cli_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.pb"
    assert main(["generate", "--events", "50", "--keys", "10", "--format", "otlp-proto", "--output", str(out)]) == 0
    assert len(read_trace(out).events) == 50
    assert main(["generate", "--events", "5", "--keys", "10", "--output", str(out)]) == 2
    assert "cannot exceed" in capsys.readouterr().err


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        list(__import__("kvonce_pipeline.devtools.generate", fromlist=["iter_steps"]).iter_steps(
            GenerateOptions(events=10, keys=5, violations=0.5)))


# --- another domain's generator (kvonce generate --domain NAME) -------------------------------------

def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "kvonce"), *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def test_another_domains_trace_reads_the_same_in_every_form(tmp_path: Path) -> None:
    """``--domain inventory``: the domain's own generator; every form gives the same findings."""
    import hashlib

    import orjson

    seen = []
    for form, zipped in (("ndjson", False), ("otlp-json", True), ("otlp-jsonl", False), ("otlp-proto", True)):
        path = tmp_path / f"inv-{form}{'.gz' if zipped else ''}"
        args = ["generate", "--domain", "inventory", "--events", "3000", "--violations", "0.003", "--seed", "4",
                "--format", form, "--output", str(path), *(["--gzip"] if zipped else [])]
        made = _cli(*args)
        assert made.returncode == 0, made.stderr
        assert "3000 Inventory events" in made.stderr
        first = hashlib.sha256(path.read_bytes()).hexdigest()
        assert _cli(*args).returncode == 0 and hashlib.sha256(path.read_bytes()).hexdigest() == first  # same bytes
        done = _cli("conformance", "--input", str(path), "--domain", "inventory", "--output-dir", str(tmp_path / form))
        assert done.returncode == 1, done.stderr  # the injected faults
        report = orjson.loads((tmp_path / form / "inventory" / "inventory-validation.json").read_bytes())
        seen.append([(i["eventIndex"], i["type"], i["key"]) for i in report["issues"]])
    assert seen[0] and all(findings == seen[0] for findings in seen)


def test_another_domains_generator_refuses_what_it_cannot_do(tmp_path: Path, toy_project) -> None:
    out = str(tmp_path / "x")
    keys = _cli("generate", "--domain", "inventory", "--events", "10", "--keys", "3", "--output", out)
    assert keys.returncode == 2 and "--keys is not used" in keys.stderr
    form = _cli("generate", "--domain", "inventory", "--events", "10", "--format", "otlp-proto-delimited",
                "--output", out)
    assert form.returncode == 2 and "KvOnce's only" in form.stderr
    none = _cli("generate", "--domain", "toy", "--events", "10", "--output", out, env=toy_project.env())
    assert none.returncode == 2 and "has no generator" in none.stderr
    unknown = _cli("generate", "--domain", "nope", "--events", "10", "--output", out)
    assert unknown.returncode == 2 and "no domain 'nope'" in unknown.stderr
    kv = _cli("generate", "--events", "10", "--output", out)
    assert kv.returncode == 2 and "--keys is required" in kv.stderr
    assert not (tmp_path / "x").exists()
