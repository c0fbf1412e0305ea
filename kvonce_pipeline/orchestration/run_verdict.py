"""The verdict of the last run of a job, as ``make run`` ends: its message and the CLI's exit code.

``dagster job execute`` exits 1 whenever a run fails, and its output ends on the failure's stack
trace. ``make run`` needs the verdict instead: it asks the run's own record (the instance in
``DAGSTER_HOME``) why the run failed. The step's failure carries a ``verdict`` metadata entry
(:class:`kvonce_pipeline.orchestration.conformance.assets.Violations` sets ``violations``; an unusable input
sets ``unusable``), so the code does not depend on parsing the log:

- 0: the run succeeded (the payload is valid);
- 1: the payload violates KvOnce; the message is "N violations in <payload>:" and the first findings;
- 2: the payload is unusable; the message names the file and the line, record or span (also: the
  reports could not be published to a reports URL, the store's own message);
- 3: the run failed for another reason (or never started); the message is the error's first line.

A run of several domains (``trace_conformance_job``) may fail in several steps: the worst verdict
across them is the run's (3 over 2 over 1, as ``kvonce conformance``'s exit code is the worst across
domains), with the message of the first step that failed with it.
"""

from __future__ import annotations

import argparse
import sys

import dagster as dg
from dagster._core.events import DagsterEventType

#: ``storage``: the reports could not be published to their URL (as ``kvonce conformance`` exits 2 for
#: a store's error: never a verdict)
EXIT_CODES = {"violations": 1, "unusable": 2, "storage": 2}
OTHER_FAILURE = 3


def run_verdict(instance: dg.DagsterInstance, job_name: str) -> tuple[int, str]:
    """``(exit code, message)`` for the newest run of ``job_name`` in ``instance``."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name), limit=1)
    if not runs:
        return OTHER_FAILURE, f"no run of {job_name} was recorded (did the code location load?)"
    run = runs[0]
    if run.status == dg.DagsterRunStatus.SUCCESS:
        return 0, ""
    worst: tuple[int, str] | None = None
    for record in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        if event is None or event.step_failure_data is None:
            continue
        data = event.step_failure_data
        user = data.user_failure_data
        verdict = user.metadata.get("verdict") if user is not None else None
        found: tuple[int, str] | None = None
        if user is not None and verdict is not None and verdict.value in EXIT_CODES:
            found = EXIT_CODES[str(verdict.value)], user.description or ""
        elif data.error is not None:
            found = OTHER_FAILURE, f"step {event.step_key} failed: {data.error.message.strip()}"
        if found is not None and (worst is None or found[0] > worst[0]):
            worst = found
    return worst or (OTHER_FAILURE, f"run {run.run_id} of {job_name} ended {run.status.value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvonce_pipeline.orchestration.run_verdict",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default="kvonce_conformance_job")
    parser.add_argument("--dagster-exit", type=int, default=None,
                        help="the exit code of `dagster job execute`: 0 needs no look-up")
    args = parser.parse_args(argv)
    if args.dagster_exit == 0:
        return 0
    with dg.DagsterInstance.get() as instance:
        code, message = run_verdict(instance, args.job)
    if code == OTHER_FAILURE:
        print(f"kvonce: {message}", file=sys.stderr)
    elif message:
        print(message)  # the verdict is the run's result, as the summary printed before it
    return code


if __name__ == "__main__":
    sys.exit(main())
