"""What one drop-sensor tick costs when the drop folder is a bucket, against the same files on local disk.

Starts moto's S3 server on 127.0.0.1 (a free port; stopped at the end), uploads ``--files`` distinct
gzip payloads of a KvOnce OTLP/JSON trace (``kvonce generate``) under ``s3://bench/drops/`` and writes
the same files into a local folder, then runs the real sensor function on a real ephemeral instance:
the first tick over each (list, download or read, sha256, domain scan of the local copy), and a second
tick with the first one's cursor (listing only: every object is known by size and ETag). Printed: the
wall seconds of each, the bytes the first tick downloaded, and the GetObject requests of the second.
Not a test: nothing asserts a speed; moto on loopback is no network, so the download rate is a ceiling.

    .venv/bin/python benchmarks/drop_bucket_tick.py 2>/dev/null
    .venv/bin/python benchmarks/drop_bucket_tick.py --files 24 --events 200000 2>/dev/null
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
from typing import Any

import dagster as dg
import fsspec
import s3fs

from kvonce_pipeline.devtools.generate import GenerateOptions, generate
from kvonce_pipeline.devtools.local_s3 import local_s3_server
from kvonce_pipeline.orchestration.drops import sensors
from kvonce_pipeline.orchestration.resources import KvonceSettings


def _tick(settings: KvonceSettings, instance: dg.DagsterInstance, cursor: str | None) -> tuple[float, dg.SensorResult]:
    start = time.perf_counter()
    result = sensors.kvonce_drop_sensor(dg.build_sensor_context(instance=instance, cursor=cursor,
                                                                resources={"kvonce": settings}))
    assert isinstance(result, dg.SensorResult)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="drop-bucket-tick-"))
    try:
        with local_s3_server() as endpoint:
            bench(args, work, endpoint)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, work: Path, endpoint: str) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ[name] = value
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    fs.mkdir("bench")
    trace = work / "trace.json"
    generate(trace, GenerateOptions(events=args.events, keys=max(args.events // 10, 1)))
    member = gzip.compress(trace.read_bytes(), 6)
    local = work / "drops"
    local.mkdir()
    for index in range(args.files):  # distinct content: one more gzip member of `index` spaces
        data = member + gzip.compress(b" " * (index + 1))
        (local / f"p{index:03d}.json.gz").write_bytes(data)
        fs.pipe_file(f"bench/drops/p{index:03d}.json.gz", data)
    old = time.time() - 3600
    for path in local.iterdir():
        os.utime(path, (old, old))
    total = sum(p.stat().st_size for p in local.iterdir())
    print(f"{args.files} files of {len(member) / 2**20:.1f} MiB gzip ({total / 2**20:.0f} MiB), "
          f"{trace.stat().st_size / 2**20:.1f} MiB inflated each\n")
    gets = {"n": 0}
    real = s3fs.S3FileSystem._call_s3

    async def counting(self: Any, method: str, *a: Any, **kw: Any) -> Any:
        gets["n"] += method == "get_object"
        return await real(self, method, *a, **kw)

    s3fs.S3FileSystem._call_s3 = counting  # type: ignore[method-assign]
    print("| drop folder | first tick s | runs requested | second tick s | GetObject in second |")
    print("|---|---|---|---|---|")
    for label, location in (("local folder", str(local)), ("s3://bench/drops (moto)", "s3://bench/drops")):
        settings = KvonceSettings(drop_dir=location, reports_dir=str(work / "reports"))
        with dg.DagsterInstance.ephemeral() as instance:
            first, result = _tick(settings, instance, None)
            for request in result.dynamic_partitions_requests or []:
                instance.add_dynamic_partitions(sensors.PARTITIONS_NAME, list(request.partition_keys))
            gets["n"] = 0
            second, _ = _tick(settings, instance, result.cursor)
        print(f"| {label} | {first:.2f} | {len(result.run_requests or [])} | {second:.3f} | {gets['n']} |")


if __name__ == "__main__":
    main()
