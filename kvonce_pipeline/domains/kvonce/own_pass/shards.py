"""Key shards: split a trace by a hash of the key, check each shard on its own, merge the results.

Every KvOnce rule is per key, so the keys can be dealt out to S shards and each shard checked
independently (on another core, or another machine) with the single pass's own folds
(:class:`~kvonce_pipeline.domains.kvonce.projection.PerKeyFold`, :class:`~kvonce_pipeline.domains.kvonce.projection.StateFold`,
:class:`~kvonce_pipeline.domains.kvonce.validation.Validator`). The merged artifacts are byte-identical to
:func:`kvonce_pipeline.domains.kvonce.own_pass.conformance.run_conformance`'s (``kvonce_pipeline_tests/domains/kvonce/own_pass/test_shards.py``
holds them to it). Three phases:

* **split** (the coordinator, one pass over the decoded events in time order): each event's
  NDJSON line is encoded once; it goes to the staged ``kvonce-events.ndjson`` (the events file
  is the split's product, not a merge) and to its shard's file; the shard's number goes to the
  *shard map* (one byte per event, the events' global order). The shard is ``crc32(key) % S``:
  stable across processes, machines and Python versions (``hash()`` is salted per process).
* **check** (:func:`check_shard`, one task per shard on a :class:`ShardEngine`): the shard's
  lines are decoded (typed, in C) and folded; each event's global index is found in the shard
  map. A shard writes its state-sequence entries *without* the run's totals, a one-byte code per
  entry (the event's kind, whether it wrote its key first, whether its key is new), its
  ``perKey`` entries in first-seen order, and its findings.
* **merge** (the coordinator, one pass over the shard map): findings are merged by
  ``(eventIndex, type)``, the single pass's own order; totals add up; the running totals of the
  state sequence are recomputed from the codes, and the ``perKey`` entries interleaved where
  their key first appeared. Nothing is parsed again.

All intermediate files live in a private folder under the report folder
(``.kvonce-shards-<pid>-<random>``), written through :mod:`kvonce_pipeline.engine.atomic`; the
artifacts are published together once the merge is done, and the folder is removed. The folder
must be reachable by every worker under the same path (one machine, or a shared filesystem).

No Dagster here: the CLI (``kvonce conformance --shards``) and the Dagster job
(:mod:`kvonce_pipeline.orchestration.sharded.job`) both call :func:`run_sharded`.
"""

from __future__ import annotations

import heapq
import mmap
import os
import resource
import shutil
import socket
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
import orjson

from .. import artifacts
from ....engine.atomic import atomic_writer, fsync_directory, private_folder_name, sweep_stale_folders
from .conformance import ConformanceOptions, ConformanceResult
from ....engine.errors import InputError, KvonceError, OutputError
from ....engine.timestamps import format_timestamp
from ..event_log import encode_lines, event_line
from ..projection import SCHEMA_VERSION as PROJECTION_SCHEMA
from ..projection import KeyState, PerKeyFold, StateFold
from ..reader import OutOfOrder, open_trace
from .one_pass import INDENT_BELOW
from .stages import BATCH, BackgroundWriter, ProgressCallback, write_input_error, write_report_files
from ....engine.gc_pause import gc_paused
from ..validation import Validator, check_disabled, report_document

#: A shard's number is one byte of the shard map.
MAX_SHARDS = 256
#: The private folder's prefix (swept when its process is gone, like the on-disk sort's).
FOLDER_PREFIX = ".kvonce-shards-"
#: A file in the private folder for as long as the run wants its shards' files.
_MARKER = "run"

_KINDS = {"success": 0, "retry": 1, "failure": 2}  # anything else is "unknown" (3), as in StateFold
_ZERO = ord("0")  # codes are written as '0'..'?' so that a code byte is never a newline
_WROTE, _NEW_KEY = 4, 8


def shard_of(key: str | None, shards: int) -> int:
    """The shard of ``key``: ``crc32`` of its UTF-8 bytes modulo ``shards`` (keyless events: 0)."""
    if key is None or shards == 1:
        return 0
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % shards


# --- the plan and the results: what crosses from the coordinator to a worker and back ------------

class ShardTask(msgspec.Struct, frozen=True):
    """One shard's check: where its files are and how to judge (plain values: any engine can ship it)."""

    folder: str
    shard: int
    shards: int
    events: int  # events in the whole trace
    max_retries: int
    strict: bool
    disabled: frozenset[str] = frozenset()


class ShardResult(msgspec.Struct, frozen=True):
    """What a shard's check returns (its files are beside its input); small on purpose."""

    shard: int
    events: int
    keys: int  # keys the validator tracked (non-empty keys)
    stats: dict[str, Any]
    cpu_seconds: float
    wall_seconds: float
    peak_rss_mb: float
    pid: int
    host: str


@dataclass
class SplitResult:
    """What the split wrote, in the private folder."""

    folder: Path
    shards: int
    events: int
    per_shard: list[int]
    input_summary: dict[str, Any]
    seconds: float = 0.0


def _shard_name(folder: Path | str, shard: int, suffix: str) -> Path:
    return Path(folder) / f"shard-{shard:03d}.{suffix}"


def _map_path(folder: Path | str) -> Path:
    return Path(folder) / "shard-map.bin"


def _events_path(folder: Path | str) -> Path:
    return Path(folder) / "events.ndjson"


# --- split -----------------------------------------------------------------------------------------

def split_trace(input_path: str | os.PathLike[str], folder: Path, shards: int, options: ConformanceOptions,
                progress: ProgressCallback | None = None) -> SplitResult:
    """Decode ``input_path`` in time order and deal its events out to ``shards`` shard files.

    As :func:`kvonce_pipeline.domains.kvonce.own_pass.conformance.run_conformance`, a streamed input is first read
    optimistically and read again through the on-disk sort if it turns out not to be in order
    (the writers of the first attempt discard their files). Raises :class:`InputError`.
    """
    started = time.perf_counter()
    for sort_on_disk in (False, True):
        try:
            with open_trace(input_path, format=options.format, limits=options.limits, spill_dir=folder.parent,
                            sort_on_disk=sort_on_disk, run_events=options.sort_run_events) as trace:
                with gc_paused():
                    counts = _deal(trace.events, folder, shards, progress)
                result = SplitResult(folder, shards, sum(counts), counts, trace.summary())
                break
        except OutOfOrder:
            if sort_on_disk:  # pragma: no cover - the sorted stream is in order by construction
                raise
    result.seconds = time.perf_counter() - started
    return result


def _deal(events: Iterator[Any], folder: Path, shards: int, progress: ProgressCallback | None) -> list[int]:
    """The split's pass: the events file, the shard files and the shard map, each batch encoded once."""
    counts = [0] * shards
    stamp_of, crc32, line_of = format_timestamp, zlib.crc32, event_line
    with ExitStack() as stack:
        events_out = stack.enter_context(BackgroundWriter(_events_path(folder)))
        map_out = stack.enter_context(BackgroundWriter(_map_path(folder)))
        outs = [stack.enter_context(BackgroundWriter(_shard_name(folder, shard, "ndjson"))) for shard in range(shards)]
        lines: list[Any] = []
        ids = bytearray()
        done = 0
        for event in events:
            time_ns = event.time_unix_nano
            lines.append(line_of(event, None if time_ns is None else stamp_of(time_ns)))
            key = event.key
            ids.append(0 if key is None or shards == 1 else crc32(key.encode("utf-8", "surrogatepass")) % shards)
            if len(lines) >= BATCH:
                _write_batch(lines, ids, events_out, map_out, outs, counts)
                done += len(lines)
                lines.clear()
                ids = bytearray()
                if progress is not None:
                    progress("split", done, None)
        if lines:
            _write_batch(lines, ids, events_out, map_out, outs, counts)
    return counts


def _write_batch(lines: list[Any], ids: bytearray, events_out: BackgroundWriter, map_out: BackgroundWriter,
                 outs: list[BackgroundWriter], counts: list[int]) -> None:
    chunk = encode_lines(lines)
    events_out.write(chunk)
    map_out.write(bytes(ids))
    if len(outs) == 1:
        outs[0].write(chunk)
        counts[0] += len(lines)
        return
    pieces = chunk.split(b"\n")  # one line each (JSON escapes newlines), then b"" after the last
    buckets: list[list[bytes]] = [[] for _ in outs]
    for shard, piece in zip(ids, pieces):
        buckets[shard].append(piece)
    for shard, bucket in enumerate(buckets):
        if bucket:
            bucket.append(b"")
            outs[shard].write(b"\n".join(bucket))
            counts[shard] += len(bucket) - 1


# --- check -----------------------------------------------------------------------------------------

class ShardEvent(msgspec.Struct, gc=False, rename={
        "stamp": "timestamp", "time_unix_nano": "timeUnixNano", "trace_id": "traceId", "span_id": "spanId"}):
    """One line of a shard file, decoded in C, with the attributes the folds and the validator read.

    The lines are our own :class:`~kvonce_pipeline.domains.kvonce.event_log.EventLine` output, so no checks are
    needed; the missing fields default as ``EventLine`` leaves them out. ``time_unix_nano`` stays
    the line's string: the validator only asks whether an event has a time.
    """

    stamp: Any = None
    time_unix_nano: Any = None
    type: Any = None
    key: Any = None
    value: Any = None
    reason: Any = None
    context: Any = None
    trace_id: Any = ""
    span_id: Any = ""
    actor: Any = "unknown"
    origin: Any = ""


class _StatePart(msgspec.Struct, gc=False):
    """A state-sequence entry without its ``totals`` (field names and order as ``projection._Entry``)."""

    index: int
    timestamp: Any
    type: Any
    key: Any
    state: KeyState | None


_decode_lines = msgspec.json.Decoder(ShardEvent).decode_lines
_encode = msgspec.json.Encoder().encode
#: Bytes of a shard file decoded at a time (whole lines).
READ_BYTES = 4 * 1024 * 1024


def _shard_events(path: Path) -> Iterator[list[ShardEvent]]:
    with open(path, "rb") as stream:
        rest = b""
        while True:
            block = stream.read(READ_BYTES)
            if not block:
                break
            block = rest + block
            end = block.rfind(b"\n") + 1
            rest = block[end:]
            if end:
                yield _decode_lines(block[:end])
        if rest:
            yield _decode_lines(rest)


def check_shard(task: ShardTask) -> ShardResult:
    """Check one shard: the engine's task. Writes the shard's state part, perKey part and findings.

    Runs on a worker: only files under ``task.folder`` and the plain values of ``task``.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    folder, shard = Path(task.folder), task.shard
    _still_there(folder)
    validator = Validator(max_retries=task.max_retries, strict=task.strict, disabled=task.disabled)
    per_key = PerKeyFold()
    states = StateFold()
    totals, keys_seen = states.totals, per_key.per_key
    fold_key, fold_state, observe = per_key.fold, states.fold, validator.observe
    part = _StatePart(0, None, None, None, None)
    encode_into = msgspec.json.Encoder().encode_into
    kinds = _KINDS
    tag = bytes([shard])
    count = 0
    with gc_paused(), open(_map_path(folder), "rb") as map_file, \
            mmap.mmap(map_file.fileno(), 0, access=mmap.ACCESS_READ) as shard_map, \
            atomic_writer(_shard_name(folder, shard, "states")) as states_out:
        find = shard_map.find
        index = -1
        for batch in _shard_events(_shard_name(folder, shard, "ndjson")):
            buffer = bytearray()
            for event in batch:
                index = find(tag, index + 1)
                if index < 0:
                    raise OutputError(f"{_map_path(folder)}: shard {shard} has more events than its map")
                stamp = event.stamp
                known = len(keys_seen)
                fold_key(event, stamp)  # type: ignore[arg-type]
                written = totals.writtenKeys
                state = fold_state(event, stamp)  # type: ignore[arg-type]
                observe(index, event)  # type: ignore[arg-type]
                code = kinds.get(event.type, 3) if type(event.type) is str else 3
                if totals.writtenKeys != written:
                    code |= _WROTE
                if len(keys_seen) != known:
                    code |= _NEW_KEY
                part.index, part.timestamp, part.type, part.key, part.state = (index, stamp, event.type,
                                                                             event.key, state)
                buffer.append(_ZERO + code)
                encode_into(part, buffer, -1)
                buffer[-1] = 10  # the entry's closing brace: the merge appends the totals and closes it
            count += len(batch)
            states_out.write(buffer)
    _still_there(folder)
    _write_per_key(per_key, _shard_name(folder, shard, "perkey"), indent=task.events < INDENT_BELOW)
    report = validator.report()
    _still_there(folder)
    with atomic_writer(_shard_name(folder, shard, "issues.json")) as out:
        out.write(orjson.dumps(report["issues"]))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return ShardResult(shard=shard, events=count, keys=report["summary"]["keys"], stats=per_key.stats(),
                       cpu_seconds=time.process_time() - cpu_started, wall_seconds=time.perf_counter() - started,
                       peak_rss_mb=usage.ru_maxrss / 1024, pid=os.getpid(), host=os.uname().nodename)


def _still_there(folder: Path) -> None:
    """Refuse to write once the run's folder is gone (stopped, or not visible on this worker): the
    writer would create it again and leave it behind for nobody."""
    if not (folder / _MARKER).is_file():
        raise FileNotFoundError(2, "the run's shard folder is gone or not visible here", str(folder / _MARKER))


def _write_per_key(per_key: PerKeyFold, path: Path, *, indent: bool) -> None:
    """One line per key, in first-seen order: ``"key":{...}`` as the projection file has it.

    Indented (a small run), an entry spans lines; its newlines are written as NUL (JSON escapes a
    NUL in a string, so none is there) and put back by the merge.
    """
    with atomic_writer(path) as out:
        lines: list[bytes] = []  # a batch at a time, not a second copy of every key's entry
        encode = _encode
        for key, entry in per_key.per_key.items():
            if indent:
                text = orjson.dumps({key: msgspec.to_builtins(entry)}, option=orjson.OPT_INDENT_2)
                inner = text.split(b"\n")[1:-1]  # without the wrapping object's braces
                lines.append(b"\x00".join(b"  " + line for line in inner))
            else:  # msgspec encodes a dict of structs exactly as these pieces joined by commas
                lines.append(encode(key) + b":" + encode(entry))
            if len(lines) >= BATCH:
                lines.append(b"")
                out.write(b"\n".join(lines))
                lines.clear()
        if lines:
            lines.append(b"")
            out.write(b"\n".join(lines))


# --- merge -----------------------------------------------------------------------------------------


def merge_stats(results: Sequence[ShardResult]) -> dict[str, Any]:
    """The run's ``stats`` from the shards' (as :meth:`PerKeyFold.stats` computes them for one pass)."""
    first = results[0].stats
    merged: dict[str, Any] = {}
    for name, value in first.items():
        if name == "byType":
            merged[name] = {kind: sum(r.stats[name][kind] for r in results) for kind in value}
        elif name == "successRate":
            merged[name] = None  # below, from the sums
        else:
            merged[name] = sum(r.stats[name] for r in results)
    total = merged["totalEvents"]
    merged["successRate"] = round(merged["byType"]["success"] / total, 3) if total else 0
    return merged


def merge_report(folder: Path, results: Sequence[ShardResult], *, max_retries: int, strict: bool,
                 input_summary: dict[str, Any] | None, disabled: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The validation report, as :meth:`Validator.report` makes it for one pass.

    Findings are sorted by ``(eventIndex, type)`` within each shard; an event belongs to one
    shard, so a merge on that key is the single pass's (stable) sort of all of them.
    """
    lists = []
    for result in results:
        with open(_shard_name(folder, result.shard, "issues.json"), "rb") as handle:
            lists.append(orjson.loads(handle.read()))
    issues = list(heapq.merge(*lists, key=lambda issue: (issue["eventIndex"], issue["type"])))
    errors = sum(1 for issue in issues if issue["severity"] == "error")
    by_rule: dict[str, int] = {}
    for issue in issues:
        by_rule[issue["type"]] = by_rule.get(issue["type"], 0) + 1
    summary: dict[str, Any] = {"events": sum(r.events for r in results), "keys": sum(r.keys for r in results),
                               "errors": errors, "warnings": len(issues) - errors, "byRule": by_rule}
    if input_summary is not None:
        summary["input"] = input_summary
    return report_document(strict, max_retries, disabled, issues, summary, errors)


def _projection_shell(stats: dict[str, Any], events: int) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """``kvonce-projection.json`` around its ``perKey`` entries: (head, before, separator, after, tail).

    With entries the file is ``head + before + entries joined by separator + after + tail``;
    without any, ``head + tail``.
    """
    document = {"schemaVersion": PROJECTION_SCHEMA, "eventCount": events, "perKey": {}, "stats": stats,
                "outputs": {"stateSequence": artifacts.STATE_SEQUENCE}}
    if events < INDENT_BELOW:
        shell, marker = orjson.dumps(document, option=orjson.OPT_INDENT_2), b'"perKey": {}'
        at = shell.index(marker) + len(marker) - 1
        return shell[:at], b"\n", b",\n", b"\n  ", shell[at:]
    shell, marker = _encode(document), b'"perKey":{}'
    at = shell.index(marker) + len(marker) - 1
    return shell[:at], b"", b",", b"", shell[at:]


_TOTALS = b',"totals":{"events":%d,"success":%d,"retry":%d,"failure":%d,"unknown":%d,"writtenKeys":%d}}'


def merge_files(split: SplitResult, results: Sequence[ShardResult], states_path: Path, projection_path: Path,
                progress: ProgressCallback | None = None) -> dict[str, Any]:
    """The state sequence and the projection, in one pass over the shard map; returns the stats."""
    folder = split.folder
    stats = merge_stats(results)
    head, before, separator, after, tail = _projection_shell(stats, split.events)
    indented = split.events < INDENT_BELOW
    keyed_any = stats["uniqueKeys"] > 0
    with ExitStack() as stack:
        next_state = [stack.enter_context(open(_shard_name(folder, r.shard, "states"), "rb", buffering=1 << 20)).readline
                      for r in results]
        next_key = [stack.enter_context(open(_shard_name(folder, r.shard, "perkey"), "rb", buffering=1 << 20)).readline
                    for r in results]
        shard_map = stack.enter_context(open(_map_path(folder), "rb"))
        states_out = stack.enter_context(BackgroundWriter(states_path))
        projection_out = stack.enter_context(BackgroundWriter(projection_path))
        counts = [0, 0, 0, 0]
        written = done = 0
        first_key = True
        totals = _TOTALS
        states_out.write(b"[\n")
        projection_out.write(head + before if keyed_any else head)
        while True:
            ids = shard_map.read(BATCH)
            if not ids:
                break
            entries: list[bytes] = []
            keyed: list[bytes] = []
            for shard in ids:
                line = next_state[shard]()
                code = line[0] - _ZERO
                counts[code & 3] += 1
                done += 1
                if code & _WROTE:
                    written += 1
                if code & _NEW_KEY:
                    keyed.append(next_key[shard]()[:-1])
                entries.append(line[1:-1] + totals % (done, counts[0], counts[1], counts[2], counts[3], written))
            if done > len(entries):
                states_out.write(b"\n,")
            states_out.write(b"\n,".join(entries))
            if keyed:
                text = separator.join(keyed)
                if indented:
                    text = text.replace(b"\x00", b"\n")
                projection_out.write(text if first_key else separator + text)
                first_key = False
            if progress is not None:
                progress("merge", done, split.events)
        if done != split.events or first_key == keyed_any:
            raise OutputError(f"{folder}: the shards' files do not add up to the {split.events} events split "
                              f"({done} in the shard map)")
        states_out.write(b"\n]\n")
        projection_out.write((after + tail if keyed_any else tail) + b"\n")
    return stats


# --- engines ---------------------------------------------------------------------------------------

class ShardEngine(Protocol):
    """Runs the shards' checks somewhere; returns their results in task order."""

    name: str

    def run(self, tasks: Sequence[ShardTask]) -> list[ShardResult]: ...


class LocalEngine:
    """The shards one after the other in this process: S=1, tests, and a machine with no engine."""

    name = "local"

    def run(self, tasks: Sequence[ShardTask]) -> list[ShardResult]:
        return [check_shard(task) for task in tasks]


class EngineError(KvonceError):
    """The engine cannot run the shards (no scheduler at the address given, a cluster that fails to start)."""


#: How long to wait for a dask scheduler given by address.
CONNECT_TIMEOUT = "30s"


class DaskEngine:
    """The shards as tasks on a dask.distributed cluster: ``scheduler`` (``tcp://host:8786``), or,
    without one, a :class:`distributed.LocalCluster` of ``workers`` processes started for the run
    and stopped after it (the same scheduler/worker processes as a real cluster, on loopback).

    Workers must import this package (the same version) and see the report folder under the same
    path. Only a :class:`ShardTask` (paths and numbers) goes out and a :class:`ShardResult`
    comes back: the data stays in files.
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, *, workers: int = 1, timeout: str = CONNECT_TIMEOUT) -> None:
        self.scheduler = scheduler
        self.timeout = timeout
        self.workers = max(1, workers)
        self._cluster: Any = None
        self._client: Any = None

    def __enter__(self) -> "DaskEngine":
        from distributed import Client, LocalCluster

        if self.scheduler:
            try:
                self._client = Client(self.scheduler, timeout=self.timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                raise EngineError(f"cannot reach the dask scheduler {self.scheduler}: {exc}") from exc
        else:
            try:
                self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                             host="127.0.0.1", dashboard_address=None, scheduler_port=0,
                                             silence_logs=40)
                self._client = Client(self._cluster)
            except Exception as exc:  # noqa: BLE001 - no free port, a worker that cannot start
                self.close()
                raise EngineError(f"cannot start a local dask cluster of {self.workers} workers: "
                                  f"{type(exc).__name__}: {exc}") from exc
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def run(self, tasks: Sequence[ShardTask]) -> list[ShardResult]:
        if self._client is None:
            raise RuntimeError("DaskEngine.run outside its with-block")
        futures = self._client.map(check_shard, list(tasks), pure=False, key=[
            f"kvonce-shard-{task.shard:03d}-{os.getpid()}-{time.monotonic_ns()}" for task in tasks])
        try:
            return list(self._client.gather(futures))
        except KvonceError:
            raise
        except FileNotFoundError as exc:
            # the usual cluster mistake: a worker on another machine without the shared folder
            raise EngineError(f"a dask worker cannot read the shard files ({exc.filename}): every worker must "
                              f"see the report folder under the same path (one machine or a shared "
                              f"filesystem)") from exc
        except Exception as exc:  # noqa: BLE001 - a lost worker, a cancelled task, a closed scheduler
            raise EngineError(f"the shards failed on the dask cluster ({self.scheduler or 'local cluster'}): "
                              f"{type(exc).__name__}: {exc}") from exc
        finally:
            # a cancelled task that already runs is not stopped: wait (bounded) so that it is over
            # before the coordinator removes the shard folder
            from distributed import wait

            self._client.cancel(futures)
            try:
                wait(futures, timeout=60)
            except Exception:  # noqa: BLE001 - a timeout or a closed client: nothing more to wait for
                pass


ENGINES = ("local", "dask")


#: The dask scheduler to use when none is given (``tcp://host:8786``); unset: a local cluster per run.
SCHEDULER_ENV = "KVONCE_DASK_SCHEDULER"


@contextmanager
def engine_for(name: str, *, shards: int, scheduler: str | None = None) -> Iterator[ShardEngine]:
    """The engine called ``name`` (:data:`ENGINES`), started for the block and stopped after it.

    ``dask`` uses ``scheduler``, else :data:`SCHEDULER_ENV`, else a local cluster of one worker
    process per shard, at most one per core; ``local`` takes no scheduler (one given is a mistake worth saying).
    """
    if name == "local":
        if scheduler:
            raise EngineError("a scheduler address needs the dask engine (--engine dask)")
        yield LocalEngine()
    elif name == "dask":
        # a local cluster gets one worker per core at most: more shards than cores wait their turn
        workers = min(shards, os.cpu_count() or 1)
        with DaskEngine(scheduler or os.environ.get(SCHEDULER_ENV) or None, workers=workers) as engine:
            yield engine
    else:
        raise EngineError(f"unknown shard engine {name!r}; use one of {', '.join(ENGINES)}")


# --- the run ---------------------------------------------------------------------------------------

@dataclass
class ShardedRun:
    """A sharded run's result, with where its time went (for logs and the benchmark)."""

    result: ConformanceResult
    split: SplitResult
    shards: list[ShardResult]
    check_seconds: float
    merge_seconds: float


def run_sharded(input_path: str | os.PathLike[str], output_dir: str | Path, options: ConformanceOptions = ConformanceOptions(),
                *, shards: int, engine: ShardEngine, progress: ProgressCallback | None = None,
                also_remove: tuple[str, ...] = (artifacts.COLLECTED,), stale: tuple[str, ...] = (),
                keep_folder: bool = False) -> ShardedRun:
    """Write every artifact for ``input_path`` into ``output_dir`` through ``shards`` key shards.

    The same files, byte for byte, as :func:`kvonce_pipeline.domains.kvonce.own_pass.conformance.run_conformance`, and
    the same errors: an unusable input raises :class:`InputError` after writing the report that
    says so (``also_remove``: as there). ``stale``: more of our artifact names removed once the
    new ones are published, since a sharded run does not write them (the Dagster job's collected
    copy: left in place it would describe an earlier payload). ``keep_folder`` leaves the shard
    files for inspection.
    """
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be 1 to {MAX_SHARDS}, not {shards}")
    check_disabled(options.disabled)
    out = Path(output_dir)
    _allow_open_files(2 * shards + 64)  # the merge reads every shard's two parts at once
    prefix = _folder_prefix()
    try:
        out.mkdir(parents=True, exist_ok=True)
        sweep_stale_folders(out, prefix)
        folder = Path(tempfile.mkdtemp(prefix=private_folder_name(prefix), dir=out))
        (folder / _MARKER).write_bytes(b"")
    except OSError as exc:
        raise OutputError(f"cannot write reports in {out}: {exc.strerror or exc}") from exc
    try:
        return _run_in(folder, input_path, out, options, shards=shards, engine=engine, progress=progress,
                       also_remove=also_remove, stale=stale)
    except OSError as exc:  # a write of ours that no writer turned into an OutputError: exit 2, not 1
        raise OutputError(f"cannot write reports in {out}: {exc.strerror or exc}") from exc
    finally:
        if not keep_folder:
            shutil.rmtree(folder, ignore_errors=True)


def _run_in(folder: Path, input_path: str | os.PathLike[str], out: Path, options: ConformanceOptions, *,
            shards: int, engine: ShardEngine, progress: ProgressCallback | None, also_remove: tuple[str, ...],
            stale: tuple[str, ...]) -> ShardedRun:
    try:
        split = split_trace(input_path, folder, shards, options, progress)
    except InputError as error:
        try:
            write_input_error(error, out, also_remove=also_remove)
        except OutputError as output_error:
            error.add_note(f"no report written: {output_error}")
        raise
    tasks = [ShardTask(str(folder.resolve()), shard, shards, split.events, options.max_retries, options.strict,
                       options.disabled)
             for shard in range(shards)]
    started = time.perf_counter()
    results = engine.run(tasks)
    check_seconds = time.perf_counter() - started
    started = time.perf_counter()
    staged_states, staged_projection = folder / "state-sequence.json", folder / "projection.json"
    with gc_paused():
        stats = merge_files(split, results, staged_states, staged_projection, progress)
        report = merge_report(folder, results, max_retries=options.max_retries, strict=options.strict,
                              disabled=options.disabled,
                              input_summary=split.input_summary)
    _publish(out, ((_events_path(folder), out / artifacts.EVENTS),
                   (staged_states, out / artifacts.STATE_SEQUENCE),
                   (staged_projection, out / artifacts.PROJECTION)))
    write_report_files(report, out, stats)
    for name in stale:
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(f"cannot remove {out / name}: {exc.strerror or exc}") from exc
    merge_seconds = time.perf_counter() - started
    return ShardedRun(ConformanceResult(bool(report["valid"]), report, out), split, results, check_seconds,
                      merge_seconds)


def _folder_prefix() -> str:
    """The private folder's prefix with this machine's name: on a folder shared by several machines
    (or pods), a run sweeps only its own machine's abandoned folders, judged by pid."""
    host = "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())[:63] or "host"
    return f"{FOLDER_PREFIX}{host}-"


def _allow_open_files(needed: int) -> None:
    """Raise the soft limit on open files towards the hard one when the merge needs more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # the merge will say which file it could not open


def _publish(out: Path, moves: Sequence[tuple[Path, Path]]) -> None:
    """Rename the staged artifacts into place (one filesystem: the folder is under ``out``)."""
    target = out / artifacts.STATE_SEQUENCE
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for staged, target in moves:
            os.replace(staged, target)
    except OSError as exc:
        raise OutputError(f"cannot publish {target}: {exc.strerror or exc}") from exc
    fsync_directory(out)
    fsync_directory((out / artifacts.STATE_SEQUENCE).parent)
