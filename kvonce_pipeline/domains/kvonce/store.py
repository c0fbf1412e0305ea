"""The cumulative store: what a KvOnce service wrote across every payload, folded in event time.

A KvOnce store outlives one payload, and the collector cuts batches by time, so the spec's rules
hold across payloads: a key written in one payload and again in a later one breaks ``NoOverwrite``,
and a ``duplicate`` failure may arrive one payload after the success that makes it legal. A
per-payload check cannot see either. This module keeps, per payload, only the events that matter to
the store (*key facts*: successes, ``duplicate`` failures, retries, each with its time and its index
in that payload's ``kvonce-events.ndjson``), and folds the facts of all payloads per key in
**event-time order** (ties: payload arrival order, then event index).

Policy for late and out-of-order payloads: the fold is recomputed from all facts every time, so a
payload that arrives late lands where its events belong in time, and findings name the partitions
in event-time order (``first`` wrote the key, ``second`` wrote it again), whatever order they
arrived in. A payload's own report (written once, when it ran) is reconciled with the payloads
already folded at that moment (:func:`reconcile_report`): it gains every cross-payload finding that
involves one of its events, and loses ``duplicate`` findings that an earlier success in another
payload makes legal, so it never contradicts the store as it then stood. Reports of earlier
payloads are history and are not rewritten; the store asset is the live view.

Plain Python: no Dagster import.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .artifacts import EVENTS
from ...engine import storage
from ...engine.atomic import write_bytes_atomic
from ...engine.drops import DEFAULT_SCOPE, is_partition_key, is_scope_name, iso_utc, scope_of
from ...engine.timestamps import format_timestamp
from .events import Event
from .validation import DEFAULT_MAX_RETRIES, RULES

FACTS_SCHEMA = "kvonce-keyfacts/v1"
#: Per payload, beside its other artifacts: the key facts the store folds.
KEYFACTS = "kvonce-keyfacts.json"
#: The store's own folder under ``<reports>/trace`` (it cannot clash with a ``<stem>-<12 hex>`` key).
STORE_DIR = "kvonce-store"
STORE_REPORT = "kvonce-store.json"
STORE_SUMMARY = "kvonce-store.md"
STORE_SCHEMA = "kvonce-store/v1"
_SUCCESS, _DUPLICATE, _RETRY = "s", "d", "r"
#: Range reads of a published events file for span ids (:func:`span_ids_at`).
_SPAN_READ_BLOCK = 1024 * 1024

#: ``<reports>/trace`` (or a folder in it): a local path, or a URL when ``KVONCE_REPORTS_DIR`` is one.
#: Every reader and writer of this module takes either, so a drop run, the store and the CLI read the
#: same published objects a run on another machine wrote (docs/storage.md).
Location = Path | str


def location(base: Location, *parts: str) -> Location:
    """``base/part/...``: a path for a local ``base``, a URL for a URL."""
    if storage.is_remote(base):
        return storage.join(base, *parts)
    return storage.local_path(base).joinpath(*parts)


def read_location(where: Location) -> bytes | None:
    """The file's bytes (one ``GET`` for a URL), or None when there is none."""
    if storage.is_remote(where):
        return storage.read_bytes(where)
    try:
        return storage.local_path(where).read_bytes()
    except FileNotFoundError:
        return None


def read_facts(trace_dir: Location, partitions: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The key facts of ``partitions`` (``<trace>/<partition>/kvonce-keyfacts.json``) that have facts a
    store can fold (left out: not judged, unreadable, another schema).

    For a URL: one ``GET`` per partition, sent concurrently (:func:`storage.read_many`), nothing listed."""
    wanted = {partition: location(trace_dir, partition, KEYFACTS) for partition in partitions}
    if storage.is_remote(trace_dir):
        fetched = storage.read_many([str(where) for where in wanted.values()])
        raws = {partition: fetched[str(where)] for partition, where in wanted.items()}
    else:
        raws = {partition: read_location(where) for partition, where in wanted.items()}
    out: dict[str, dict[str, Any]] = {}
    for partition, raw in raws.items():
        if raw is None:
            continue
        try:
            facts = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(facts, dict) and facts.get("schemaVersion") == FACTS_SCHEMA:
            out[partition] = facts
    return out


class FactsBuilder:
    """Collect one payload's key facts while its events stream past (``observe(index, event)``)."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, list[list[Any]]]] = {}
        self.events = 0
        self.untimed = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def observe(self, index: int, event: Event) -> None:
        self.events += 1
        t, key, kind = event.time_unix_nano, event.key, event.type
        if key is None:
            return
        if kind == "success":
            slot, fact = _SUCCESS, [t, index, event.value]
        elif kind == "retry":
            slot, fact = _RETRY, [t, index]
        elif kind == "failure" and isinstance(event.reason, str) and event.reason.lower() == "duplicate":
            slot, fact = _DUPLICATE, [t, index]
        else:
            return
        if t is None:  # cannot be placed in time; the payload's own report flags it
            self.untimed += 1
            return
        self.first_ns = t if self.first_ns is None else min(self.first_ns, t)
        self.last_ns = t if self.last_ns is None else max(self.last_ns, t)
        self.keys.setdefault(key, {}).setdefault(slot, []).append(fact)

    def to_json(self) -> dict[str, Any]:
        return {"schemaVersion": FACTS_SCHEMA, "events": self.events, "untimed": self.untimed,
                "firstTimeUnixNano": self.first_ns, "lastTimeUnixNano": self.last_ns, "keys": self.keys}


@dataclass(frozen=True)
class PayloadFacts:
    """One folded payload: its partition key, its arrival order, and its key facts."""

    partition: str
    order: int
    facts: dict[str, Any]


@dataclass(frozen=True)
class _At:
    t: int
    order: int
    index: int
    partition: str

    def ref(self) -> dict[str, Any]:
        return {"partition": self.partition, "eventIndex": self.index, "timeUnixNano": str(self.t),
                "timestamp": format_timestamp(self.t)}


def _severity(rule: str, strict: bool) -> str:
    return "error" if strict else RULES[rule].severity


@dataclass
class Fold:
    """The result of folding payloads: per-key store state and findings (each with two events)."""

    keys: dict[str, dict[str, Any]]
    findings: list[dict[str, Any]]
    resolved: list[dict[str, Any]]
    payloads: list[dict[str, Any]]
    max_retries: int
    strict: bool

    def cross_findings(self) -> list[dict[str, Any]]:
        return [f for f in self.findings if f["crossPayload"]]

    def report(self) -> dict[str, Any]:
        cross = self.cross_findings()
        errors = sum(1 for f in cross if f["severity"] == "error")
        by_rule: dict[str, int] = {}
        for finding in cross:
            by_rule[finding["type"]] = by_rule.get(finding["type"], 0) + 1
        return {
            "schemaVersion": STORE_SCHEMA,
            "valid": errors == 0,
            "strict": self.strict,
            "maxRetries": self.max_retries,
            "order": "event time, then payload arrival order, then event index",
            "payloads": self.payloads,
            "summary": {"payloads": len(self.payloads), "keys": len(self.keys),
                        "writtenKeys": sum(1 for k in self.keys.values() if k["written"]),
                        "crossPayloadFindings": len(cross), "errors": errors,
                        "warnings": len(cross) - errors, "byRule": by_rule,
                        "resolvedAcrossPayloads": len(self.resolved)},
            "findings": cross,
            "resolved": self.resolved,
            "keys": self.keys,
        }


def fold(payloads: Sequence[PayloadFacts], *, max_retries: int = DEFAULT_MAX_RETRIES,
         strict: bool = False) -> Fold:
    """Fold every payload's key facts per key in event-time order (see the module docstring).

    Memory is proportional to the facts (successes, duplicates and retries), not to all events.
    """
    timelines: dict[str, list[tuple[_At, str, Any]]] = {}
    summaries: list[dict[str, Any]] = []
    for payload in sorted(payloads, key=lambda p: p.order):
        facts = payload.facts
        summaries.append({"partition": payload.partition, "order": payload.order, "events": facts.get("events"),
                          "keys": len(facts.get("keys", {})),
                          "firstTimeUnixNano": facts.get("firstTimeUnixNano"),
                          "lastTimeUnixNano": facts.get("lastTimeUnixNano")})
        for key, slots in facts.get("keys", {}).items():
            line = timelines.setdefault(key, [])
            for kind in (_SUCCESS, _DUPLICATE, _RETRY):
                for fact in slots.get(kind, ()):
                    line.append((_At(int(fact[0]), payload.order, int(fact[1]), payload.partition), kind,
                                 fact[2] if kind == _SUCCESS else None))
    keys: dict[str, dict[str, Any]] = {}
    findings: list[dict[str, Any]] = []
    resolved: list[dict[str, Any]] = []

    def add(rule: str, key: str, first: _At, second: _At, message: str) -> None:
        findings.append({"type": rule, "key": key, "severity": _severity(rule, strict), "message": message,
                         "crossPayload": first.partition != second.partition,
                         "first": first.ref(), "second": second.ref()})

    for key in sorted(timelines):
        line = timelines[key]
        line.sort(key=lambda item: (item[0].t, item[0].order, item[0].index))
        written: _At | None = None
        value: Any = None
        successes = duplicates = retries = 0
        first_retry: _At | None = None
        retry_partitions: set[str] = set()
        bound_reported = False
        pending: list[_At] = []
        for at, kind, fact_value in line:
            if kind == _SUCCESS:
                successes += 1
                if written is None:
                    written, value = at, fact_value
                else:
                    add("multiple-success", key, written, at,
                        f"key written again in {at.partition} (first written in {written.partition})")
            elif kind == _DUPLICATE:
                duplicates += 1
                if written is None:
                    pending.append(at)
                elif written.partition != at.partition:
                    resolved.append({"type": "duplicate-after-success", "key": key, "success": written.ref(),
                                     "duplicate": at.ref()})
            else:
                retries += 1
                retry_partitions.add(at.partition)
                first_retry = first_retry or at
                if retries > max_retries and not bound_reported:
                    bound_reported = True
                    add("retry-bound-exceeded", key, first_retry, at,
                        f"retry {retries} exceeds MAX_RETRIES {max_retries} across "
                        f"{len(retry_partitions)} payload(s)")
        for at in pending:
            if written is not None:
                add("duplicate-before-success", key, at, written,
                    f"duplicate failure in {at.partition} before the key's first success in {written.partition}")
        if pending and written is None:  # judged per payload: there is no second event to pair with
            by_partition: dict[str, list[_At]] = {}
            for at in pending:
                by_partition.setdefault(at.partition, []).append(at)
            for part, ats in by_partition.items():
                add("duplicate-without-success", key, ats[0], ats[-1],
                    f"{len(ats)} duplicate failure(s) in {part} on a key no payload has written")
        keys[key] = {"written": written is not None, "value": value,
                     "writtenBy": written.ref() if written else None,
                     "successes": successes, "duplicates": duplicates, "retries": retries}
    findings.sort(key=lambda f: (int(f["second"]["timeUnixNano"]), f["key"], f["type"]))
    return Fold(keys, findings, resolved, summaries, max_retries, strict)


def span_ids_at(events_file: Location, indices: Iterable[int]) -> dict[int, dict[str, str]]:
    """``traceId``/``spanId`` of the events at ``indices`` of a payload's ``kvonce-events.ndjson``
    (line *n* is event *n*).

    The key facts leave ids out on purpose (they would double the facts of every payload, for the
    few events a finding names); the events file has them, and is read here once, up to the last
    wanted line, parsing only the wanted lines. An event without ids, or a file gone, gives none.
    For a URL the object is streamed by range ``GET``s (1 MiB blocks, read ahead by a block), so the
    cost is the bytes up to the last wanted line (about 150 bytes an event) plus at most 2 MiB, one
    request per 2 MiB or so; it is downloaded whole only when that line is near its end.
    """
    wanted = set(indices)
    found: dict[int, dict[str, str]] = {}
    if not wanted:
        return found
    last = max(wanted)
    remote = storage.is_remote(events_file)
    try:
        with (storage.open_read(str(events_file), block_size=_SPAN_READ_BLOCK) if remote
              else open(events_file, "rb")) as handle:
            for index, raw in enumerate(handle):
                if index in wanted:
                    try:
                        event = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        continue  # this finding keeps partition and index only; the others get theirs
                    ids = {name: event[name] for name in ("traceId", "spanId")
                           if isinstance(event, dict) and isinstance(event.get(name), str)}
                    if ids:
                        found[index] = ids
                if index >= last:
                    break
    except OSError:
        pass  # the file is gone: the findings still name partition and event index
    return found


def attach_span_ids(refs: Iterable[dict[str, Any]], folder_of: Callable[[str], Location]) -> None:
    """Add ``traceId``/``spanId`` to event references (``{"partition", "eventIndex", ...}``) in place,
    reading each partition's events file once (``folder_of(partition)`` is its report folder).

    Cost: each store materialization reads every involved payload's events file up to its last
    referenced line. Findings are few, but one late in a big payload costs reading that file up
    to it (about 1 s per million events), every time the store is refolded."""
    by_partition: dict[str, list[dict[str, Any]]] = {}
    for ref in refs:
        by_partition.setdefault(ref["partition"], []).append(ref)
    for partition, items in by_partition.items():
        ids = span_ids_at(location(folder_of(partition), EVENTS), {int(item["eventIndex"]) for item in items})
        for item in items:
            item.update(ids.get(int(item["eventIndex"]), {}))


def reconcile_report(report: dict[str, Any], partition: str, own_facts: dict[str, Any],
                     prior: Sequence[PayloadFacts], own_order: int | None = None,
                     folder_of: Callable[[str], Location] | None = None) -> dict[str, Any]:
    """Make one payload's validation report agree with the store as of now (prior payloads + it).

    For keys the payload shares with a prior payload, the per-payload ``duplicate-*`` findings are
    replaced by the fold's judgement, and every cross-payload finding that involves one of this
    payload's events is added (at this payload's event index, naming the other partition). Keys
    nobody else touched keep their per-payload findings. ``valid`` and the summary are recomputed.
    With ``folder_of`` (a partition's report folder), an added finding carries the ``traceId`` and
    ``spanId`` of both its events, read from their payloads' events files.
    """
    if report.get("inputError"):
        return report
    order = own_order if own_order is not None else max((p.order for p in prior), default=-1) + 1
    shared = {key for p in prior for key in p.facts.get("keys", {})} & set(own_facts.get("keys", {}))
    result = fold([*prior, PayloadFacts(partition, order, own_facts)],
                  max_retries=int(report.get("maxRetries", DEFAULT_MAX_RETRIES)), strict=bool(report.get("strict")))
    issues = [i for i in report["issues"]
              if not (i.get("key") in shared and i["type"] in ("duplicate-before-success", "duplicate-without-success"))]
    added: list[dict[str, Any]] = []
    for finding in result.findings:
        first, second = finding["first"], finding["second"]
        if finding["type"].startswith("duplicate-"):
            # The event at fault is the duplicate (``first``); only its payload's report carries it.
            if first["partition"] != partition or finding["key"] not in shared:
                continue  # not ours, or a key nobody else touched (the per-payload finding stands)
            anchor, other = first, (second if finding["crossPayload"] else None)
        elif not finding["crossPayload"]:
            continue  # within one payload: its own validator already reported it
        elif second["partition"] == partition:
            anchor, other = second, first
        elif first["partition"] == partition:
            anchor, other = first, second  # a late payload whose event is the earlier one
        else:
            continue
        issue = _issue(finding, anchor, other)
        issues.append(issue)
        if other is not None:
            added.append(issue)
    if folder_of is not None and added:
        _attach_issue_ids(added, partition, folder_of)
    my_resolved = [r for r in result.resolved if r["duplicate"]["partition"] == partition]
    issues.sort(key=lambda issue: (issue["eventIndex"], issue["type"]))
    errors = sum(1 for issue in issues if issue["severity"] == "error")
    by_rule: dict[str, int] = {}
    for issue in issues:
        by_rule[issue["type"]] = by_rule.get(issue["type"], 0) + 1
    out = dict(report)
    out["issues"] = issues
    out["valid"] = errors == 0
    out["summary"] = {**report["summary"], "errors": errors, "warnings": len(issues) - errors, "byRule": by_rule}
    out["crossPayload"] = {"partition": partition, "priorPayloads": [p.partition for p in prior],
                           "sharedKeys": len(shared), "findings": len(added), "resolved": my_resolved}
    return out


def _attach_issue_ids(issues: list[dict[str, Any]], partition: str, folder_of: Callable[[str], Location]) -> None:
    """The ids of a reconciled finding's own event (``traceId``/``spanId``, as a per-payload finding
    has them) and of the other payload's event (``crossPayload.otherTraceId``/``otherSpanId``)."""
    mine = [{"partition": partition, "eventIndex": issue["eventIndex"]} for issue in issues]
    others = [{"partition": issue["crossPayload"]["otherPartition"],
               "eventIndex": issue["crossPayload"]["otherEventIndex"]} for issue in issues]
    attach_span_ids([*mine, *others], folder_of)
    for issue, own, other in zip(issues, mine, others):
        issue.update({name: own[name] for name in ("traceId", "spanId") if name in own})
        issue["crossPayload"].update({f"other{name[0].upper()}{name[1:]}": other[name]
                                      for name in ("traceId", "spanId") if name in other})


def _issue(finding: dict[str, Any], mine: dict[str, Any], other: dict[str, Any] | None) -> dict[str, Any]:
    issue = {"type": finding["type"], "key": finding["key"], "severity": finding["severity"],
             "message": finding["message"], "eventIndex": mine["eventIndex"]}
    if other is not None:
        issue["crossPayload"] = {"otherPartition": other["partition"], "otherEventIndex": other["eventIndex"],
                                 "otherTimestamp": other["timestamp"]}
    return issue


def render_store_summary(report: dict[str, Any], max_rows: int = 50) -> str:
    """``kvonce-store.md``: the cross-payload verdict for people."""
    summary = report["summary"]
    lines = ["## KvOnce store across payloads", "",
             f"**Verdict: {'valid' if report['valid'] else 'INVALID'}** ({summary['errors']} errors, "
             f"{summary['warnings']} warnings across {summary['payloads']} payloads; "
             f"{summary['writtenKeys']} of {summary['keys']} keys written; "
             f"{summary['resolvedAcrossPayloads']} duplicate(s) made legal by an earlier payload)", ""]
    if report["findings"]:
        lines += ["| severity | rule | key | first (partition, event, time) | second (partition, event, time) |",
                  "|---|---|---|---|---|"]
        for f in report["findings"][:max_rows]:
            first, second = f["first"], f["second"]
            lines.append(f"| {f['severity']} | `{f['type']}` | {f['key']} | {first['partition']} #{first['eventIndex']} "
                         f"{first['timestamp']} | {second['partition']} #{second['eventIndex']} {second['timestamp']} |")
    return "\n".join(lines) + "\n"


# --- scopes: which payloads belong to one store, and starting a scope afresh ---------------------
#
# A scope is named by the drop folder's subfolder a payload was dropped in (the drop folder itself
# is the scope ``default``); its partition keys carry it (:func:`drops.scope_of`). Each scope is
# folded on its own: payloads of unrelated systems never judge each other. A reset does not delete
# anything: it records which of the scope's partitions the store no longer folds, so their
# reports stay as the history they are and the next payload starts from an empty store.

RESET_FILE = "kvonce-store-reset.json"
RESET_SCHEMA = "kvonce-store-reset/v1"


def store_dir(trace_dir: Location, scope: str) -> Location:
    """``<reports>/trace/kvonce-store`` for the default scope, ``kvonce-store/<scope>`` for another."""
    if not is_scope_name(scope):
        raise ValueError(f"not a scope name: {scope!r}")
    return location(trace_dir, STORE_DIR) if scope == DEFAULT_SCOPE else location(trace_dir, STORE_DIR, scope)


def _reset_record(trace_dir: Location, scope: str) -> dict[str, Any] | None:
    where = location(store_dir(trace_dir, scope), RESET_FILE)
    raw = read_location(where)
    if raw is None:
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON ({exc}); reset the scope again to rewrite it") from None
    return record if isinstance(record, dict) else {}


def excluded_partitions(trace_dir: Location, scope: str) -> frozenset[str]:
    """The partitions a reset of ``scope`` took out of its store (empty if it was never reset)."""
    record = _reset_record(trace_dir, scope)
    return frozenset(record.get("excluded", ())) if record is not None else frozenset()


def judged_partitions(trace_dir: Location) -> dict[str, list[str]]:
    """Per scope, the drop partitions with key facts under ``trace_dir`` (those a store can fold).

    For a URL: one listing of ``<trace>/`` (a request per 1,000 objects)."""
    out: dict[str, list[str]] = {}
    if storage.is_remote(trace_dir):
        names = sorted({relative.split("/", 1)[0] for relative in storage.list_files(trace_dir)
                        if relative.count("/") == 1 and relative.endswith("/" + KEYFACTS)})
        judged = [name for name in names if is_partition_key(name)]
    else:
        try:
            names = sorted(os.listdir(trace_dir))
        except FileNotFoundError:
            return out
        judged = [name for name in names if is_partition_key(name) and (Path(trace_dir) / name / KEYFACTS).is_file()]
    for name in judged:
        out.setdefault(scope_of(name), []).append(name)
    return out


def reset_scope(trace_dir: Location, scope: str, *, max_retries: int = DEFAULT_MAX_RETRIES,
                strict: bool = False, at: str | None = None) -> dict[str, Any]:
    """Start ``scope``'s store afresh: every partition judged so far is left out of its fold from
    now on, and the scope's store files are rewritten empty. Returns the reset record.

    In a bucket the record is replaced by a conditional write on the version it was read at (S3), so
    two resets of one scope at once cannot lose each other's exclusions: the later fails
    (:class:`~kvonce_pipeline.engine.storage.PublishConflict`) and is run again."""
    folder = store_dir(trace_dir, scope)
    remote = storage.is_remote(folder)
    record_at = location(folder, RESET_FILE)
    version = storage.version_of(str(record_at)) if remote else None
    store_version = storage.version_of(str(location(folder, STORE_REPORT))) if remote else None
    excluded = sorted(set(excluded_partitions(trace_dir, scope)) | set(judged_partitions(trace_dir).get(scope, ())))
    record = {"schemaVersion": RESET_SCHEMA, "scope": scope, "resetAt": at or iso_utc(time.time_ns()),
              "excluded": excluded}
    blob = orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n"
    empty = fold([], max_retries=max_retries, strict=strict).report()
    if storage.is_remote(folder) and storage.is_remote(record_at):
        storage.put_bytes(record_at, blob, expect=version)
        publish_store_files(folder, empty, scope, expect=store_version)
    else:
        write_bytes_atomic(Path(record_at), blob)
        write_store_files(Path(folder), empty, scope)
    return record


def store_files(report: dict[str, Any], scope: str) -> tuple[bytes, bytes]:
    """The bytes of the scope's ``kvonce-store.json`` and ``kvonce-store.md``."""
    report = {**report, "scope": scope}
    blob = orjson.dumps(report, option=orjson.OPT_INDENT_2 if len(report["keys"]) < 10_000 else 0) + b"\n"
    return blob, render_store_summary(report).encode()


def write_store_files(folder: Path, report: dict[str, Any], scope: str) -> str:
    """The scope's ``kvonce-store.json`` and ``kvonce-store.md``; returns the report's sha256."""
    blob, summary = store_files(report, scope)
    sha = write_bytes_atomic(folder / STORE_REPORT, blob)
    write_bytes_atomic(folder / STORE_SUMMARY, summary)
    return sha


def publish_store_files(folder: str, report: dict[str, Any], scope: str, *, expect: str | None) -> str:
    """The scope's store files published to the URL ``folder``, the report last; returns its sha256.

    Each file is one ``PUT`` (whole, never half). The report is written only if it is still the
    version ``expect`` this run read before folding (None: there was none), on S3 by a conditional
    write: a store run that lost a race to another (two store runs at once, which the queue's
    ``kvonce/store-fold`` limit should never let happen) fails with
    :class:`~kvonce_pipeline.engine.storage.PublishConflict` instead of replacing the winner's report.
    Its ``kvonce-store.md`` may by then be its own, a view of the same payloads; the next store run
    rewrites both.
    """
    blob, summary = store_files(report, scope)
    storage.put_bytes(storage.join(folder, STORE_SUMMARY), summary)
    storage.put_bytes(storage.join(folder, STORE_REPORT), blob, expect=expect)
    return hashlib.sha256(blob).hexdigest()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("store", help="list the cross-payload store's scopes, or start one afresh")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="each scope: its judged payloads and how many its store folds")
    listing.add_argument("--reports-dir", default=None, help="reports folder or URL (s3://bucket/prefix; default: "
                                                             "KVONCE_REPORTS_DIR or hermetic-reports)")
    listing.set_defaults(run=_list_command)
    reset = actions.add_parser("reset", help="start a scope's store afresh (its payloads' reports are kept)")
    reset.add_argument("--scope", required=True, help="the scope: a drop subfolder's name, or 'default'")
    reset.add_argument("--reports-dir", default=None, help="reports folder or URL (s3://bucket/prefix; default: "
                                                           "KVONCE_REPORTS_DIR or hermetic-reports)")
    reset.set_defaults(run=_reset_command)


def _trace_dir(reports: str | None) -> Location:
    """``<reports>/trace``: ``--reports-dir``, else ``KVONCE_REPORTS_DIR`` (either may be a URL), else
    ``hermetic-reports/trace``."""
    from ...engine.artifacts import trace_dir

    given = reports or os.environ.get("KVONCE_REPORTS_DIR") or None
    if given is None:
        return trace_dir()
    return location(given if storage.is_remote(given) else storage.local_path(given), "trace")


def _list_command(args: Any) -> int:
    trace = _trace_dir(args.reports_dir)
    scopes = judged_partitions(trace)
    if not scopes:
        print(f"no judged payloads under {trace}")
        return 0
    for scope, partitions in sorted(scopes.items()):
        excluded = excluded_partitions(trace, scope)
        folded = [p for p in partitions if p not in excluded]
        print(f"{scope}: {len(partitions)} payload(s), {len(folded)} folded by its store "
              f"({location(store_dir(trace, scope), STORE_REPORT)})")
    return 0


def _reset_command(args: Any) -> int:
    if not is_scope_name(args.scope):
        print(f"kvonce: {args.scope!r} is not a scope name (letters, digits, '_' and '-', at most 40)", file=sys.stderr)
        return 2
    trace = _trace_dir(args.reports_dir)
    record = reset_scope(trace, args.scope)
    print(f"scope {args.scope}: reset at {record['resetAt']}; {len(record['excluded'])} earlier payload(s) are no "
          f"longer folded (their reports are kept); the next payload dropped in it starts from an empty store")
    return 0
