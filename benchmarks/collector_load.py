"""Load benchmark for ``kvonce collector``: N concurrent real exporters for a fixed time.

Each round starts a real ``kvonce collector`` process on 127.0.0.1 (ephemeral port, fresh drop
folder), then N client processes, each with the real ``OTLPSpanExporter`` (OTLP/HTTP protobuf),
export batches of KvOnce spans (unique SDK span ids) back to back for ``--seconds``. Then the
collector gets SIGTERM and must write its open batch. The round checks, by count, that

    spans acknowledged to the clients (export() == SUCCESS)
      == spans the collector says it accepted
      == spans found in the payload files (parsed back from the drop folder)

(and that no temporary or journal file is left), and reports spans/s accepted, requests/s and the
collector's CPU time per span. The figures printed at the end are medians over ``--rounds``.
Not a test: nothing here asserts a speed.

    .venv/bin/python benchmarks/collector_load.py --clients 4 --seconds 10 --rounds 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
KVONCE = VENV_BIN / "kvonce"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _client(endpoint: str, batch: int, gzip: bool, start_at: float, seconds: float, index: int,
            results: "mp.Queue[tuple[int, int, int, int, float]]", timeout: float, use_grpc: bool = False) -> None:
    """One exporter process: export ``batch`` spans per request until the deadline."""
    import logging
    import random

    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # failures are counted, not logged

    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

    resource = Resource.create({"service.name": f"load-client-{index}"})
    if use_grpc:
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter = GrpcExporter(endpoint=endpoint, insecure=True, timeout=timeout,
                                compression=grpc.Compression.Gzip if gzip else None)
    else:
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=timeout,
                                    compression=Compression.Gzip if gzip else Compression.NoCompression)
    rng = random.Random(os.getpid())
    acknowledged = failed = requests = 0
    serial = 0

    def make_batch() -> list[ReadableSpan]:
        # ReadableSpan built directly (what the SDK's span processor hands an exporter), with fresh
        # random ids: cheaper than the tracer API, so the clients leave more CPU to the collector.
        nonlocal serial
        spans = []
        now = time.time_ns()
        for _ in range(batch):
            serial += 1
            context = SpanContext(rng.getrandbits(128), rng.getrandbits(64), is_remote=False,
                                  trace_flags=TraceFlags(TraceFlags.SAMPLED))
            spans.append(ReadableSpan(
                name="kvonce.success", context=context, resource=resource, kind=SpanKind.INTERNAL,
                attributes={"kvonce.event.type": "success", "kvonce.event.key": f"c{index}-k{serial}",
                            "kvonce.event.value": "v", "kvonce.event.context.attempt": 1},
                start_time=now + serial, end_time=now + serial + 1000,
            ))
        return spans

    spans = make_batch()
    while time.time() < start_at:
        time.sleep(0.005)
    first = time.time()
    while time.time() < start_at + seconds:
        outcome = exporter.export(spans)
        requests += 1
        if outcome is SpanExportResult.SUCCESS:
            acknowledged += len(spans)
        else:
            failed += len(spans)
        spans = make_batch()
    exporter.shutdown()
    results.put((acknowledged, failed, requests, index, time.time() - first))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _spans_in(drop: Path) -> tuple[int, int]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans = files = 0
    for path in sorted(drop.glob("otlp-*.pb")):
        message = ExportTraceServiceRequest.FromString(path.read_bytes())
        spans += sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
        files += 1
    leftovers = [p.name for p in drop.iterdir() if p.name.endswith((".tmp", ".journal"))]
    if leftovers:
        raise SystemExit(f"temporary or journal files left behind: {leftovers}")
    return spans, files


def run_round(args: argparse.Namespace, number: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kvonce-load-") as tmp:
        drop = Path(tmp) / "drops"
        collector = subprocess.Popen(
            [str(KVONCE), "collector", "--port", "0", "--grpc-port", "0", "--drop-dir", str(drop),
             "--flush-seconds", str(args.flush_seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={k: v for k, v in os.environ.items() if k != "KVONCE_COLLECTOR_TOKEN"},
        )
        try:
            line = collector.stdout.readline()
            match = re.search(r"listening on (\S+/v1/traces), OTLP/gRPC on http://(\S+)", line)
            if not match:
                raise SystemExit(f"collector did not start: {line}{collector.stderr.read()}")
            endpoint = match.group(2) if args.grpc else match.group(1)
            ctx = mp.get_context("spawn")
            results = ctx.Queue()
            start_at = time.time() + 3.0  # time for the client processes to import the SDK
            timeout = 3.0 if args.sigterm_during_load else 30.0
            clients = [ctx.Process(target=_client, args=(endpoint, args.batch, args.gzip, start_at,
                                                         args.seconds, i, results, timeout, args.grpc))
                       for i in range(args.clients)]
            for client in clients:
                client.start()
            if args.sigterm_during_load:
                # stop the collector while every client is still sending: what it acknowledged
                # before the signal must all be in the files, the rest must have failed visibly
                time.sleep(max(0.0, start_at + args.seconds / 2 - time.time()))
                cpu = _cpu_seconds(collector.pid)
                collector.send_signal(signal.SIGTERM)
                _, stderr = collector.communicate(timeout=120)
            outcomes = [results.get(timeout=args.seconds + 120) for _ in clients]
            for client in clients:
                client.join()
            if not args.sigterm_during_load:
                cpu = _cpu_seconds(collector.pid)
                collector.send_signal(signal.SIGTERM)
                _, stderr = collector.communicate(timeout=120)
        finally:
            if collector.poll() is None:
                collector.kill()
                collector.wait()
        if collector.returncode != 0:
            raise SystemExit(f"collector exited {collector.returncode}: {stderr}")
        stopped = re.search(r"stopped: (\d+) spans accepted, (\d+) written in (\d+) files, (\d+) duplicates", stderr)
        if not stopped:
            raise SystemExit(f"no summary from the collector: {stderr}")
        accepted, written, _files, duplicates = (int(g) for g in stopped.groups())
        in_files, files = _spans_in(drop)
        acknowledged = sum(o[0] for o in outcomes)
        failed = sum(o[1] for o in outcomes)
        requests = sum(o[2] for o in outcomes)
        elapsed = max(o[4] for o in outcomes)
        ok = acknowledged == accepted == written == in_files and duplicates == 0
        row = {
            "round": number, "acknowledged": acknowledged, "in_files": in_files, "files": files,
            "failed": failed, "requests": requests, "elapsed": elapsed,
            "spans_per_s": acknowledged / elapsed, "requests_per_s": requests / elapsed,
            "collector_cpu_us_per_span": cpu / max(accepted, 1) * 1e6, "ok": ok,
        }
        print(f"round {number}: {acknowledged} spans acknowledged, {in_files} in {files} payload files, "
              f"{failed} failed; {row['spans_per_s']:,.0f} spans/s, {row['requests_per_s']:,.1f} req/s, "
              f"collector {row['collector_cpu_us_per_span']:.1f} CPU-us/span  "
              f"{'COUNTS MATCH' if ok else 'COUNT MISMATCH'}", flush=True)
        if not ok:
            raise SystemExit(f"lost or extra spans: acknowledged {acknowledged}, collector accepted {accepted}, "
                             f"wrote {written}, files hold {in_files}, duplicates {duplicates}")
        return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent exporter processes (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="sending time per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--batch", type=int, default=512,
                        help="spans per export request (default 512, the BatchSpanProcessor's batch size)")
    parser.add_argument("--gzip", action="store_true", help="gzip the export requests")
    parser.add_argument("--grpc", action="store_true", help="export over OTLP/gRPC instead of OTLP/HTTP")
    parser.add_argument("--flush-seconds", type=float, default=2.0, help="collector flush interval (default 2)")
    parser.add_argument("--sigterm-during-load", action="store_true",
                        help="SIGTERM the collector halfway while the clients keep sending (the counts must "
                             "still match; exports after the signal fail)")
    args = parser.parse_args(argv)
    print(f"kvonce collector load: {args.clients} exporters x {args.seconds:g} s x {args.rounds} rounds, "
          f"{args.batch} spans/request, {'gzip' if args.gzip else 'plain'} protobuf over {'OTLP/gRPC' if args.grpc else 'OTLP/HTTP'}, flush {args.flush_seconds:g} s; "
          f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs", flush=True)
    rows = [run_round(args, n) for n in range(1, args.rounds + 1)]
    median = {key: statistics.median(row[key] for row in rows)
              for key in ("spans_per_s", "requests_per_s", "collector_cpu_us_per_span", "acknowledged")}
    print(f"median: {median['spans_per_s']:,.0f} spans/s accepted, {median['requests_per_s']:,.1f} requests/s, "
          f"collector {median['collector_cpu_us_per_span']:.1f} CPU-us per span "
          f"(~{1e6 / median['collector_cpu_us_per_span']:,.0f} spans per collector CPU-second); "
          f"every acknowledged span was found in a payload file in all {len(rows)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
