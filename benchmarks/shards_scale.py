"""``make bench-shards``: the key-sharded run on a real local dask cluster, S = 1, 2, 4 shards.

For each S a fresh cluster is started as separate programs on 127.0.0.1 (``dask scheduler`` and S
``dask worker`` programs of one thread each, with their nannies: the processes a real cluster
runs), then the coordinator (a child process: ``shards.run_sharded`` with the dask engine, as
``kvonce conformance --shards S --engine dask --scheduler ADDR`` does) checks the trace, and the
cluster is shut down. Cluster start-up is not in the wall time: a deployment keeps its cluster.
The one pass (``kvonce conformance``, no shards) is measured too, as the reference, and every
sharded run's artifacts are compared with its bytes.

Measured per S:

* **wall**: the coordinator process, start to exit (``events/s`` from it);
* **CPU**: user + system seconds of the coordinator (``wait4``) plus the scheduler's and the
  workers' process trees (``psutil``, after minus before the run): everything the run cost;
* **peak RSS per worker**: the largest ``ru_maxrss`` of the worker processes that ran a shard
  (each ran one), and the idle worker's RSS before the run (a dask worker's own baseline);
* the **split**, **check** and **merge** phases' shares of ``run_sharded``'s wall time.

The input is generated once with ``kvonce generate`` (JSON Lines, a small violation rate, cached
in ``hermetic-reports/bench/data/``). Results: a Markdown table on stdout and in
``hermetic-reports/bench/shards-scale.md``, the figures in ``shards-scale.json``, a chart in
``shards-scale.png`` (when matplotlib is installed: ``make bench-shards`` installs it).
Not a test: nothing here asserts a speed.

    .venv/bin/python benchmarks/shards_scale.py                      # the issue's 10M events, 4M keys
    .venv/bin/python benchmarks/shards_scale.py --events 1000000 --keys 400000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = PROJECT_ROOT / "hermetic-reports" / "bench"
DATA_DIR = BENCH_DIR / "data"
ARTIFACTS = ("kvonce-events.ndjson", "kvonce-projection.json", "projected/kvonce-state-sequence.json",
             "kvonce-validation.json", "kvonce-summary.md")
#: Each key breaks each rule with this probability: a few thousand findings to merge at 1M events.
VIOLATIONS = 0.001


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tree_cpu(pid: int) -> float:
    """User + system seconds of a process and its live descendants (the nanny and its worker)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def _worker_rss_mb(pid: int) -> float:
    """RSS of the worker process under a ``dask worker`` program (the nanny's child)."""
    import psutil

    children = psutil.Process(pid).children(recursive=True)
    workers = [child for child in children if "resource_tracker" not in " ".join(child.cmdline())]
    return max((child.memory_info().rss for child in workers), default=0) / 2**20


class Cluster:
    """``dask scheduler`` and ``workers`` ``dask worker`` programs on loopback; stopped on exit."""

    def __init__(self, workers: int, logs: Path) -> None:
        self.workers = workers
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> "Cluster":
        from distributed import Client

        dask = str(VENV_BIN / "dask")
        port = self.address.rsplit(":", 1)[1]
        commands = [[dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"]]
        commands += [[dask, "worker", self.address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                      "--host", "127.0.0.1", "--memory-limit", "0", "--name", f"w{n}"] for n in range(self.workers)]
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            for number, command in enumerate(commands):
                with open(self.logs / f"{command[1]}-{number}.log", "wb") as log:
                    self.processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
            deadline = time.monotonic() + 120
            with Client(self.address, timeout="60s") as client:
                while len(client.scheduler_info()["workers"]) < self.workers:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.workers} workers did not join {self.address} in 120 s")
                    time.sleep(0.2)
            time.sleep(1.0)  # let the workers settle (imports, heartbeats) before the baseline
        except BaseException:
            self.__exit__()
            raise
        return self

    def cpu(self) -> float:
        return sum(_tree_cpu(process.pid) for process in self.processes)

    def worker_rss_mb(self) -> list[float]:
        return [_worker_rss_mb(process.pid) for process in self.processes[1:]]

    def __exit__(self, *exc: Any) -> None:
        from distributed import Client

        try:
            with Client(self.address, timeout="5s") as client:
                client.shutdown()
        except (OSError, TimeoutError):
            pass
        for stop in (None, subprocess.Popen.terminate, subprocess.Popen.kill):
            if stop is not None:
                for process in self.processes:
                    if process.poll() is None:
                        stop(process)
            deadline = time.monotonic() + 15
            while any(process.poll() is None for process in self.processes) and time.monotonic() < deadline:
                time.sleep(0.1)


def _measured(command: list[str]) -> dict[str, Any]:
    """Wall, CPU and peak RSS of one child process, from its own ``wait4`` accounting."""
    import tempfile

    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
        assert process.stdout is not None
        stdout = process.stdout.read()
        process.stdout.close()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode not in (0, 1):
            errors.seek(0)
            raise RuntimeError(f"{' '.join(command[:4])} exited {process.returncode}: "
                               f"{errors.read().decode(errors='replace')[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "exit_code": process.returncode, "stdout": stdout.decode()}


def _digests(out: Path) -> dict[str, str]:
    digests = {}
    for name in ARTIFACTS:
        digest = hashlib.sha256()
        with open(out / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        digests[name] = digest.hexdigest()
    return digests


def ensure_input(events: int, keys: int) -> Path:
    path = DATA_DIR / f"shards-{events}-{keys}.otlp.jsonl"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} ...", file=sys.stderr)
        subprocess.run([str(VENV_BIN / "kvonce"), "generate", "--events", str(events), "--keys", str(keys),
                        "--format", "otlp-jsonl", "--violations", str(VIOLATIONS), "--seed", "7",
                        "--output", str(path)], check=True)
    return path


def child_coordinator(input_path: str, out_dir: str, shards: int, scheduler: str) -> None:
    """The coordinator: ``run_sharded`` with the dask engine; prints its timings and shard results."""
    import gc

    from kvonce_pipeline.domains.kvonce.own_pass.shards import DaskEngine, run_sharded

    gc.disable()  # as the kvonce CLI does for its one pass
    with DaskEngine(scheduler) as engine:
        started = time.perf_counter()
        run = run_sharded(input_path, out_dir, shards=shards, engine=engine)
        total = time.perf_counter() - started
    print(json.dumps({"run_s": total, "split_s": run.split.seconds, "check_s": run.check_seconds,
                      "merge_s": run.merge_seconds, "per_shard": run.split.per_shard, "valid": run.result.valid,
                      "shards": [{"shard": r.shard, "events": r.events, "wall_s": r.wall_seconds,
                                  "cpu_s": r.cpu_seconds, "peak_rss_mb": r.peak_rss_mb, "pid": r.pid}
                                 for r in run.shards]}))
    sys.stdout.flush()
    os._exit(run.result.exit_code)  # the verdict, as the CLI gives it; the heap is the OS's to free


def bench_one_pass(path: Path, work: Path) -> dict[str, Any]:
    out = work / "one-pass"
    shutil.rmtree(out, ignore_errors=True)
    measured = _measured([str(VENV_BIN / "kvonce"), "conformance", "--input", str(path), "--output-dir", str(out),
                          "--no-progress"])
    measured.pop("stdout")
    measured["digests"] = _digests(out)
    shutil.rmtree(out, ignore_errors=True)
    return measured


def bench_shards(path: Path, work: Path, shards: int) -> dict[str, Any]:
    out = work / f"s{shards}"
    shutil.rmtree(out, ignore_errors=True)
    with Cluster(shards, work / f"logs-s{shards}") as cluster:
        idle_rss = cluster.worker_rss_mb()
        cpu_before = cluster.cpu()
        measured = _measured([sys.executable, str(Path(__file__).resolve()), "--child-coordinator", str(path),
                              str(out), str(shards), cluster.address])
        cluster_cpu = cluster.cpu() - cpu_before
    detail = json.loads(measured.pop("stdout").strip().splitlines()[-1])
    run_s = detail["run_s"]
    row = {
        "shards": shards, "wall_s": measured["wall_s"], "run_s": run_s,
        "cpu_s": measured["cpu_s"] + cluster_cpu, "coordinator_cpu_s": measured["cpu_s"], "cluster_cpu_s": cluster_cpu,
        "coordinator_peak_rss_mb": measured["peak_rss_mb"],
        "worker_peak_rss_mb": max(s["peak_rss_mb"] for s in detail["shards"]),
        "worker_idle_rss_mb": max(idle_rss) if idle_rss else 0.0,
        "split_s": detail["split_s"], "check_s": detail["check_s"], "merge_s": detail["merge_s"],
        "split_share": detail["split_s"] / run_s, "check_share": detail["check_s"] / run_s,
        "merge_share": detail["merge_s"] / run_s, "per_shard": detail["per_shard"], "shard_runs": detail["shards"],
        "exit_code": measured["exit_code"], "digests": _digests(out),
    }
    shutil.rmtree(out, ignore_errors=True)
    return row


def render(meta: dict[str, Any], one_pass: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    events = meta["events"]
    base_cpu = rows[0]["cpu_s"] if rows else None
    lines = [
        f"Key shards on a local dask cluster: {events:,} events over {meta['keys']:,} keys "
        f"(JSON Lines, {meta['input_mb']:.0f} MB), {meta['machine']}; {meta['when']}.",
        f"Command: `{meta['command']}`.",
        "",
        "| run | wall s | events/s | CPU s (all processes) | CPU vs S=1 | peak RSS per worker MB (idle worker) "
        "| coordinator peak RSS MB | split | check | merge | same bytes as one pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| one pass (`kvonce conformance`) | {one_pass['wall_s']:.1f} | {events / one_pass['wall_s']:,.0f} | "
        f"{one_pass['cpu_s']:.1f} | | | {one_pass['peak_rss_mb']:.0f} | | | | (reference) |",
    ]
    for row in rows:
        same = "yes" if row["digests"] == one_pass["digests"] else "**NO**"
        ratio = f"{row['cpu_s'] / base_cpu:.2f}x" if base_cpu else ""
        lines.append(
            f"| S={row['shards']} | {row['wall_s']:.1f} | {events / row['wall_s']:,.0f} | {row['cpu_s']:.1f} | {ratio} | "
            f"{row['worker_peak_rss_mb']:.0f} ({row['worker_idle_rss_mb']:.0f}) | "
            f"{row['coordinator_peak_rss_mb']:.0f} | {row['split_share']:.0%} | {row['check_share']:.0%} | "
            f"{row['merge_share']:.0%} | {same} |")
    lines += ["", "Phase shares are of `run_sharded`'s own wall time (the coordinator's interpreter start-up, "
                  "about a second, is in the wall column only). Peak RSS per worker: the largest `ru_maxrss` of "
                  "the worker processes that ran a shard; in brackets the idle worker's RSS before the run."]
    return "\n".join(lines) + "\n"


def draw_chart(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [f"S={row['shards']}" for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    bottom = [0.0] * len(rows)
    for phase, colour in (("split_s", "#4c72b0"), ("check_s", "#dd8452"), ("merge_s", "#55a868")):
        heights = [row[phase] for row in rows]
        left.bar(labels, heights, bottom=bottom, label=phase[:-2], color=colour)
        bottom = [b + h for b, h in zip(bottom, heights)]
    left.set_ylabel("seconds (run_sharded wall)")
    left.set_title("where the time goes (2 cores)")
    left.legend()
    right.bar(labels, [row["worker_peak_rss_mb"] for row in rows], color="#8172b2", label="peak per worker")
    right.plot(labels, [row["worker_idle_rss_mb"] for row in rows], "k--", label="idle worker")
    right.set_ylabel("MB")
    right.set_title("peak RSS per worker")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/shards_scale.py", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the trace (default 10M)")
    parser.add_argument("--keys", type=int, default=4_000_000, help="distinct keys (default 4M)")
    parser.add_argument("--shards", default="1,2,4", help="shard counts to run (default 1,2,4)")
    parser.add_argument("--work-dir", default=None, help="where reports are written and removed (default "
                                                          "hermetic-reports/bench/data/shards-work)")
    parser.add_argument("--name", default="shards-scale", help="result file names under hermetic-reports/bench/")
    parser.add_argument("--child-coordinator", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_coordinator:
        input_path, out_dir, shards, scheduler = args.child_coordinator
        child_coordinator(input_path, out_dir, int(shards), scheduler)
        return 0
    path = ensure_input(args.events, args.keys)
    work = Path(args.work_dir) if args.work_dir else DATA_DIR / "shards-work"
    work.mkdir(parents=True, exist_ok=True)
    meta = {"events": args.events, "keys": args.keys, "input": str(path.relative_to(PROJECT_ROOT)),
            "input_mb": path.stat().st_size / 1e6, "cores": os.cpu_count(),
            "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["python benchmarks/shards_scale.py", *(argv if argv is not None else sys.argv[1:])])}
    print(f"one pass on {path.name} ...", file=sys.stderr)
    one_pass = bench_one_pass(path, work)
    rows = []
    for shards in (int(part) for part in args.shards.split(",")):
        print(f"S={shards} ...", file=sys.stderr)
        rows.append(bench_shards(path, work, shards))
    table = render(meta, one_pass, rows)
    print(table)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / f"{args.name}.md").write_text(table)
    (BENCH_DIR / f"{args.name}.json").write_text(json.dumps({"meta": meta, "one_pass": one_pass, "runs": rows},
                                                            indent=2) + "\n")
    if draw_chart(rows, BENCH_DIR / f"{args.name}.png"):
        print(f"chart: {BENCH_DIR / f'{args.name}.png'}", file=sys.stderr)
    return 0 if all(row["digests"] == one_pass["digests"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
