"""``make bench-domains``: a domain made only from the template against KvOnce, at the same size.

Both traces are OTLP/JSON documents of ``--events`` spans over ``--keys`` keys, as exporters write
them: KvOnce's from ``kvonce generate`` (its benchmark trace), the template domain's (``kvonce domain
new bench``, installed for the run without touching the environment: see
:mod:`kvonce_pipeline.devtools.domain_site`) from the same shape of story per key (open, close).
Each is checked by the real command, ``kvonce conformance --no-progress``, as a child process;
runs alternate (KvOnce, template, KvOnce, ...) so both see the same machine, and the medians are
compared (after one uncounted warm-up run of each). ``--before KVONCE`` adds a third command (e.g. an older checkout's ``.venv/bin/kvonce``)
run on the KvOnce trace in the same rotation: the before/after of the KvOnce pass.

Measured per run: wall time (events/s from it), user + system CPU and peak RSS of the child
(``wait4``). Printed as a Markdown table; the figures also go to
``hermetic-reports/bench/domains-speed.json``. Not a test: nothing here asserts a speed.

    .venv/bin/python benchmarks/domains_speed.py                          # 1M events, 400k keys, 3 rounds
    .venv/bin/python benchmarks/domains_speed.py --events 100000 --keys 40000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KVONCE = Path(sys.executable).parent / "kvonce"
T0 = 1_759_557_600_000_000_000


def _template_trace(project: Path, paths: list[str], events: int, keys: int, out: Path) -> None:
    """The template domain's trace, written by a child that sees the domain (as the CLI will)."""
    code = f"""
import random, sys
sys.path[:0] = {paths!r}
from kvonce_pipeline.engine import registry
from kvonce_pipeline.engine.domain import DomainEvent
from kvonce_pipeline.engine.domain_render import write_trace
domain = registry.get("bench")
rng = random.Random(5)
def events():
    t = {T0}
    for i in range({events} // 2):
        key = f"key-{{i % {keys}}}"
        trace = f"{{rng.getrandbits(128):032x}}"
        actor = f"service-{{i % 8}}"
        yield DomainEvent(t, "open", key, {{"context": {{"attempt": 1, "region": "eu"}}}}, trace,
                          f"{{rng.getrandbits(64):016x}}", actor)
        yield DomainEvent(t + 1000, "close", key, {{"reason": "done"}}, trace, f"{{rng.getrandbits(64):016x}}", actor)
        t += 2000
write_trace(domain, events(), {str(out)!r}, "otlp-json")
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def _run(command: list[str], env: dict[str, str]) -> dict[str, float]:
    start = time.monotonic()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stderr is not None
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(command)} exited {code}: {stderr.decode(errors='replace')}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default=None, help="another kvonce command to run on the KvOnce trace")
    args = parser.parse_args()
    from kvonce_pipeline.devtools.domain_site import register

    work = Path(tempfile.mkdtemp(prefix="kvonce-bench-domains-"))
    try:
        subprocess.run([str(KVONCE), "domain", "new", "bench", "--prefix", "bench.event.", "--dir", str(work)],
                       check=True, stderr=subprocess.DEVNULL)
        project = work / "kvonce-domain-bench"
        paths = register(project, work / "site")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        kv_trace, bench_trace = work / "kvonce.json", work / "bench.json"
        subprocess.run([str(KVONCE), "generate", "--events", str(args.events), "--keys", str(args.keys),
                        "--format", "otlp-json", "--output", str(kv_trace)], check=True)
        _template_trace(project, paths, args.events, args.keys, bench_trace)
        commands = {
            "kvonce": [str(KVONCE), "conformance", "--no-progress", "--input", str(kv_trace),
                       "--output-dir", str(work / "out-kvonce")],
            "template": [str(KVONCE), "conformance", "--no-progress", "--input", str(bench_trace),
                         "--output-dir", str(work / "out-bench")],
        }
        if args.before:
            commands["kvonce (before)"] = [args.before, "conformance", "--no-progress", "--input", str(kv_trace),
                                           "--output-dir", str(work / "out-before")]
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
        for command in commands.values():  # a warm-up, not counted: page cache, .pyc files
            _run(command, env)
        for round_number in range(args.rounds):
            for name, command in commands.items():
                runs[name].append(_run(command, env))
                print(f"round {round_number + 1}: {name}: {runs[name][-1]['wall']:.2f} s", file=sys.stderr)
        rows = {}
        for name, measured in runs.items():
            wall = statistics.median(r["wall"] for r in measured)
            rows[name] = {"wall_s": round(wall, 2), "events_per_s": round(args.events / wall),
                          "cpu_s": round(statistics.median(r["cpu"] for r in measured), 2),
                          "peak_rss_mb": round(statistics.median(r["rss_mb"] for r in measured))}
        base = rows["kvonce"]["events_per_s"]
        print(f"\n{args.events:,} events, {args.keys:,} keys, OTLP/JSON; medians of {args.rounds} alternating runs\n")
        print("| pass | wall s | events/s | vs KvOnce | CPU s | peak RSS MB |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, row in rows.items():
            print(f"| {name} | {row['wall_s']} | {row['events_per_s']:,} | {row['events_per_s'] / base:.2f}x | "
                  f"{row['cpu_s']} | {row['peak_rss_mb']} |")
        out = ROOT / "hermetic-reports" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        (out / "domains-speed.json").write_text(json.dumps({"events": args.events, "keys": args.keys,
                                                            "rounds": args.rounds, "runs": runs, "medians": rows},
                                                           indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
