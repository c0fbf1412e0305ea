"""``make bench``: how the pipeline scales, measured against the cost of just parsing the input.

Run as ``python -m kvonce_pipeline.devtools.bench [--with-10m] [--sizes 10000,100000] [--repeat 3]``.

For each size (events; keys are 40% of events, as in the issue's 1M-over-400k trace) it
generates every input form with ``kvonce generate`` (cached under
``hermetic-reports/bench/data/``, git-ignored), then measures, each in a fresh subprocess:

* the **floor**: ``orjson.loads`` of the OTLP/JSON document with the garbage collector paused,
  then a Python walk over every span's attributes, and nothing else;
* ``kvonce conformance`` on each form (wall time to exit, peak RSS from ``wait4``);
* a **stage breakdown** in a separate child that runs the stages as separate passes over the
  decoded events (decode, events NDJSON, projection, validation, writing the bytes): the CLI
  fuses them into one pass, so its own total is the real cost and the breakdown says where it goes.

Floor and runs alternate within one invocation and the table reports medians, so ratios hold
even on a shared machine. Results go to ``hermetic-reports/bench/`` as ``bench.md``,
``bench.json`` and ``bench.png`` (time and memory against events, log scales).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..engine.artifacts import PROJECT_ROOT

BENCH_DIR = PROJECT_ROOT / "hermetic-reports" / "bench"
DATA_DIR = BENCH_DIR / "data"
FORMS = ("otlp-json", "otlp-proto", "otlp-jsonl", "ndjson", "otlp-proto-delimited")
SUFFIX = {"otlp-json": "otlp.json", "otlp-proto": "otlp.pb", "otlp-jsonl": "otlp.jsonl", "ndjson": "ndjson",
          "otlp-proto-delimited": "otlp.pbd"}
KEY_SHARE = 0.4


@dataclass
class Measurement:
    seconds: float
    peak_rss_mb: float
    exit_code: int


@dataclass
class Row:
    events: int
    keys: int
    form: str
    input_mb: float
    total_s: float
    peak_rss_mb: float
    runs: list[float] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    floor_s: float | None = None
    floor_rss_mb: float | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.total_s if self.total_s else 0.0

    @property
    def time_ratio(self) -> float | None:
        return self.total_s / self.floor_s if self.floor_s else None

    @property
    def rss_ratio(self) -> float | None:
        return self.peak_rss_mb / self.floor_rss_mb if self.floor_rss_mb else None


def _python() -> str:
    return sys.executable


def _tree_rss_kb(pid: int) -> int:
    """Memory of ``pid`` plus its descendants (the projection worker or forked child), from /proc.

    Proportional set size (``Pss`` in ``smaps_rollup``) where the kernel has it: a forked child
    shares its parent's pages until it writes them, and summing plain RSS would count those
    pages twice. Falls back to ``VmRSS``.
    """
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            total += _pss_kb(current)
            with open(f"/proc/{current}/task/{current}/children", "rb") as handle:
                pending += [int(child) for child in handle.read().split()]
        except (OSError, ValueError):
            continue
    return total


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    with open(f"/proc/{pid}/status", "rb") as handle:
        for line in handle:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


class _TreeSampler(threading.Thread):
    """Samples the process tree's summed memory every 500 ms: a worker's memory counts too."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):  # smaps_rollup walks page tables: not too often
            self.peak_kb = max(self.peak_kb, _tree_rss_kb(self.pid))


def measure(argv: list[str], *, env: dict[str, str] | None = None, capture: bool = False) -> tuple[Measurement, str]:
    """Run ``argv``: wall time to exit, and peak memory as the larger of the process's own peak
    (``wait4``'s ``ru_maxrss``) and the sampled sum over it and its children."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    sampler = _TreeSampler(process.pid)
    sampler.start()
    output = ""
    if capture:
        assert process.stdout is not None
        output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    peak_kb = max(usage.ru_maxrss, sampler.peak_kb)
    return Measurement(seconds, peak_kb / 1024, process.returncode), output


def data_file(events: int, form: str) -> Path:
    return DATA_DIR / f"{events}.{SUFFIX[form]}"


def ensure_input(events: int, form: str) -> Path:
    """Generate (once) the trace of ``events`` events in ``form``; deterministic, so cacheable."""
    path = data_file(events, form)
    if not path.exists():
        from .generate import GenerateOptions, generate

        print(f"bench: generating {path.name}", file=sys.stderr, flush=True)
        generate(path, GenerateOptions(events=events, keys=max(1, int(events * KEY_SHARE)), format=form))
    return path


# --- children -----------------------------------------------------------------------------------

def child_floor(path: str) -> None:
    """The floor: parse with the GC paused and walk every span's attributes. Exits without teardown."""
    import gc

    import orjson

    gc.disable()
    with open(path, "rb") as handle:
        document = orjson.loads(handle.read())
    attributes = 0
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for attribute in span["attributes"]:
                    if attribute["key"]:
                        attributes += 1
    sys.stdout.write(json.dumps({"attributes": attributes}))
    sys.stdout.flush()
    os._exit(0)


def child_stages(path: str, out_dir: str) -> None:
    """Each stage as its own pass over the decoded events: where the time goes."""
    import gc
    import hashlib

    import orjson

    from ..engine.timestamps import format_timestamp
    from ..domains.kvonce.event_log import encode_lines, event_line
    from ..domains.kvonce.projection import ProjectionBuilder, StateSequence
    from ..domains.kvonce.reader import OutOfOrder, open_trace
    from ..domains.kvonce.validation import Validator

    timings: dict[str, float] = {}
    gc.disable()
    started = time.perf_counter()
    try:
        with open_trace(path, spill_dir=Path(out_dir)) as trace:
            events = list(trace.events)
    except OutOfOrder:
        with open_trace(path, spill_dir=Path(out_dir), sort_on_disk=True) as trace:
            events = list(trace.events)
    timings["decode"] = time.perf_counter() - started

    started = time.perf_counter()
    stamps = [None if e.time_unix_nano is None else format_timestamp(e.time_unix_nano) for e in events]
    dumps = orjson.dumps
    event_lines = [encode_lines([event_line(e, s) for e, s in zip(events[start:start + 4096], stamps[start:])])
                   for start in range(0, len(events), 4096)]
    timings["events"] = time.perf_counter() - started

    started = time.perf_counter()
    builder = ProjectionBuilder()
    per_key, sequence = builder.per_key_fold.fold, StateSequence(builder.states)
    state_chunks = []
    for i, (e, s) in enumerate(zip(events, stamps)):
        per_key(e, s)
        sequence.add(i, e, s)
        if not (i + 1) % 4096:
            state_chunks.append(sequence.take())
    state_chunks.append(sequence.close())
    projection = dumps(builder.result())
    timings["projection"] = time.perf_counter() - started

    started = time.perf_counter()
    validator = Validator()
    for index, event in enumerate(events):
        validator.observe(index, event)
    validator.report()
    timings["validation"] = time.perf_counter() - started

    started = time.perf_counter()
    target = Path(out_dir) / "bench-stage-write.tmp"
    with open(target, "wb", buffering=1024 * 1024) as handle:
        for chunks in (event_lines, state_chunks):
            digest = hashlib.sha256()
            for chunk in chunks:
                digest.update(chunk)
                handle.write(chunk)
        handle.write(projection)
        handle.flush()
        os.fsync(handle.fileno())
    target.unlink()
    timings["writing"] = time.perf_counter() - started
    sys.stdout.write(json.dumps(timings))
    sys.stdout.flush()
    os._exit(0)


# --- the benchmark ------------------------------------------------------------------------------

def run_floor(events: int) -> Measurement:
    measurement, _ = measure([_python(), "-m", "kvonce_pipeline.devtools.bench", "--child-floor",
                              str(ensure_input(events, "otlp-json"))], capture=True)
    return measurement


def run_cli(path: Path, out_dir: Path) -> Measurement:
    measurement, _ = measure([_python(), "-m", "kvonce_pipeline.cli", "conformance", "--input", str(path),
                              "--output-dir", str(out_dir), "--no-progress"])
    if measurement.exit_code not in (0, 1):
        raise RuntimeError(f"kvonce conformance failed on {path} (exit {measurement.exit_code})")
    return measurement


def run_stages(path: Path, out_dir: Path) -> dict[str, float]:
    out_dir.mkdir(parents=True, exist_ok=True)
    _, output = measure([_python(), "-m", "kvonce_pipeline.devtools.bench", "--child-stages", str(path), str(out_dir)],
                        capture=True)
    return json.loads(output) if output else {}


def bench_size(events: int, forms: tuple[str, ...], repeat: int, repeat_other: int, stages: bool) -> list[Row]:
    paths = {form: ensure_input(events, form) for form in forms}
    out_root = BENCH_DIR / "out"
    floors: list[Measurement] = []
    runs: dict[str, list[Measurement]] = {form: [] for form in forms}
    for round_number in range(max(repeat, repeat_other)):
        floors.append(run_floor(events)) if round_number < repeat else None
        for form in forms:
            if round_number < (repeat if form == "otlp-json" else repeat_other):
                runs[form].append(run_cli(paths[form], out_root / f"{events}-{form}"))
                print(f"bench: {events} {form}: {runs[form][-1].seconds:.2f}s "
                      f"(floor {floors[-1].seconds:.2f}s)", file=sys.stderr, flush=True)
    floor_s = statistics.median(m.seconds for m in floors)
    floor_rss = statistics.median(m.peak_rss_mb for m in floors)
    rows = []
    for form in forms:
        row = Row(events=events, keys=int(events * KEY_SHARE), form=form,
                  input_mb=paths[form].stat().st_size / 1e6,
                  total_s=statistics.median(m.seconds for m in runs[form]),
                  peak_rss_mb=statistics.median(m.peak_rss_mb for m in runs[form]),
                  runs=[round(m.seconds, 3) for m in runs[form]], floor_s=floor_s, floor_rss_mb=floor_rss)
        if stages:
            row.stages = run_stages(paths[form], out_root / f"{events}-{form}-stages")
        rows.append(row)
    rows.insert(0, Row(events=events, keys=int(events * KEY_SHARE), form="floor (otlp-json parse+walk)",
                       input_mb=paths["otlp-json"].stat().st_size / 1e6 if "otlp-json" in paths else 0,
                       total_s=floor_s, peak_rss_mb=floor_rss, runs=[round(m.seconds, 3) for m in floors],
                       floor_s=floor_s, floor_rss_mb=floor_rss))
    return rows


STAGES = ("decode", "events", "projection", "validation", "writing")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render_markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    lines = [
        "# kvonce benchmark",
        "",
        f"{meta['machine']}; Python {meta['python']}; {meta['when']}. Total and peak RSS: medians of "
        f"`kvonce conformance` subprocesses (runs listed in bench.json). Stage columns: one separate "
        f"child running each stage as its own pass (the CLI fuses them into one). Ratios are to the "
        f"floor measured in the same invocation: `orjson.loads` of the same size's OTLP/JSON document "
        f"with the GC paused plus a walk over every span's attributes.",
        "",
        "| events | form | input MB | " + " | ".join(f"{s} s" for s in STAGES)
        + " | total s | peak RSS MB | events/s | time / floor | RSS / floor |",
        "|---:|---|---:|" + "---:|" * len(STAGES) + "---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        floor = row.form.startswith("floor")
        lines.append(
            f"| {row.events:,} | {row.form} | {row.input_mb:.0f} | "
            + " | ".join(_fmt(row.stages.get(s)) for s in STAGES)
            + f" | {row.total_s:.2f} | {row.peak_rss_mb:.0f} | {'' if floor else f'{row.events_per_s:,.0f}'} | "
            f"{'' if floor else _fmt(row.time_ratio)} | {'' if floor else _fmt(row.rss_ratio)} |"
        )
    return "\n".join(lines) + "\n"


def draw_chart(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for form in sorted({row.form for row in rows}, key=lambda f: (not f.startswith("floor"), f)):
        points = sorted((row.events, row.total_s, row.peak_rss_mb) for row in rows if row.form == form)
        style = {"linestyle": "--", "color": "black"} if form.startswith("floor") else {}
        label = "floor" if form.startswith("floor") else form
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label, **style)
        right.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=label, **style)
    for axis, title, unit in ((left, "time", "seconds"), (right, "peak memory", "peak RSS (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("events")
        axis.set_ylabel(unit)
        axis.set_title(f"kvonce conformance: {title}")
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine() -> str:
    cpus = os.cpu_count() or 0
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0
    return f"{cpus} CPUs, {memory:.0f} GiB RAM, load average {load:.1f} at the start"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvonce_pipeline.devtools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--with-10m", action="store_true", help="add 10,000,000 events (JSON Lines and NDJSON)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated event counts")
    parser.add_argument("--forms", default=",".join(FORMS), help="input forms to run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the floor and of otlp-json per size (median)")
    parser.add_argument("--repeat-other", type=int, default=1, help="runs of the other forms per size")
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage breakdown children")
    parser.add_argument("--dagster", metavar="EVENTS",
                        help="only compare the Dagster job with the CLI on the EVENTS-event OTLP/JSON trace")
    parser.add_argument("--child-floor", help=argparse.SUPPRESS)
    parser.add_argument("--child-dagster", help=argparse.SUPPRESS)
    parser.add_argument("--child-stages", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_floor:
        child_floor(args.child_floor)
    if args.child_stages:
        child_stages(*args.child_stages)
    if args.child_dagster:
        child_dagster(args.child_dagster)
    if args.dagster:
        return bench_dagster(int(args.dagster), args.repeat)
    sizes = [int(size) for size in args.sizes.split(",") if size]
    forms = tuple(form for form in args.forms.split(",") if form)
    meta = {"machine": machine(), "python": sys.version.split()[0], "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "repeat": args.repeat, "repeat_other": args.repeat_other}
    rows: list[Row] = []
    for size in sizes:
        size_forms = forms if "otlp-json" in forms else ("otlp-json", *forms)
        rows += bench_size(size, size_forms, args.repeat, args.repeat_other, not args.no_stages)
    if args.with_10m:
        rows += bench_10m()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "bench.md").write_text(render_markdown(rows, meta))
    (BENCH_DIR / "bench.json").write_text(json.dumps(
        {"meta": meta, "rows": [{**asdict(row), "events_per_s": row.events_per_s, "time_ratio": row.time_ratio,
                                 "rss_ratio": row.rss_ratio} for row in rows]}, indent=2) + "\n")
    draw_chart([row for row in rows if row.events >= 1], BENCH_DIR / "bench.png")
    print(render_markdown(rows, meta))
    print(f"bench: wrote {BENCH_DIR}/bench.md, bench.json, bench.png", file=sys.stderr)
    return 0


def child_dagster(reports: str) -> None:
    """Materialize the conformance assets in process on an ephemeral instance (payload from env)."""
    import dagster as dg

    from ..orchestration.conformance.definitions import conformance_assets
    from ..orchestration.resources import KvonceSettings

    os.environ["KVONCE_REPORTS_DIR"] = reports
    result = dg.materialize(conformance_assets, instance=dg.DagsterInstance.ephemeral(),
                            resources={"kvonce": KvonceSettings.from_env()}, raise_on_error=False)
    sys.stdout.write(json.dumps({"success": result.success}))
    sys.stdout.flush()
    os._exit(0)


def bench_dagster(events: int, repeat: int) -> int:
    """The Dagster job against the CLI on the same trace: the overhead budget is 10 s."""
    path = ensure_input(events, "otlp-json")
    env = {**os.environ, "KVONCE_OTLP_PAYLOAD": str(path)}
    cli, dagster = [], []
    for _ in range(repeat):
        cli.append(run_cli(path, BENCH_DIR / "out" / f"{events}-dagster-cli"))
        measurement, output = measure([_python(), "-m", "kvonce_pipeline.devtools.bench", "--child-dagster",
                                       str(BENCH_DIR / "out" / f"{events}-dagster")], env=env, capture=True)
        dagster.append(measurement)
        print(f"bench: cli {cli[-1].seconds:.1f}s, dagster {measurement.seconds:.1f}s {output}", file=sys.stderr)
    result = {"events": events, "cli_s": [m.seconds for m in cli], "dagster_s": [m.seconds for m in dagster],
              "cli_rss_mb": [m.peak_rss_mb for m in cli], "dagster_rss_mb": [m.peak_rss_mb for m in dagster],
              "overhead_s": statistics.median(m.seconds for m in dagster) - statistics.median(m.seconds for m in cli)}
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "dagster.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


TEN_M_KEYS = 400_000


def bench_10m() -> list[Row]:
    """10M events over the 1M trace's 400k keys, streamed (JSON Lines, NDJSON): peak memory
    should match the 1M streamed runs, since it depends on keys, not events."""
    rows = []
    for form in ("otlp-jsonl", "ndjson"):
        path = DATA_DIR / f"10000000-400k.{SUFFIX[form]}"
        if not path.exists():
            from .generate import GenerateOptions, generate

            print(f"bench: generating {path.name}", file=sys.stderr, flush=True)
            generate(path, GenerateOptions(events=10_000_000, keys=TEN_M_KEYS, format=form))
        measurement = run_cli(path, BENCH_DIR / "out" / f"10000000-{form}")
        print(f"bench: 10M {form}: {measurement.seconds:.1f}s, {measurement.peak_rss_mb:.0f} MB", file=sys.stderr)
        rows.append(Row(events=10_000_000, keys=TEN_M_KEYS, form=form, input_mb=path.stat().st_size / 1e6,
                        total_s=measurement.seconds, peak_rss_mb=measurement.peak_rss_mb,
                        runs=[round(measurement.seconds, 3)]))
    return rows


if __name__ == "__main__":
    sys.exit(main())
