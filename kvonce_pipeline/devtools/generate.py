"""``kvonce generate``: deterministic synthetic KvOnce traces, valid or with chosen violations.

The benchmark and the tests need traces of any size in every input form, reproducibly: the same
arguments always give the same bytes. The trace is made key by key, in blocks of keys whose events
interleave within a time window; windows follow each other, so the whole trace is in time order
(as a Collector writes it) and memory stays per block, whatever ``--events`` is.

Each key tells a KvOnce story: up to two retries (contexts ``attempt`` 1, 2), a success with a value
and ``attempt`` retries + 1, then ``duplicate`` failures from writers that came later (legal after
the success). With ``--violations R`` each key breaks, with probability R per rule, one rule of
:data:`kvonce_pipeline.domains.kvonce.validation.RULES` (see :data:`VIOLATIONS`), so every rule shows up at rate R.

Protobuf is written by hand on the wire format (a repeated field is its entries concatenated), so
a million spans stream out without building a million message objects.
"""

from __future__ import annotations

import argparse
import gzip
import random
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ..engine.timestamps import format_timestamp

FORMATS = ("ndjson", "otlp-json", "otlp-jsonl", "otlp-proto", "otlp-proto-delimited")

#: 2025-10-04T06:00:00Z, the seed sample's first event.
BASE_NS = 1_759_557_600_000_000_000
#: One block of keys shares a time window of this many nanoseconds per event (about 86 ms a
#: event for a million events over a day).
NS_PER_EVENT = 86_400 * 1_000_000_000 // 1_000_000
#: Keys per block: the interleaving window (and the generator's working set).
BLOCK_KEYS = 256
#: Spans per ``resourceSpans`` entry (one Collector batch).
BATCH_SPANS = 512
SERVICES = 8
MAX_RETRIES = 3

#: Rules a generated key can break, each at the ``--violations`` rate.
VIOLATIONS = (
    "multiple-success",
    "duplicate-without-success",
    "retry-bound-exceeded",
    "retry-context-missing",
    "retry-attempt-out-of-sequence",
    "success-attempt-mismatch",
    "success-missing-value",
    "unknown-event-type",
    "missing-required-field",
    "duplicate-before-success",
    "success-after-retries-exhausted",
)
#: Events a story needs to show the violation (``retry-bound-exceeded``: four retries and a success).
_MIN_EVENTS = {
    "multiple-success": 2,
    "duplicate-without-success": 1,
    "retry-bound-exceeded": MAX_RETRIES + 2,
    "retry-context-missing": 2,
    "retry-attempt-out-of-sequence": 3,
    "success-attempt-mismatch": 2,
    "success-missing-value": 1,
    "unknown-event-type": 2,
    "missing-required-field": 2,
    "duplicate-before-success": 2,
    "success-after-retries-exhausted": MAX_RETRIES + 1,
}


@dataclass(slots=True)
class Step:
    """One generated event before it is encoded: what the mapping will turn back into an Event."""

    time_ns: int | None
    type: str
    key: str
    value: str | None = None
    reason: str | None = None
    context: dict[str, Any] | None = None
    trace_id: str = ""
    span_id: str = ""


@dataclass(frozen=True)
class GenerateOptions:
    events: int
    keys: int
    format: str = "otlp-json"
    violations: float = 0.0
    seed: int = 1
    gzip: bool = False
    batch_spans: int = BATCH_SPANS


def _story(rng: random.Random, key: str, count: int, violation: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The ordered (type, fields) of one key: ``count`` events, breaking ``violation`` if given."""
    node = f"node-{rng.randrange(16)}"
    retries = min(rng.randrange(3), count - 1)
    steps: list[tuple[str, dict[str, Any]]] = []
    if violation == "duplicate-without-success":
        return [("failure", {"reason": "duplicate", "context": {"attempt": 1}})] * count
    if violation == "retry-bound-exceeded":
        retries = MAX_RETRIES + 1
    elif violation == "success-after-retries-exhausted":
        retries = MAX_RETRIES
    elif violation in ("retry-context-missing", "success-attempt-mismatch"):
        retries = max(retries, 1)
    elif violation == "retry-attempt-out-of-sequence":
        retries = max(retries, 2)
    retries = min(retries, count - 1)
    for attempt in range(1, retries + 1):
        context: dict[str, Any] = {"attempt": attempt}
        if violation == "retry-context-missing" and attempt == retries:
            context = {"node": node}
        elif violation == "retry-attempt-out-of-sequence" and attempt == retries:
            context = {"attempt": attempt + 1}
        steps.append(("retry", {"context": context}))
    if violation == "duplicate-before-success":
        steps.insert(0, ("failure", {"reason": "duplicate", "context": {"attempt": 1}}))
    success: dict[str, Any] = {"value": f"v-{key}", "context": {"attempt": retries + 1}}
    if violation == "success-attempt-mismatch":
        success["context"] = {"attempt": retries + 2}
    elif violation == "success-missing-value":
        del success["value"]
    steps.append(("success", success))
    if violation == "multiple-success":
        steps.append(("success", {"value": f"v2-{key}", "context": {"attempt": 1}}))
    elif violation == "unknown-event-type":
        steps.append(("delete", {"context": {"node": node}}))
    elif violation == "missing-required-field":
        steps.append(("failure", {"context": {"node": node}}))  # a failure without its reason
    while len(steps) < count:
        steps.append(("failure", {"reason": "duplicate", "context": {"attempt": 1}}))
    return steps[:count] if len(steps) > count else steps


def _plan_violation(rng: random.Random, rate: float) -> str | None:
    """Each rule with probability ``rate``; at most one rule per key, so findings stay countable."""
    if not rate:
        return None
    roll = rng.random()
    slot = int(roll / rate)
    return VIOLATIONS[slot] if slot < len(VIOLATIONS) else None


def iter_blocks(options: GenerateOptions) -> Iterator[list[Step]]:
    """Blocks of time-ordered steps; each block's window starts where the previous one ended."""
    if options.events < 1 or options.keys < 1:
        raise ValueError("--events and --keys must be at least 1")
    if options.keys > options.events:
        raise ValueError("--keys cannot exceed --events: every key has at least one event")
    if not 0 <= options.violations <= 1 / len(VIOLATIONS):
        raise ValueError(f"--violations is a rate per rule, between 0 and {1 / len(VIOLATIONS):.4f}")
    rng = random.Random(options.seed)
    bits = rng.getrandbits
    remaining_events, remaining_keys = options.events, options.keys
    window_start = BASE_NS
    key_index = 0
    width = max(6, len(str(options.keys - 1)))
    while remaining_keys:
        stories: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []
        block_events = 0
        for _ in range(min(BLOCK_KEYS, remaining_keys)):
            key = f"key-{key_index:0{width}d}"
            key_index += 1
            base, extra = divmod(remaining_events, remaining_keys)
            count = base + (1 if rng.random() * remaining_keys < extra else 0)
            violation = _plan_violation(rng, options.violations)
            if violation is not None:
                count = max(count, _MIN_EVENTS[violation])
            count = max(1, min(count, remaining_events - (remaining_keys - 1)))
            if remaining_keys == 1:
                count = remaining_events
            if violation is not None and count < _MIN_EVENTS[violation]:
                violation = None
            remaining_events -= count
            remaining_keys -= 1
            stories.append((key, _story(rng, key, count, violation)))
            block_events += count
        window = block_events * NS_PER_EVENT
        timed: list[tuple[int, int, Step]] = []
        for key, story in stories:
            offsets = sorted(rng.randrange(window) for _ in story)
            for offset, (kind, fields) in zip(offsets, story):
                step = Step(window_start + offset, kind, key, fields.get("value"), fields.get("reason"),
                            fields.get("context"), f"{bits(128) | 1:032x}", f"{bits(64) | 1:016x}")
                timed.append((offset, len(timed), step))
        timed.sort(key=lambda item: (item[0], item[1]))
        yield [step for _, _, step in timed]
        window_start += window


def iter_steps(options: GenerateOptions) -> Iterator[Step]:
    for block in iter_blocks(options):
        yield from block


def _batches(options: GenerateOptions) -> Iterator[tuple[int, list[Step]]]:
    """``(batch number, steps)``: the spans of one ``resourceSpans`` entry (one Collector batch)."""
    batch: list[Step] = []
    number = 0
    for step in iter_steps(options):
        batch.append(step)
        if len(batch) >= options.batch_spans:
            yield number, batch
            number += 1
            batch = []
    if batch:
        yield number, batch


def _service(batch: int) -> tuple[str, str]:
    return f"kvonce-svc-{batch % SERVICES}", f"kvonce-svc-{batch % SERVICES}-{batch % 3}"


# --- OTLP/JSON ---------------------------------------------------------------------------------

def _json_any(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": _json_any(v)} for k, v in value.items()]}}
    return {"stringValue": value}


def _json_span(step: Step) -> dict[str, Any]:
    attributes = [
        {"key": "kvonce.event.type", "value": {"stringValue": step.type}},
        {"key": "kvonce.event.key", "value": {"stringValue": step.key}},
    ]
    if step.value is not None:
        attributes.append({"key": "kvonce.event.value", "value": {"stringValue": step.value}})
    if step.reason is not None:
        attributes.append({"key": "kvonce.event.reason", "value": {"stringValue": step.reason}})
    if step.context is not None:
        attributes.append({"key": "kvonce.event.context", "value": _json_any(step.context)})
    start = step.time_ns or 0
    return {
        "traceId": step.trace_id,
        "spanId": step.span_id,
        "name": f"kvonce.{step.type}",
        "kind": 1,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 2_000_000),
        "attributes": attributes,
    }


def _json_resource(number: int, steps: list[Step]) -> dict[str, Any]:
    service, instance = _service(number)
    return {
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}},
                                    {"key": "service.instance.id", "value": {"stringValue": instance}}]},
        "scopeSpans": [{"scope": {"name": "kvonce.service", "version": "1.0.0"},
                        "spans": [_json_span(step) for step in steps]}],
    }


# --- protobuf wire format -----------------------------------------------------------------------

def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(tag << 3 | 2) + _varint(len(payload)) + payload


def _pb_any(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, dict):
        return _field(6, b"".join(_field(1, _pb_kv(k, v)) for k, v in value.items()))
    return _field(1, value.encode())


def _pb_kv(key: str, value: Any) -> bytes:
    return _field(1, key.encode()) + _field(2, _pb_any(value))


def _pb_span(step: Step) -> bytes:
    parts = [
        _field(1, bytes.fromhex(step.trace_id)),
        _field(2, bytes.fromhex(step.span_id)),
        _field(5, f"kvonce.{step.type}".encode()),
        b"\x30\x01",  # kind = SPAN_KIND_INTERNAL
        b"\x39" + struct.pack("<Q", step.time_ns or 0),
        b"\x41" + struct.pack("<Q", (step.time_ns or 0) + 2_000_000),
        _field(9, _pb_kv("kvonce.event.type", step.type)),
        _field(9, _pb_kv("kvonce.event.key", step.key)),
    ]
    if step.value is not None:
        parts.append(_field(9, _pb_kv("kvonce.event.value", step.value)))
    if step.reason is not None:
        parts.append(_field(9, _pb_kv("kvonce.event.reason", step.reason)))
    if step.context is not None:
        parts.append(_field(9, _pb_kv("kvonce.event.context", step.context)))
    return b"".join(parts)


def _pb_resource_spans(number: int, steps: list[Step]) -> bytes:
    """One ``ResourceSpans`` entry as field 1 of ``ExportTraceServiceRequest``."""
    service, instance = _service(number)
    resource = _field(1, _pb_kv("service.name", service)) + _field(1, _pb_kv("service.instance.id", instance))
    scope = _field(1, b"kvonce.service") + _field(2, b"1.0.0")
    scope_spans = _field(1, scope) + b"".join(_field(2, _pb_span(step)) for step in steps)
    return _field(1, _field(1, resource) + _field(2, scope_spans))


# --- writers ------------------------------------------------------------------------------------

def _write_ndjson(out: BinaryIO, options: GenerateOptions) -> int:
    dumps = orjson.dumps
    count = 0
    for number, steps in _batches(options):
        service, _ = _service(number)
        lines = []
        for step in steps:
            record: dict[str, Any] = {"timestamp": format_timestamp(step.time_ns) if step.time_ns is not None else None,
                                      "timeUnixNano": None if step.time_ns is None else str(step.time_ns),
                                      "type": step.type, "key": step.key}
            if step.value is not None:
                record["value"] = step.value
            if step.reason is not None:
                record["reason"] = step.reason
            if step.context is not None:
                record["context"] = step.context
            record["traceId"] = step.trace_id
            record["spanId"] = step.span_id
            record["actor"] = service
            lines.append(dumps(record))
        out.write(b"\n".join(lines) + b"\n")
        count += len(steps)
    return count


def _write_otlp_json(out: BinaryIO, options: GenerateOptions) -> int:
    out.write(b'{"resourceSpans":[')
    count = 0
    for number, steps in _batches(options):
        if number:
            out.write(b",")
        out.write(orjson.dumps(_json_resource(number, steps)))
        count += len(steps)
    out.write(b"]}\n")
    return count


def _write_otlp_jsonl(out: BinaryIO, options: GenerateOptions) -> int:
    count = 0
    for number, steps in _batches(options):
        out.write(orjson.dumps({"resourceSpans": [_json_resource(number, steps)]}) + b"\n")
        count += len(steps)
    return count


def _write_otlp_proto(out: BinaryIO, options: GenerateOptions) -> int:
    count = 0
    for number, steps in _batches(options):
        out.write(_pb_resource_spans(number, steps))
        count += len(steps)
    return count


def _write_otlp_proto_delimited(out: BinaryIO, options: GenerateOptions) -> int:
    count = 0
    for number, steps in _batches(options):
        record = _pb_resource_spans(number, steps)
        out.write(struct.pack(">I", len(record)) + record)
        count += len(steps)
    return count


WRITERS: dict[str, Callable[[BinaryIO, GenerateOptions], int]] = {
    "ndjson": _write_ndjson,
    "otlp-json": _write_otlp_json,
    "otlp-jsonl": _write_otlp_jsonl,
    "otlp-proto": _write_otlp_proto,
    "otlp-proto-delimited": _write_otlp_proto_delimited,
}


def generate(path: str | Path, options: GenerateOptions) -> int:
    """Write the trace to ``path`` atomically; returns the number of events written."""
    from ..engine.atomic import atomic_writer

    if options.format not in WRITERS:
        raise ValueError(f"unknown format {options.format!r}; use one of {', '.join(FORMATS)}")
    with atomic_writer(path) as out:
        if options.gzip:
            with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as packed:  # type: ignore[call-overload]
                return WRITERS[options.format](packed, options)
        return WRITERS[options.format](out, options)  # type: ignore[arg-type]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="write a deterministic synthetic trace (benchmarks, tests)")
    parser.add_argument("--events", type=int, required=True, help="number of events")
    parser.add_argument("--keys", type=int, default=None,
                        help="number of distinct keys (<= events; required for kvonce, the domain decides otherwise)")
    parser.add_argument("--domain", default="kvonce",
                        help="whose events (default kvonce; another domain needs a generator: `kvonce domain list`)")
    parser.add_argument("--format", default="otlp-json", choices=FORMATS)
    parser.add_argument("--violations", type=float, default=0.0,
                        help="rate per rule: each key breaks each rule with this probability (default 0: valid)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gzip", action="store_true", help="gzip the output")
    parser.add_argument("--batch-spans", type=int, default=BATCH_SPANS, help="spans per resourceSpans entry")
    parser.add_argument("--output", required=True, help="file to write")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.domain != "kvonce":
        return _run_domain(args)
    if args.keys is None:
        print("kvonce generate: --keys is required for kvonce events", file=sys.stderr)
        return 2
    try:
        options = GenerateOptions(events=args.events, keys=args.keys, format=args.format,
                                  violations=args.violations, seed=args.seed, gzip=args.gzip,
                                  batch_spans=max(1, args.batch_spans))
        count = generate(args.output, options)
    except ValueError as exc:
        print(f"kvonce generate: {exc}", file=sys.stderr)
        return 2
    print(f"kvonce generate: {count} events over {args.keys} keys ({args.format}"
          f"{', gzip' if args.gzip else ''}) -> {args.output}", file=sys.stderr)
    return 0


def _run_domain(args: argparse.Namespace) -> int:
    """Another domain's events, from its own generator (:attr:`Domain.generate`)."""
    from ..engine.domain_render import FORMATS as DOMAIN_FORMATS
    from ..engine.domain_render import write_trace
    from ..engine.registry import get

    domain = get(args.domain)
    if domain.generate is None:
        print(f"kvonce generate: the {args.domain} domain has no generator", file=sys.stderr)
        return 2
    if args.format not in DOMAIN_FORMATS:
        print(f"kvonce generate: --format {args.format} is KvOnce's only; use one of {', '.join(DOMAIN_FORMATS)}",
              file=sys.stderr)
        return 2
    if args.keys is not None:
        print(f"kvonce generate: --keys is not used by the {args.domain} generator (it decides its keys)",
              file=sys.stderr)
        return 2
    try:
        events = domain.generate(args.events, seed=args.seed, violations=args.violations)
        count = write_trace(domain, events, args.output, args.format, compress=args.gzip)
    except ValueError as exc:
        print(f"kvonce generate: {exc}", file=sys.stderr)
        return 2
    print(f"kvonce generate: {count} {domain.definition.label} events ({args.format}"
          f"{', gzip' if args.gzip else ''}) -> {args.output}", file=sys.stderr)
    return 0
