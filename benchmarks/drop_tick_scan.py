"""What one drop-sensor tick costs on gzip payloads, with and without the inflated-bytes scan budget.

The sensor hashes at most ``MAX_BYTES_PER_TICK`` file bytes per tick, and then scans each new file's
*inflated* bytes for the installed domains' attribute names; a gzip file's scan reads far more than
its size. ``MAX_SCANNED_BYTES_PER_TICK`` bounds those scans (beyond each tick's first file; the files
left wait for the next tick). This script drops ``--files`` distinct gzip files of a KvOnce OTLP/JSON
trace (``kvonce generate``; a KvOnce-only payload names no other domain, so its scan reads the whole
file) into a temporary drop folder and runs the real sensor function on a real ephemeral instance,
tick after tick until every file was taken: once with no scan budget (what the sensor did before),
once with ``--budget``. Printed per run: ticks, wall seconds of the slowest tick and of all ticks,
inflated bytes the scans read in the slowest tick, and the scan rate. Not a test: nothing asserts a
speed.

    .venv/bin/python benchmarks/drop_tick_scan.py 2>/dev/null                      # 24 files of 200k events
    .venv/bin/python benchmarks/drop_tick_scan.py --files 100 2>/dev/null          # a full tick: 100 files
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg

from kvonce_pipeline.devtools.generate import GenerateOptions, generate
from kvonce_pipeline.engine.domain import Domain
from kvonce_pipeline.engine.limits import Limits, parse_limit
from kvonce_pipeline.orchestration.drops import domains, sensors
from kvonce_pipeline.orchestration.resources import KvonceSettings

UNBOUNDED = 1 << 62


def _run(drop_dir: Path, reports: Path, limit: int) -> tuple[int, float, float, int]:
    """(ticks, slowest tick s, all ticks s, inflated bytes read in the slowest tick)."""
    sensors.MAX_SCANNED_BYTES_PER_TICK = limit
    read: list[int] = []
    original = domains.mentioned_within

    def counted(path: Path, limits: Limits, budget: domains.ScanBudget,
                domains: dict[str, Domain] | None = None) -> list[str]:
        try:
            return original(path, limits, budget, domains)
        finally:
            read[-1] = budget.read

    sensors.mentioned_within = counted
    settings = KvonceSettings(drop_dir=str(drop_dir), reports_dir=str(reports))
    files = len(list(drop_dir.iterdir()))
    taken, ticks = 0, 0
    times: list[float] = []
    cursor: str | None = None
    try:
        with dg.DagsterInstance.ephemeral() as instance:
            while taken < files and ticks < 10 * files:
                read.append(0)
                start = time.perf_counter()
                result = sensors.kvonce_drop_sensor(dg.build_sensor_context(
                    instance=instance, cursor=cursor, resources={"kvonce": settings}))
                times.append(time.perf_counter() - start)
                assert isinstance(result, dg.SensorResult)
                for request in result.dynamic_partitions_requests or []:
                    instance.add_dynamic_partitions(sensors.PARTITIONS_NAME, list(request.partition_keys))
                taken += len([r for r in result.run_requests or [] if r.partition_key is not None])
                cursor, ticks = result.cursor, ticks + 1
    finally:
        sensors.mentioned_within = original
    slowest = max(range(len(times)), key=times.__getitem__)
    return ticks, times[slowest], sum(times), read[slowest]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--budget", default=str(sensors.MAX_SCANNED_BYTES_PER_TICK),
                        help="the scan budget to compare (bytes, or 64MiB, 2GiB ...; default: the sensor's)")
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)  # the ticks' own log lines
    budget = parse_limit("--budget", args.budget, allow_units=True)
    work = Path(tempfile.mkdtemp(prefix="drop-tick-scan-"))
    try:
        trace = work / "trace.json"
        generate(trace, GenerateOptions(events=args.events, keys=max(args.events // 10, 1)))
        member = gzip.compress(trace.read_bytes(), 6)
        inflated = trace.stat().st_size
        drop_dir = work / "drops"
        drop_dir.mkdir()
        for index in range(args.files):  # distinct content: one more gzip member of `index` spaces
            (drop_dir / f"p{index:03d}.json.gz").write_bytes(member + gzip.compress(b" " * (index + 1)))
        old = time.time() - 3600
        for path in drop_dir.iterdir():
            os.utime(path, (old, old))
        print(f"{args.files} files of {len(member) / 2**20:.1f} MiB gzip, {inflated / 2**20:.1f} MiB inflated each "
              f"({inflated / len(member):.1f}:1)\n")
        print("| scan budget | ticks | slowest tick s | all ticks s | inflated MiB read in slowest | scan MiB/s |")
        print("|---|---|---|---|---|---|")
        for label, value in (("none (before)", UNBOUNDED), (f"{budget / 2**20:.0f} MiB", budget)):
            ticks, slowest, total, read = _run(drop_dir, work / f"reports-{value}", value)
            rate = read / 2**20 / slowest if slowest else 0.0
            print(f"| {label} | {ticks} | {slowest:.2f} | {total:.2f} | {read / 2**20:.0f} | {rate:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
