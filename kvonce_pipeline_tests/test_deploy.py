"""What can be checked of the deployment files without a cluster: they parse, they agree with each
other, the production instance loads on a real PostgreSQL server, and the image's install step
succeeds in a clean virtual environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import PROJECT_ROOT
from .postgres import DEPLOY_CONFIG

HELM_VALUES = PROJECT_ROOT / "deploy" / "helm" / "values.yaml"
DOCKERFILE = PROJECT_ROOT / "deploy" / "Dockerfile"


@pytest.mark.slow  # starts PostgreSQL (once per session)
def test_the_instance_on_postgres_loads_with_its_queue(postgres_url: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    (tmp_path / "dagster.yaml").write_text(DEPLOY_CONFIG.read_text())
    monkeypatch.setenv("DAGSTER_PG_URL", postgres_url)
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path)))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 8
        assert queue.tag_concurrency_limits == [
            {"key": "kvonce/store-scope", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
            {"key": "kvonce/store-fold", "limit": 1}]
    finally:
        instance.dispose()


def test_the_queue_limits_name_tags_our_runs_carry() -> None:
    """A limit on a tag no run carries limits nothing: the drop runs carry the scope, the store jobs the fold."""
    from kvonce_pipeline.orchestration.drops.assets import (TAG_SCOPE, TAG_STORE_FOLD, kvonce_store_job,
                                                            kvonce_store_reset_job)

    limits = {entry["key"]: entry for entry in
              yaml.safe_load(DEPLOY_CONFIG.read_text())["concurrency"]["runs"]["tag_concurrency_limits"]}
    assert limits[TAG_SCOPE]["value"] == {"applyLimitPerUniqueValue": True} and limits[TAG_SCOPE]["limit"] == 1
    assert limits[TAG_STORE_FOLD]["limit"] == 1
    for job in (kvonce_store_job, kvonce_store_reset_job):
        assert TAG_STORE_FOLD in job.tags, job.name


def test_the_helm_values_parse_and_match_the_instance_file() -> None:
    values = yaml.safe_load(HELM_VALUES.read_text())
    instance = yaml.safe_load(DEPLOY_CONFIG.read_text())
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    runs = instance["concurrency"]["runs"]
    assert queued["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "kvonce_pipeline.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert sorted(f"{k}={v}" for k, v in env.items()) == sorted(launcher["envVars"]), \
        "the sensor (code location) and the runs see the same folders"
    assert deployment["volumeMounts"] == launcher["volumeMounts"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


#: The top-level sections of deploy/helm/values.yaml when they were last checked against the chart's
#: schema with deploy/check_helm_values.py (deploy/README.md has the command, chart and result). CI
#: cannot run that check (the schema is not on a package registry and is not copied here): a section
#: added since fails this test until the check is run again and this set updated.
CHECKED_TOP_LEVEL = {"dagster-user-deployments", "runLauncher", "postgresql", "dagsterDaemon", "telemetry"}


def test_the_helm_values_sections_are_the_ones_checked_against_the_chart_schema() -> None:
    assert set(yaml.safe_load(HELM_VALUES.read_text())) == CHECKED_TOP_LEVEL


def _checker():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_helm_values", PROJECT_ROOT / "deploy" / "check_helm_values.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module  # its dataclasses look their module up while being built
        spec.loader.exec_module(module)
    return module


#: A schema shaped like the chart's (written here, not the chart's): a map section whose required
#: key the chart's defaults fill, a list of items whose required keys nothing fills, a closed map.
TOY_SCHEMA = {
    "type": "object", "additionalProperties": True,
    "properties": {
        "section": {"type": "object", "additionalProperties": False, "required": ["filled", "items"],
                    "properties": {"filled": {"type": "string"},
                                   "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
                                   "pod": {"$ref": "https://example.invalid/k8s/_definitions.json#/definitions/Volume"}}},
    },
    "$defs": {"Item": {"type": "object", "required": ["name", "port"],
                       "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}},
}


@pytest.mark.parametrize("values, expected", [
    ("section:\n  items:\n    - {name: a, port: 1}\n", []),
    ("section:\n  items:\n    - {name: a}\n", ["line 3: section.items[0]: 'port' is a required property"]),
    ("section:\n  items: []\n  typo: 1\n", ["line 2: section: Additional properties are not allowed ('typo' was unexpected)"]),
    ("section:\n  items:\n    - {name: a, port: '1'}\n", ["line 3: section.items[0].port: '1' is not of type 'integer'"]),
    ("section:\n  items: []\nsectoin: {}\n", ["line 3: sectoin: not a key of the chart (helm would ignore it)"]),
    ("section:\n  items: []\n  pod: {name: 5}\n", ["line 3: section.pod.name: 5 is not of type 'string'"]),
])
def test_the_helm_values_checker_follows_helm_merging(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      values: str, expected: list[str]) -> None:
    """deploy/check_helm_values.py on a toy schema: ``required`` is skipped where helm merges the
    chart's defaults in (maps), enforced in list items (lists replace the chart's), unknown keys and
    wrong types fail with their line, and the remote Kubernetes reference is read from the
    definitions file given (nothing is downloaded)."""
    (tmp_path / "values.schema.json").write_text(json.dumps(TOY_SCHEMA))
    (tmp_path / "values.yaml").write_text(values)
    volume = {"type": "object", "properties": {"name": {"type": "string"}}}
    (tmp_path / "k8s.json").write_text(json.dumps({"definitions": {"Volume": volume}}))
    code = _checker().main(["--schema", str(tmp_path / "values.schema.json"), "--values", str(tmp_path / "values.yaml"),
                            "--kubernetes-definitions", str(tmp_path / "k8s.json")])
    out = capsys.readouterr().out
    problems = [line.split(": ", 1)[1].rsplit("  [", 1)[0] for line in out.splitlines()
                if line.startswith(str(tmp_path / "values.yaml") + ": ")]
    assert problems == expected, out
    assert code == (1 if expected else 0)
    assert "not checked: required keys the chart's own values.yaml supplies (filled)" in out


def test_the_helm_values_checker_merges_the_chart_defaults_first(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """With the chart's values.yaml beside its schema (--chart DIR), the merge is done as helm
    does it and every ``required`` counts: a default that lacks the key fails."""
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "values.schema.json").write_text(json.dumps(TOY_SCHEMA))
    (tmp_path / "values.yaml").write_text("section:\n  items:\n    - {name: a, port: 1}\n")
    (tmp_path / "k8s.json").write_text(json.dumps({"definitions": {"Volume": {"type": "object"}}}))
    check = ["--chart", str(chart), "--values", str(tmp_path / "values.yaml"),
             "--kubernetes-definitions", str(tmp_path / "k8s.json")]
    (chart / "values.yaml").write_text("section:\n  filled: yes-it-is\n  items: []\n")
    assert _checker().main(check) == 0
    (chart / "values.yaml").write_text("section:\n  items: []\n")
    assert _checker().main(check) == 1
    assert "section: 'filled' is a required property" in capsys.readouterr().out


def _kubernetes_objects(values: dict) -> list[tuple[str, str, object]]:  # type: ignore[type-arg]
    """Our Kubernetes objects in the values: (where, Kubernetes kind, the object)."""
    [deployment] = values["dagster-user-deployments"]["deployments"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    out: list[tuple[str, str, object]] = []
    for where, owner in (("dagster-user-deployments.deployments[0]", deployment),
                         ("runLauncher.config.k8sRunLauncher", launcher)):
        for key, kind in (("volumes", "Volume"), ("volumeMounts", "VolumeMount"), ("env", "EnvVar")):
            out += [(f"{where}.{key}[{n}]", kind, item) for n, item in enumerate(owner.get(key) or [])]
    return out


def test_the_kubernetes_objects_in_the_helm_values_match_kubernetes_own_schema() -> None:
    """The volumes, volume mounts and env entries we give the chart, against Kubernetes' own
    definitions as the kubernetes-validate package ships them (a registry package, so CI runs
    this), in the strict variant: a misspelled key fails, not only a missing or mistyped one."""
    from jsonschema import Draft202012Validator

    path = _checker().installed_kubernetes_definitions(strict=True)
    assert path is not None, "kubernetes-validate (a dev dependency) is not installed"
    definitions = json.loads(path.read_text())
    values = yaml.safe_load(HELM_VALUES.read_text())
    objects = _kubernetes_objects(values)
    assert {kind for _, kind, _ in objects} == {"Volume", "VolumeMount", "EnvVar"}

    def problems(kind: str, item: object) -> list[str]:
        schema = {**definitions, "$ref": f"#/$defs/io.k8s.api.core.v1.{kind}"}
        return [error.message for error in Draft202012Validator(schema).iter_errors(item)]

    for where, kind, item in objects:
        assert problems(kind, item) == [], f"{HELM_VALUES}: {where} is not a valid Kubernetes {kind}"
    # and the check has teeth: the same volume with its claim's key misspelled fails
    volume = {"name": "kvonce-data", "persistentVolumeClaim": {"claimNam": "kvonce-data"}}
    assert problems("Volume", volume), "a misspelled key in a Kubernetes object must fail"


def _install_arguments() -> list[str]:
    [line] = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("RUN pip install")]
    return shlex.split(line.removeprefix("RUN pip install"))


@pytest.mark.slow
def test_the_image_install_step_succeeds_in_a_clean_virtual_environment(tmp_path: Path) -> None:
    """The Dockerfile's ``pip install`` line, run as it is on the project in a fresh venv.

    With ``--no-compile`` added: pip then skips writing ``.pyc`` files for every module it installs
    (about a third of this test's time, measured), which decides nothing about whether the install
    succeeds (pip only warns when a file does not compile) and the import below compiles what it
    loads anyway."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile",
                           *_install_arguments()],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
                          env={k: v for k, v in os.environ.items() if not k.startswith("PIP_TARGET")})
    if done.returncode != 0 and re.search(r"(?i)(connection|network|resolve|name or service)", done.stderr):
        pytest.skip(f"the package registry is not reachable: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    check = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import dagster_k8s, dagster_postgres, kvonce_pipeline.definitions as d; "
                            "print(len(d.defs.resolve_all_job_defs()))"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    assert int(check.stdout.strip()) >= 4


# --- the run queue of the production instance, on a real daemon ----------------------------------

from .test_daemon_restart_e2e import DagsterDev, dev  # noqa: E402,F401  (dev: the fixture)
from .test_dagster_dev_e2e import FAST_QUEUE, UP_POLL_S, Clock, _drop, _wait  # noqa: E402

BILLING = b'{"timestamp":"2025-10-04T06:00:00.000Z","type":"success","key":"b0","value":"v"}\n'


#: Events per ``orders`` payload (keys: 30 %). What the size has to do: make a run last longer than
#: the time between the starts of the runs dropped together, so that without the scope limit they
#: would overlap and the test could fail. Checked with the limit raised to 3 (``dagster dev`` on this
#: file with FAST_QUEUE, two loaded cores), the orders runs' (start, end) in seconds:
#: 2k events (0, 4.8) (8.2, 14.2) (16.6, 22.4): no overlap, too small to prove anything;
#: 20k events (0, 14.3) (7.9, 22.5) (17.3, 36.3): they overlap; 50k (0, 28.1) (6.7, 38.6) (14, 57.6).
ORDER_EVENTS = 20_000


def _payloads(folder: Path, count: int) -> list[bytes]:
    """Traces big enough (``ORDER_EVENTS``) that a run lasts longer than the time between run starts
    on two cores: without the scope limit, the runs of one scope would overlap."""
    from kvonce_pipeline.devtools.generate import GenerateOptions, generate

    out = []
    for n in range(count):
        generate(folder / f"g{n}.ndjson", GenerateOptions(events=ORDER_EVENTS, keys=ORDER_EVENTS * 3 // 10,
                                                          format="ndjson", seed=n))
        # keys of their own: a key written by two payloads of one scope is a (true) cross-payload violation
        out.append((folder / f"g{n}.ndjson").read_bytes().replace(b'"key":"', b'"key":"p%d-' % n))
    return out


@pytest.mark.e2e
@pytest.mark.slow
def test_runs_of_one_scope_never_overlap_on_the_deployed_queue(dev: DagsterDev, postgres_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``dagster dev`` on deploy/dagster.yaml (PostgreSQL, queued runs, one run per store scope):
    three payloads dropped at once into the ``orders`` scope run one after another (their start and
    end times, as the instance recorded them, never overlap), a ``billing`` payload runs beside them,
    and all succeed. The queue is polled every second (``FAST_QUEUE``; Dagster's default is 5 s):
    the limits are the shipped file's, and a faster poll only brings the next run's start closer to
    the previous run's end, which makes an overlap easier to see, not harder."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
    from dagster._core.instance.ref import InstanceRef

    clock = Clock("queue")
    deadline = time.monotonic() + 150
    dev.extra_env = {"DAGSTER_PG_URL": postgres_url}
    monkeypatch.setenv("DAGSTER_PG_URL", postgres_url)
    dagit = dev.start(DEPLOY_CONFIG.read_text() + FAST_QUEUE, "queue")
    (dev.drop_dir / "orders").mkdir()
    (dev.drop_dir / "billing").mkdir()
    payloads = _payloads(dev.tmp_path, 3)  # generated while dagster dev loads (on the other core)
    clock.note("payloads generated")
    _wait(dagit, "the webserver", deadline, dagit.up, poll=UP_POLL_S)
    clock.note("webserver up")
    for n, data in enumerate(payloads):
        _drop(dev.drop_dir / "orders", f"o{n}.ndjson", data)
    _drop(dev.drop_dir / "billing", "b0.ndjson", BILLING)
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(dev.home)))
    try:
        def finished() -> list:
            records = instance.get_run_records(filters=RunsFilter(job_name="kvonce_drop_job"))
            done = [r for r in records if r.dagster_run.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)]
            return records if len(done) == 4 else []

        records = _wait(dagit, "four drop runs to finish", deadline, finished)
        clock.note("four runs finished")
    finally:
        instance.dispose()
    assert {r.dagster_run.status for r in records} == {DagsterRunStatus.SUCCESS}
    scopes = {r.dagster_run.run_id: r.dagster_run.tags["kvonce/store-scope"] for r in records}
    assert sorted(scopes.values()) == ["billing", "orders", "orders", "orders"]
    orders = sorted((r.start_time, r.end_time) for r in records if scopes[r.dagster_run.run_id] == "orders")
    first_start = orders[0][0]
    clock.note(f"orders runs (start, end), s after the first start: "
               f"{[(round(a - first_start, 1), round(b - first_start, 1)) for a, b in orders]}")
    for (_, first_end), (second_start, _) in zip(orders, orders[1:]):
        assert second_start >= first_end, f"two runs of one scope overlapped: {orders}"
