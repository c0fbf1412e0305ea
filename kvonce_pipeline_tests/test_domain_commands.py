"""``kvonce domain new | list | doc`` and a domain made only from the template, end to end through
the real ``kvonce`` command: no engine file changes for a new domain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from kvonce_pipeline.engine.domain_render import write_trace
from kvonce_pipeline.engine.domain import DomainEvent

from .conftest import VENV_BIN
from .test_cli import kvonce
from .toy_domain import ToyProject

T0 = 1_767_225_600_000_000_000


def test_new_writes_a_package_whose_own_test_passes(toy_project: ToyProject) -> None:
    project = toy_project.project
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == [
        "kvonce_domain_toy/__init__.py", "kvonce_domain_toy/domain.toml", "kvonce_domain_toy/machine.py",
        "kvonce_domain_toy/samples/toy-sample.ndjson", "pyproject.toml", "tests/test_toy.py"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_new_refuses_bad_names_and_never_overwrites(toy_project: ToyProject, tmp_path: Path) -> None:
    bad = kvonce("domain", "new", "Bad-Name", "--prefix", "x.", "--dir", str(tmp_path))
    assert bad.returncode == 2 and "domain name 'Bad-Name'" in bad.stderr
    bad = kvonce("domain", "new", "fine", "--prefix", "no_dot", "--dir", str(tmp_path))
    assert bad.returncode == 2 and "--prefix" in bad.stderr
    again = kvonce("domain", "new", "toy", "--prefix", "toy.event.", "--dir", str(toy_project.project.parent))
    assert again.returncode == 2 and "exists already" in again.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_list_and_doc_show_an_installed_domain(toy_project: ToyProject) -> None:
    listed = kvonce("domain", "list", env=toy_project.env())
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert rows[0].startswith("kvonce ") and any(row.startswith("toy ") and "toy.event." in row for row in rows)
    doc = kvonce("domain", "doc", "toy", env=toy_project.env())
    assert doc.returncode == 0, doc.stderr
    assert "# Toy trace schema (`toy`)" in doc.stdout
    assert "| `reason` | string | `close` |" in doc.stdout
    assert "| `close-without-open` | error |" in doc.stdout and "| `allow_left_open` | boolean | `False` |" in doc.stdout
    missing = kvonce("domain", "doc", "nope")
    assert missing.returncode == 2 and "no domain 'nope' is installed" in missing.stderr


def test_the_template_domain_through_the_cli(toy_project: ToyProject, tmp_path: Path) -> None:
    """The third domain: its NDJSON sample, a violating OTLP payload, and a mixed KvOnce + toy payload."""
    env = toy_project.env()
    ok = kvonce("conformance", "--input", str(toy_project.sample), "--domain", "toy", "--output-dir",
                str(tmp_path / "a"), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "[toy] valid: 4 events" in ok.stderr
    from kvonce_pipeline.engine import registry  # the toy domain object, loaded as the CLI loads it

    sys.path[:0] = toy_project.paths
    registry._load.cache_clear()
    try:
        toy = registry.get("toy")
    finally:
        del sys.path[:len(toy_project.paths)]
        registry._load.cache_clear()
    bad = tmp_path / "bad.pb"
    write_trace(toy, [DomainEvent(T0, "close", "k", {"reason": "x"}, "a" * 32, "b" * 16, "svc")], bad, "otlp-proto")
    failed = kvonce("conformance", "--input", str(bad), "--output-dir", str(tmp_path / "b"), env=env)
    assert failed.returncode == 1, failed.stderr
    assert "[toy] INVALID" in failed.stderr and "close-without-open key=k" in failed.stderr
    report = orjson.loads((tmp_path / "b" / "toy" / "toy-validation.json").read_bytes())
    assert report["issues"][0]["traceId"] == "a" * 32
    assert not (tmp_path / "b" / "kvonce-validation.json").exists()
    option = kvonce("conformance", "--input", str(bad), "--output-dir", str(tmp_path / "c"),
                    "--option", "toy.allow_left_open=true", "--disable", "close-without-open", env=env)
    assert option.returncode == 0, option.stderr
    wrong = kvonce("conformance", "--input", str(bad), "--option", "toy.colour=red", env=env)
    assert wrong.returncode == 2 and "has no option 'colour'" in wrong.stderr


def test_the_cli_checks_every_domain_of_a_mixed_payload(toy_project: ToyProject, sample_otlp: Path,
                                                        tmp_path: Path) -> None:
    document = orjson.loads(sample_otlp.read_bytes())
    document["resourceSpans"].append({"resource": {"attributes": []}, "scopeSpans": [{"spans": [{
        "traceId": "c" * 32, "spanId": "d" * 16, "startTimeUnixNano": str(T0),
        "attributes": [{"key": "toy.event.type", "value": {"stringValue": "close"}},
                       {"key": "toy.event.key", "value": {"stringValue": "z"}},
                       {"key": "toy.event.reason", "value": {"stringValue": "early"}}]}]}]})
    mixed = tmp_path / "mixed.json"
    mixed.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    done = kvonce("conformance", "--input", str(mixed), "--output-dir", str(tmp_path / "out"), env=toy_project.env())
    assert done.returncode == 1, done.stderr  # KvOnce valid, toy invalid: the worst
    assert "kvonce: valid: 7 events" in done.stderr and "[toy] INVALID: 1 events" in done.stderr
    assert "overall: invalid (2 domains)" in done.stderr
    summary = orjson.loads((tmp_path / "out" / "trace-summary.json").read_bytes())
    assert [(d["key"], d["status"]) for d in summary["domains"]] == [("kvonce", "valid"), ("toy", "invalid")]
    only = kvonce("conformance", "--input", str(mixed), "--domain", "kvonce", "--output-dir", str(tmp_path / "k"),
                  env=toy_project.env())
    assert only.returncode == 0 and not (tmp_path / "k" / "toy").exists()


def test_kvonce_is_documented_from_its_definition() -> None:
    doc = subprocess.run([str(VENV_BIN / "kvonce"), "domain", "doc", "kvonce"], capture_output=True, text=True,
                         timeout=60)
    assert doc.returncode == 0
    from kvonce_pipeline.domains.kvonce.validation import RULES

    for rule in RULES.values():
        assert f"| `{rule.id}` | {rule.severity} |" in doc.stdout
    assert "`kvonce.event.value`" in doc.stdout and "| `success` | `value` |" in doc.stdout


def test_the_readme_rule_tables_are_the_generated_ones() -> None:
    """The README shows each built-in domain's rules as ``kvonce domain doc`` prints them: edit the
    domain's definition, then paste the table again (this test says which one drifted)."""
    from kvonce_pipeline.engine import registry
    from kvonce_pipeline.engine.domain_doc import render_domain_doc

    from .conftest import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("kvonce", "inventory"):
        doc = render_domain_doc(registry.get(name))
        table = doc[doc.index("| id | severity | finding |"):doc.index("\n\n`--strict`")]
        assert table in readme, f"README's {name} rule table differs from `kvonce domain doc {name}`"
