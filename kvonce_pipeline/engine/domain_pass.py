"""The one pass for any domain: order, check, replay through the machine, write the artifacts.

Input: a domain's events as read (:mod:`kvonce_pipeline.engine.domain_decode`). The pass orders them
by time (stably; an event without a time keeps its place after the one before it, as for KvOnce),
then walks them once: the engine's own checks (:data:`~kvonce_pipeline.engine.domain.ENGINE_RULES`),
the machine's ``observe``, one line of the event log and one state-sequence entry per event. Then
the machine's ``finish`` and ``projection``, and the report. Every file goes through the atomic
writer, the report last, so a reader who finds ``<name>-validation.json`` finds the rest of this run.

Artifacts, in the domain's folder (``<reports>/trace/<name>/`` for every domain but the default):
``<name>-events.ndjson``, ``<name>-state-sequence.json``, ``<name>-projection.json``,
``<name>-validation.json``, ``<name>-summary.md``.
"""

from __future__ import annotations

import os

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson

from .atomic import atomic_writer
from .decode.reader import sort_key_times
from .errors import InputError, KvonceError, OutputError
from .timestamps import format_timestamp
from .summary import _cell, findings_section
from .domain import ArtifactNames, Domain, DomainEvent, JsonType

#: Bytes of event log gathered before both files are written out (and progress is reported).
FLUSH_BYTES = 1 << 20
#: How many distinct trace ids a report and the trace summary list (all are counted).
TRACE_IDS_LISTED = 1000

#: The Python types (exactly: a bool is not a number) a decoded JSON value of each JSON type has.
_JSON_TYPES: dict[JsonType, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,), "object": (dict,),
    "array": (list,),
}


@dataclass(frozen=True)
class DomainOptions:
    """How one domain is checked: ``strict`` makes every warning an error, ``disabled`` rule ids are
    not reported at all, ``options`` set the domain's own options (``--option NAME=VALUE``)."""

    strict: bool = False
    disabled: frozenset[str] = frozenset()
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class DomainResult:
    domain: Domain
    out_dir: Path
    report: dict[str, Any]
    names: ArtifactNames
    #: distinct trace ids in order of first appearance (at most :data:`TRACE_IDS_LISTED`) and their number
    #: (None: not counted, see :func:`kvonce_pipeline.domains.kvonce.runner.trace_ids`)
    trace_ids: list[str]
    trace_id_count: int | None
    #: the unusable-input error, when the input was one (the report says so too)
    error: InputError | None = None

    @property
    def valid(self) -> bool:
        return bool(self.report["valid"])

    @property
    def status(self) -> str:
        """``valid``, ``invalid`` or ``error`` (unusable input), as the trace summary says it."""
        if "inputError" in self.report:
            return "error"
        return "valid" if self.valid else "invalid"

    @property
    def exit_code(self) -> int:
        return {"valid": 0, "invalid": 1, "error": 2}[self.status]


def time_order(events: list[DomainEvent]) -> list[DomainEvent]:
    """Stable order by time; an event without a time keeps its place after the event before it
    (KvOnce's rule: :func:`~kvonce_pipeline.engine.decode.reader.sort_key_times`)."""
    ordered = list(events)
    sort_key_times(ordered)
    return ordered


class _Entry(msgspec.Struct, gc=False):
    """One state-sequence entry; one instance is refilled and encoded per event."""

    index: int
    timestamp: str | None
    type: str | None
    key: str | None
    state: Any


class _Findings:
    """The ``emit`` handed to the machine, and the engine's own findings, in one list."""

    def __init__(self, domain: Domain, events: list[DomainEvent], options: DomainOptions) -> None:
        self.severity = {rule.id: ("error" if options.strict else rule.severity)
                         for rule in domain.rules()}
        unknown = sorted(options.disabled - set(self.severity))
        if unknown:
            raise InputError(domain.name, f"--disable names rules the domain does not have: {', '.join(unknown)} "
                                          f"(`kvonce domain doc {domain.name}` lists them)")
        self.disabled = options.disabled
        self.events = events
        self.issues: list[dict[str, Any]] = []

    def __call__(self, rule_id: str, key: str | None, index: int, message: str) -> dict[str, Any] | None:
        severity = self.severity.get(rule_id)
        if severity is None:
            raise ValueError(f"the machine reported rule {rule_id!r}, which its domain.toml does not declare")
        if rule_id in self.disabled:
            return None
        issue: dict[str, Any] = {"type": rule_id, "key": key, "severity": severity, "message": message,
                                 "eventIndex": index}
        if 0 <= index < len(self.events):
            event = self.events[index]
            if event.origin:
                issue["origin"] = event.origin
            if event.trace_id:
                issue["traceId"] = event.trace_id
            if event.span_id:
                issue["spanId"] = event.span_id
        self.issues.append(issue)
        return issue


def line_struct(domain: Domain) -> type[msgspec.Struct]:
    """The struct one line of ``<name>-events.ndjson`` is encoded from, made once per domain.

    Why a struct made at run time rather than a dict per event: msgspec encodes it in C, in
    declaration order, omitting the fields left unset, and building it costs one call; a dict per
    event plus ``orjson.dumps`` was the largest cost of the pass (measured: see docs/domains.md).
    """
    fields: list[tuple[str, Any, Any]] = [("timestamp", Any, msgspec.UNSET), ("timeUnixNano", Any, msgspec.UNSET),
                                          ("type", Any, msgspec.UNSET), ("event", Any, msgspec.UNSET),
                                          ("key", Any, msgspec.UNSET)]
    fields += [(f"f_{spec.name}", Any, msgspec.UNSET) for spec in domain.definition.fields]
    fields += [("traceId", Any, msgspec.UNSET), ("spanId", Any, msgspec.UNSET), ("actor", Any, msgspec.UNSET),
               ("origin", Any, msgspec.UNSET)]
    rename = {f"f_{spec.name}": spec.name for spec in domain.definition.fields}
    return msgspec.defstruct(f"{domain.name}_line", fields, kw_only=True, gc=False, rename=rename)


def check_domain(domain: Domain, events: list[DomainEvent], out_dir: str | Path, *,
                 options: DomainOptions | None = None,
                 input_summary: dict[str, Any] | None = None,
                 progress: Callable[[str, int, int | None], None] | None = None) -> DomainResult:
    """Check ``events`` (as read, any order) against ``domain`` and write its artifacts in ``out_dir``.
    ``progress(stage, done, total)`` is called after every :data:`FLUSH_BYTES` of event log and at
    the end. A failure of the domain's own code is a :class:`DomainFailure`, naming the event."""
    options = options or DomainOptions()
    names = domain.artifact_names()
    out = make_folder(Path(out_dir))
    values = domain.options(options.options)
    if domain.machine is None:
        raise ValueError(f"domain {domain.name!r} has no machine for the generic pass (it brings its own pass)")
    machine = domain.machine(values)
    ordered = time_order(events)
    emit = _Findings(domain, ordered, options)
    for name in (names.validation, names.summary):  # until this run's report, none vouches for its files
        remove_stale_file(out / name)
    try:
        return _pass(domain, machine, ordered, emit, out, names, options, values, input_summary, progress)
    except (KvonceError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - a domain's code: say whose, and stop with exit 2
        raise DomainFailure(f"domain {domain.name!r} failed: {type(exc).__name__}: {exc}") from exc


def _pass(domain: Domain, machine: Any, ordered: list[DomainEvent], emit: "_Findings", out: Path,
          names: ArtifactNames, options: DomainOptions, values: dict[str, Any],
          input_summary: dict[str, Any] | None,
          progress: Callable[[str, int, int | None], None] | None) -> DomainResult:
    definition = domain.definition
    required = {spec.name: spec.required for spec in definition.types}
    allowed = {spec.name: frozenset(kind for t in spec.json for kind in _JSON_TYPES[t]) for spec in definition.fields}
    json_types = {spec.name: spec.json for spec in definition.fields}
    by_type: dict[str, int] = {name: 0 for name in required}
    unknown_types = 0
    keys: set[str] = set()
    seen_traces: dict[str, None] = {}
    Line = line_struct(domain)
    slots = {spec.name: f"f_{spec.name}" for spec in definition.fields}
    entry = _Entry(0, None, None, None, None)
    encode_into = msgspec.json.Encoder().encode_into
    observe, add_key = machine.observe, keys.add
    unset = msgspec.UNSET
    with atomic_writer(out / names.events) as events_out, atomic_writer(out / names.state_sequence) as states_out:
        lines = bytearray()
        states = bytearray(b"[\n")
        index, event = -1, None
        try:
            for index, event in enumerate(ordered):
                kind, key, fields, t = event.type, event.key, event.fields, event.time_unix_nano
                if t is None:
                    stamp = t_text = None
                    emit("missing-required-field", key, index, "event has no timestamp")
                else:
                    stamp, t_text = format_timestamp(t), str(t)
                seen_traces[event.trace_id] = None
                needs = required.get(kind)  # type: ignore[arg-type]
                if needs is None:
                    if kind is None:
                        emit("missing-required-field", key, index, "event has no type")
                    else:
                        unknown_types += 1
                        emit("unknown-event-type", key, index, f"unknown event type {kind!r:.80}")
                else:
                    by_type[kind] += 1  # type: ignore[index]
                for name, value in fields.items():  # no list per event: wrong types are rare
                    if type(value) not in allowed[name]:
                        for name in [n for n, v in fields.items() if type(v) not in allowed[n]]:
                            emit("invalid-field-type", key, index, f"field {name!r} is {_json_kind(fields.pop(name))}, "
                                 f"not {' or '.join(json_types[name])} (ignored)")
                        break  # each wrong field reported and dropped; the loop over the dict ends here
                if needs:
                    for name in needs:
                        if name not in fields:
                            emit("missing-required-field", key, index, f"{kind} event has no {name!r}")
                state = None
                if key:
                    add_key(key)
                    if needs is not None:
                        state = observe(index, event, emit)
                else:
                    emit("missing-required-field", key, index,
                         "event has no key" if key is None else "event has an empty key")
                line = Line(timestamp=stamp, timeUnixNano=t_text, type=kind, event=kind, key=key,
                            traceId=event.trace_id, spanId=event.span_id or unset, actor=event.actor,
                            origin=event.origin or unset)
                for name, value in fields.items():
                    setattr(line, slots[name], value)
                encode_into(line, lines, len(lines))
                lines += b"\n"
                entry.index, entry.timestamp, entry.type, entry.key, entry.state = index, stamp, kind, key, state
                encode_into(entry, states, len(states))
                states += b"\n,"
                if len(lines) >= FLUSH_BYTES:
                    if progress is not None:
                        progress(domain.name, index + 1, len(ordered))
                    events_out.write(lines)
                    lines.clear()
                    states_out.write(states[:-1])
                    del states[:-1]
        except (KvonceError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - the domain's machine: name the event it failed at
            where = f" ({event.origin})" if event is not None and event.origin else ""
            raise DomainFailure(f"domain {domain.name!r} failed at event {index}{where}: "
                                f"{type(exc).__name__}: {exc}") from exc
        events_out.write(lines)
        if progress is not None:
            progress(domain.name, len(ordered), len(ordered))
        # every entry is followed by "\n,", whose "," a flush keeps back: drop it and close the array
        states_out.write(bytes(states[:-1]) + b"]\n" if ordered else b"[\n]\n")
    machine.finish(emit)
    issues = emit.issues
    issues.sort(key=lambda issue: (issue["eventIndex"], issue["type"]))
    errors = sum(1 for issue in issues if issue["severity"] == "error")
    by_rule: dict[str, int] = {}
    for issue in issues:
        by_rule[issue["type"]] = by_rule.get(issue["type"], 0) + 1
    trace_ids = list(seen_traces)
    stats = {
        "events": len(ordered),
        "keys": len(keys),
        "byType": {**by_type, "unknown": unknown_types},
        "firstTimestamp": _first_time(ordered),
        "lastTimestamp": _first_time(reversed(ordered)),
        "traceIdCount": len(trace_ids),
        "traceIds": trace_ids[:TRACE_IDS_LISTED],
    }
    projection = {"schemaVersion": f"{domain.name}-projection/v1", "domain": domain.name, "stats": stats,
                  "stateSequencePath": names.state_sequence, **machine.projection()}
    with atomic_writer(out / names.projection) as handle:
        handle.write(dump_json(projection))
        handle.write(b"\n")
    summary: dict[str, Any] = {"events": len(ordered), "keys": len(keys), "errors": errors,
                               "warnings": len(issues) - errors, "byRule": by_rule}
    if input_summary is not None:
        summary["input"] = input_summary
    report = {"schemaVersion": definition.schema_version, "domain": domain.name, "valid": errors == 0,
              "strict": options.strict, "options": values, "disabledRules": sorted(options.disabled),
              "issues": issues, "summary": summary}
    result = DomainResult(domain, out, report, names, trace_ids[:TRACE_IDS_LISTED], len(trace_ids))
    write_domain_report(result, stats)
    return result


def _first_time(events: Iterable[DomainEvent]) -> str | None:
    for event in events:
        if event.time_unix_nano is not None:
            return format_timestamp(event.time_unix_nano)
    return None


def dump_json(document: Any) -> bytes:
    """Indented JSON of a report or projection. orjson refuses integers beyond 64 bits, which a
    machine's sums over untrusted numbers can reach; the standard library writes those (the same
    layout, slower: only then)."""
    try:
        return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        import json

        return json.dumps(document, indent=2, ensure_ascii=False, default=str).encode()


class DomainFailure(KvonceError):
    """A domain's machine failed (a bug in the domain, or data it cannot handle): exit 2, naming the
    domain and the event, instead of a traceback and the violations' exit code."""


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def write_domain_report(result: DomainResult, stats: dict[str, Any] | None) -> None:
    """The report and its Markdown summary, written last (the summary first, then the report)."""
    text = render_domain_summary(result, stats).encode()
    with atomic_writer(result.out_dir / result.names.summary) as handle:
        handle.write(text)
    with atomic_writer(result.out_dir / result.names.validation) as handle:
        handle.write(dump_json(result.report))
        handle.write(b"\n")


def input_error_report(schema_version: str, error: InputError, input_summary: dict[str, Any] | None = None,
                       *, domain: str | None = None) -> dict[str, Any]:
    """The validation report of an unusable input, every domain's (KvOnce's has no ``domain``)."""
    report: dict[str, Any] = {"schemaVersion": schema_version}
    if domain is not None:
        report["domain"] = domain
    report.update({"valid": False, "inputError": error.to_json(), "issues": [],
                   "summary": {"events": 0, "keys": 0, "errors": 1, "warnings": 0, "byRule": {},
                               **({"input": input_summary} if input_summary else {})}})
    return report


def make_folder(folder: Path) -> Path:
    """``folder``, created with its parents if need be; one that cannot be is an :class:`OutputError`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    return folder


def remove_stale_file(path: Path, keep: str | os.PathLike[str] | None = None) -> None:
    """Remove an artifact an earlier run left (ours: a known name in our folder), unless it is ``keep``,
    the file this run reads: a user may well check an artifact of ours again, and the input is
    never touched."""
    try:
        if keep is not None and os.path.samefile(path, keep):
            return
        path.unlink()
    except (FileNotFoundError, NotADirectoryError):  # nothing there: nothing stale
        pass
    except OSError as exc:
        raise OutputError(f"cannot remove {path}: {exc.strerror or exc}") from exc


def domain_input_error(domain: Domain, error: InputError, out_dir: str | Path,
                       input_summary: dict[str, Any] | None = None, *,
                       keep: str | os.PathLike[str] | None = None) -> DomainResult:
    """An unusable input: a report that says so (``valid`` false) and no artifact of an earlier run
    (``keep``: the input, never removed)."""
    names = domain.artifact_names()
    out = make_folder(Path(out_dir))
    for name in (names.events, names.state_sequence, names.projection):
        remove_stale_file(out / name, keep)
    report = input_error_report(domain.definition.schema_version, error, input_summary, domain=domain.name)
    result = DomainResult(domain, out, report, names, [], 0, error)
    write_domain_report(result, None)
    return result


def render_domain_summary(result: DomainResult, stats: dict[str, Any] | None) -> str:
    """``<name>-summary.md``: the same sections as KvOnce's, with the domain's own counts."""
    report, definition = result.report, result.domain.definition
    lines = [f"## {definition.label} trace conformance", ""]
    error = report.get("inputError")
    if error:
        where = f" ({error['where']})" if error.get("where") else ""
        lines += [f"**Verdict: unusable input** — `{_cell(error['source'])}`{where}: {_cell(error['message'])}", ""]
        return "\n".join(lines) + "\n"
    summary = report["summary"]
    verdict = "valid" if report["valid"] else "INVALID"
    mode = "strict" if report.get("strict") else "default"
    settings = ", ".join(f"{name} {value}" for name, value in report.get("options", {}).items())
    disabled = report.get("disabledRules") or []
    lines.append(f"**Verdict: {verdict}** ({summary['errors']} errors, {summary['warnings']} warnings; {mode} mode"
                 + (f", {settings}" if settings else "")
                 + (f"; disabled: {', '.join(disabled)}" if disabled else "") + ")")
    lines.append("")
    source = summary.get("input") or {}
    rows: list[tuple[str, Any]] = [("events", summary["events"]), ("keys", summary["keys"])]
    if source:
        rows.insert(0, ("input", f"`{_cell(source.get('source'))}` ({source.get('format')}"
                                 f"{', gzip' if source.get('compressed') else ''})"))
        if source.get("skippedSpans"):
            rows.append((f"spans without {definition.prefix}* attributes (skipped)", source["skippedSpans"]))
    if stats:
        rows += [(f"{name} events", count) for name, count in stats["byType"].items()]
    lines += ["| | |", "|---|---|"] + [f"| {name} | {_cell(value)} |" for name, value in rows]
    for warning in source.get("warnings", []) if source else []:
        lines += ["", f"> warning: {_cell(warning)}"]
    lines += findings_section(report["issues"], result.names.events, result.names.validation)
    return "\n".join(lines) + "\n"
