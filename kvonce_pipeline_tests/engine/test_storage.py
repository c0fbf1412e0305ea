"""Inputs and reports on an object store: ``kvonce conformance`` against a real S3-compatible server
(moto's, started on loopback for this module and stopped after it), reached through s3fs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


from kvonce_pipeline.domains.kvonce import artifacts
from kvonce_pipeline.devtools.generate import GenerateOptions, generate
from kvonce_pipeline.devtools.local_s3 import free_port
from kvonce_pipeline.engine.storage import StagedInput, is_remote, local_path

from ..conftest import VENV_BIN
from ..s3_server import BUCKET, s3_client

SAMPLE = artifacts.BUNDLED_SAMPLE
def _kvonce(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "kvonce"), "conformance", "--no-progress", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_trace_in_a_bucket_gives_the_same_reports_in_a_bucket_as_on_disk(s3_env: dict[str, str],
                                                                         tmp_path: Path) -> None:
    s3 = s3_client(s3_env)
    trace = tmp_path / "violating.ndjson"
    generate(trace, GenerateOptions(events=3000, keys=400, format="ndjson", violations=0.05, seed=7))
    s3.put_file(str(trace), f"{BUCKET}/in/violating.ndjson")
    before = s3.info(f"{BUCKET}/in/violating.ndjson")["ETag"]
    url = f"s3://{BUCKET}/in/violating.ndjson"

    remote = _kvonce(s3_env, "--input", url, "--output-dir", f"s3://{BUCKET}/reports/run")
    local = _kvonce(s3_env, "--input", str(trace), "--output-dir", str(tmp_path / "local"))
    assert remote.returncode == local.returncode == 1, remote.stderr
    assert f"reports in s3://{BUCKET}/reports/run" in remote.stderr
    for name in (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE):
        assert s3.cat_file(f"{BUCKET}/reports/run/{name}") == (tmp_path / "local" / name).read_bytes(), name
    report = json.loads(s3.cat_file(f"{BUCKET}/reports/run/{artifacts.VALIDATION}"))
    expected = json.loads((tmp_path / "local" / artifacts.VALIDATION).read_text())
    assert report["summary"]["input"]["source"] == url  # the object the user named, not the private copy
    expected["summary"]["input"]["source"] = url
    assert report == expected
    assert url in s3.cat_file(f"{BUCKET}/reports/run/{artifacts.SUMMARY}").decode()
    assert s3.info(f"{BUCKET}/in/violating.ndjson")["ETag"] == before, "the input object is never touched"


def test_a_missing_object_is_exit_2_and_its_report_replaces_the_earlier_run(s3_env: dict[str, str]) -> None:
    s3 = s3_client(s3_env)
    s3.put_file(str(SAMPLE), f"{BUCKET}/in/sample.json")
    out = f"s3://{BUCKET}/reports/again"
    assert _kvonce(s3_env, "--input", f"s3://{BUCKET}/in/sample.json", "--output-dir", out).returncode == 0
    assert s3.exists(f"{BUCKET}/reports/again/{artifacts.EVENTS}")

    missing = f"s3://{BUCKET}/in/nothing-here.json"
    result = _kvonce(s3_env, "--input", missing, "--output-dir", out)
    assert result.returncode == 2 and f"{missing}: no such object" in result.stderr
    s3.invalidate_cache()
    report = json.loads(s3.cat_file(f"{BUCKET}/reports/again/{artifacts.VALIDATION}"))
    assert report["valid"] is False and report["inputError"]["source"] == missing
    # the earlier run's data files are not left beside a report that does not describe them
    assert not s3.exists(f"{BUCKET}/reports/again/{artifacts.EVENTS}")
    assert not s3.exists(f"{BUCKET}/reports/again/{artifacts.PROJECTION}")


def test_a_scheme_without_a_backend_is_a_clear_exit_2(tmp_path: Path) -> None:
    result = subprocess.run([str(VENV_BIN / "kvonce"), "conformance", "--input", str(SAMPLE), "--output-dir",
                             "gs://bucket/reports"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "gs://bucket/reports: no storage backend for gs:// is installed" in result.stderr


def test_file_urls_and_paths_are_local() -> None:
    assert not is_remote("file:///tmp/x.json") and not is_remote("/tmp/x.json") and not is_remote("x.json")
    assert is_remote("s3://bucket/x.json") and is_remote("memory://x")
    assert local_path("file:///tmp/x.json") == Path("/tmp/x.json")
    staged = StagedInput("s3://b/k.json", Path("/tmp/copy/k.json"))
    assert (str(staged), os.fspath(staged)) == ("s3://b/k.json", "/tmp/copy/k.json")


def test_a_bucket_that_does_not_exist_is_exit_2_and_is_not_created(s3_env: dict[str, str]) -> None:
    result = _kvonce(s3_env, "--input", str(SAMPLE), "--output-dir", "s3://no-such-bucket-typo/reports")
    assert result.returncode == 2 and "the bucket no-such-bucket-typo does not exist" in result.stderr
    s3 = s3_client(s3_env)
    s3.invalidate_cache()
    assert not s3.exists("no-such-bucket-typo")


def test_a_store_that_cannot_be_reached_is_exit_2_not_a_violation(s3_env: dict[str, str]) -> None:
    """botocore's errors are not OSErrors: each is mapped to an unusable input or output (exit 2)."""
    unreachable = {**s3_env, "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    result = _kvonce(unreachable, "--input", f"s3://{BUCKET}/in/sample.json", "--output-dir", "/dev/null/x")
    assert result.returncode == 2 and f"s3://{BUCKET}/in/sample.json: cannot read:" in result.stderr
    assert "Traceback" not in result.stderr
    no_keys = {k: v for k, v in s3_env.items() if not k.startswith("AWS_")}
    no_keys.update({"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                    "AWS_EC2_METADATA_DISABLED": "true"})
    result = _kvonce(no_keys, "--input", str(SAMPLE), "--output-dir", f"s3://{BUCKET}/reports/nokeys")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_key_shards_read_and_publish_through_the_store_too(s3_env: dict[str, str], tmp_path: Path) -> None:
    s3 = s3_client(s3_env)
    trace = tmp_path / "t.ndjson"
    generate(trace, GenerateOptions(events=2000, keys=300, format="ndjson", violations=0.05, seed=3))
    s3.put_file(str(trace), f"{BUCKET}/in/t.ndjson")
    sharded = _kvonce(s3_env, "--input", f"s3://{BUCKET}/in/t.ndjson", "--output-dir", f"s3://{BUCKET}/sh",
                      "--shards", "2", "--engine", "local")
    one = _kvonce(s3_env, "--input", f"s3://{BUCKET}/in/t.ndjson", "--output-dir", f"s3://{BUCKET}/one")
    assert sharded.returncode == one.returncode == 1, sharded.stderr
    for name in (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE, artifacts.VALIDATION):
        assert s3.cat_file(f"{BUCKET}/sh/{name}") == s3.cat_file(f"{BUCKET}/one/{name}"), name
    refused = _kvonce(s3_env, "--input", str(trace), "--output-dir", f"s3://{BUCKET}/x", "--shards", "2",
                      "--scheduler", "tcp://127.0.0.1:1")
    assert refused.returncode == 2 and "a folder every dask worker sees" in refused.stderr


def test_publish_without_a_report_removes_an_earlier_run_and_restore_fetches_what_is_published(
        tmp_path: Path) -> None:
    """fsspec's in-memory store (a real backend, no server): a run that wrote none of its files (a domain
    absent from the payload) leaves no earlier run's files behind; a step apart reads what was published."""
    import fsspec

    from kvonce_pipeline.engine.storage import publish, restore

    names = ("data.ndjson", "sub/states.json", "report.json")
    wrote = tmp_path / "wrote"
    for name in names:
        (wrote / name).parent.mkdir(parents=True, exist_ok=True)
        (wrote / name).write_text(name)
    url = "memory://kvonce-publish-test/run"
    publish(wrote, url, names)
    memory = fsspec.filesystem("memory")
    assert [memory.cat_file(f"/kvonce-publish-test/run/{n}").decode() for n in names] == list(names)

    apart = tmp_path / "apart"
    (apart / "data.ndjson").parent.mkdir(parents=True)
    (apart / "data.ndjson").write_text("mine")
    assert restore(apart, url, names) == ["sub/states.json", "report.json"]
    assert (apart / "data.ndjson").read_text() == "mine", "a file the step has is not replaced"
    assert (apart / "sub/states.json").read_text() == "sub/states.json"

    (tmp_path / "nothing").mkdir()
    publish(tmp_path / "nothing", url, names)
    assert not any(memory.exists(f"/kvonce-publish-test/run/{n}") for n in names)
    assert restore(tmp_path / "nothing", url, names) == []
