"""One payload, several domains: which domains it carries, each checked, and the trace summary.

A service may emit spans of several domains into one payload. Which domains a payload carries is
found by a byte scan for each installed domain's ``<prefix>type`` attribute name (no decoding); an
NDJSON event log is one domain's (``--domain``, default the default domain). The domains found are
then checked: every domain on the engine's generic pass from **one** read of the payload; a domain
with its own pass (KvOnce) reads the payload itself, first. Its count of skipped spans says whether
anything else is there at all, so a KvOnce-only payload is read exactly as before. A domain the
scan suggested but that has no event after all (the name occurred inside a value) is left out.

Then ``trace-summary.json`` and ``trace-summary.md`` are written beside the domains' folders, last:
the summary the earlier tool designed for several domains (``domains[]`` with ``key``, ``label``,
``status``, ``issues``, ``traceIds``, ``artifacts``, ``metrics``, and an ``aggregate``). The exit
code is the worst of the domains' (2 unusable input over 1 violation over 0 valid).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .atomic import atomic_writer
from .errors import InputError, KvonceError, NoEventsError, OutputError
from .limits import Limits
from .gc_pause import gc_paused
from .decode.reader import InputFormat, detect_format
from . import registry
from .domain import Domain
from .domain_decode import DomainRead, payload_mentions, read_domain_events
from .domain_pass import (TRACE_IDS_LISTED, DomainOptions, DomainResult, check_domain, domain_input_error,
                          input_error_report, make_folder, remove_stale_file)

TRACE_SUMMARY = "trace-summary.json"
TRACE_SUMMARY_MD = "trace-summary.md"
SUMMARY_SCHEMA = "trace-summary/v1"


@dataclass(frozen=True)
class DomainRun:
    """What a domain with its own pass (:attr:`Domain.runner`) is asked to do."""

    input: str | os.PathLike[str]
    out_dir: Path
    options: DomainOptions
    format: str
    limits: Limits
    #: settings only that pass understands (KvOnce: ``progress``, ``shards`` ...), passed through
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PayloadRequest:
    input: str | os.PathLike[str]
    #: the trace folder: the default domain's artifacts go here, every other domain's in ``<name>/``
    out_dir: Path
    format: str = "auto"
    limits: Limits = field(default_factory=Limits)
    #: only these domains (``--domain``); None: every installed domain the payload carries
    domains: tuple[str, ...] | None = None
    strict: bool = False
    #: rule ids not reported, in whichever domain has them
    disabled: frozenset[str] = frozenset()
    #: per domain: its options by name (values or their text)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PayloadResult:
    results: list[DomainResult]
    summary: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return max((result.exit_code for result in self.results), default=2)


def domain_folder(out_dir: Path, domain: Domain) -> Path:
    """Where a domain's artifacts go: the trace folder itself for the default domain (the place its
    artifacts have always had), ``<trace folder>/<name>/`` for every other."""
    return out_dir if domain.name == registry.DEFAULT_DOMAIN else out_dir / domain.name


def check_payload(request: PayloadRequest) -> PayloadResult:
    """Check the domains of ``request.input`` and write the trace summary (see the module).

    Without ``--domain``: an NDJSON log is the default domain's; for OTLP see :func:`_auto`. Every
    domain named (``domains``, ``options``) is checked before anything is read.
    """
    installed = registry.installed()
    for name, given in request.options.items():
        registry.get(name).options(given)  # an unknown domain or option, or a bad value: before any reading
    if request.domains:
        chosen = [registry.get(name) for name in request.domains]
        _check_disabled(request, chosen)
        results = _run(request, chosen, explicit=True)
    else:
        try:
            detected: InputFormat | None = detect_format(request.input, hint=request.format,
                                                         limits=request.limits)[0]
        except InputError:
            detected = None  # the default domain's pass reports it, as it always has
        default = registry.get(registry.DEFAULT_DOMAIN)
        _check_disabled(request, list(installed.values()))
        if detected is None or detected is InputFormat.NDJSON:
            results = _run(request, [default], explicit=True)
        else:
            results = _auto(request, list(installed.values()))
            if not results:  # no domain's spans at all: the default domain says so, as it always has
                results = _run(request, [default], explicit=True)
    _remove_stale(request.out_dir, results, installed.values(), request.input)
    try:
        summary = write_trace_summary(request.out_dir, results, str(request.input))
    except OutputError as output_error:
        unusable = [result.error for result in results if result.error is not None]
        if not unusable:
            raise
        for error in unusable:  # the input's error is the news; the folder's is a note on it
            error.add_note(f"no trace summary written: {output_error}")
        summary = trace_summary(results, request.out_dir, str(request.input))
    return PayloadResult(results, summary)


def _auto(request: PayloadRequest, installed: list[Domain]) -> list[DomainResult]:
    """The domains an OTLP payload carries, checked. The scan for the own-pass domains' names stops
    at the first match (a KvOnce payload names KvOnce in its first span), so a one-domain payload
    pays next to nothing for it; the rest is scanned only when spans were left over."""
    own = [domain for domain in installed if domain.runner is not None]
    generic = [domain for domain in installed if domain.runner is None]
    results = _run(request, _mentioned(request, own), explicit=False) if own else []
    leftover = not results or any(_skipped_spans(r) or r.error for r in results)
    if leftover and generic:
        extra = _run(request, _mentioned(request, generic), explicit=False)
        if extra:
            results = [r for r in results if not _no_events_of(r, extra, request.input)] + extra
    return results


def _mentioned(request: PayloadRequest, domains: Sequence[Domain]) -> list[Domain]:
    needles = {(domain.definition.prefix + "type").encode(): domain for domain in domains}
    try:
        found = payload_mentions(request.input, list(needles), request.limits)
    except InputError:
        return list(domains)[:1]  # unreadable: the first one's pass says why
    return [domain for needle, domain in needles.items() if needle in found]


def _remove_stale(out_dir: Path, results: Sequence[DomainResult], installed: Iterable[Domain],
                  source: str | os.PathLike[str]) -> None:
    """Artifacts an earlier run left for a domain this payload does not have describe another input:
    they are ours (known names in our folders), so they go, and so do folders that leaves empty."""
    checked = {result.domain.name for result in results}
    for domain in installed:
        if domain.name not in checked:
            remove_domain_artifacts(out_dir, domain, source)


def remove_domain_artifacts(out_dir: Path, domain: Domain, source: str | os.PathLike[str]) -> list[str]:
    """``domain``'s artifacts an earlier run left under ``out_dir`` (never ``source``, the input), and the
    folders that leaves empty; the names of those that were there."""
    folder = domain_folder(out_dir, domain)
    there = []
    for name in domain.artifact_names().all():
        if (folder / name).is_file():
            there.append(name)
        remove_stale_file(folder / name, source)
        if "/" in name:
            _rmdir_if_empty((folder / name).parent)
    if folder != out_dir:
        _rmdir_if_empty(folder)
    return there


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not there, not empty, or not ours to remove: leave it
        pass


def _check_disabled(request: PayloadRequest, domains: Sequence[Domain]) -> None:
    unknown = sorted(request.disabled - {rule.id for domain in domains for rule in domain.rules()})
    if unknown:
        raise KvonceError(f"--disable names rules no checked domain has: {', '.join(unknown)} "
                          "(`kvonce domain doc NAME` lists a domain's rules)")


def _skipped_spans(result: DomainResult) -> int:
    source = result.report.get("summary", {}).get("input") or {}
    return int(source.get("skippedSpans") or 0)


def _no_events_of(result: DomainResult, others: Sequence[DomainResult], source: str | os.PathLike[str]) -> bool:
    """Is ``result`` an own pass's "no events of mine" (not any other fault) while other domains had
    results? Then the payload simply is not that domain's: its report is not listed and the error
    files its pass wrote are removed."""
    if not isinstance(result.error, NoEventsError) or not others:
        return False
    for name in (result.names.validation, result.names.summary):
        remove_stale_file(result.out_dir / name, source)
    return True


def _run(request: PayloadRequest, chosen: Sequence[Domain], *, explicit: bool) -> list[DomainResult]:
    """Run ``chosen``: each own pass, and one read for all the others. Not ``explicit`` (found by
    the scan), a domain without an event after all is left out."""
    generic = [domain for domain in chosen if domain.runner is None]
    read: DomainRead | None = None
    read_error: InputError | None = None
    if generic:
        try:
            read = read_domain_events(request.input, generic, format=request.format, limits=request.limits)
        except InputError as unusable:
            read_error = unusable
        if read is not None and read.format is InputFormat.NDJSON and len(chosen) > 1:
            raise KvonceError("an NDJSON event log holds one domain's events: give one --domain")
    results: list[DomainResult] = []
    for domain in chosen:
        rules = {rule.id for rule in domain.rules()}
        options = DomainOptions(strict=request.strict, disabled=request.disabled & rules,
                                options=request.options.get(domain.name, {}))
        out = domain_folder(request.out_dir, domain)
        if domain.runner is not None:
            results.append(_run_own_pass(domain, DomainRun(request.input, out, options, request.format,
                                                            request.limits, request.extra)))
            continue
        if read is None:  # the read failed: every domain it was for says why (the scan found them)
            results.append(domain_input_error(domain, read_error or InputError(str(request.input), "not read"),
                                              out, keep=request.input))
            continue
        events = read.events[domain.name]
        if not events:
            if explicit:
                what = f"no span carries {domain.definition.prefix}type" if read.format.is_otlp else "no events"
                empty = NoEventsError(str(request.input), f"no {domain.definition.label} events ({what})")
                results.append(domain_input_error(domain, empty, out, read.summary(domain.name), keep=request.input))
            continue
        with gc_paused():
            results.append(check_domain(domain, events, out, options=options,
                                        input_summary=read.summary(domain.name),
                                        progress=request.extra.get("progress")))
        read.events[domain.name] = []  # the pass is done with them
    return results


def _run_own_pass(domain: Domain, job: DomainRun) -> DomainResult:
    """A domain's own pass; an unusable input is its result (the pass wrote the report saying so)."""
    assert domain.runner is not None
    try:
        return domain.runner(job)
    except InputError as error:
        report = input_error_report(domain.definition.schema_version, error)
        return DomainResult(domain, job.out_dir, report, domain.artifact_names(), [], 0, error)


def trace_summary(results: Sequence[DomainResult], out_dir: Path, source: str) -> dict[str, Any]:
    """The ``trace-summary.json`` document."""
    domains = []
    all_ids: dict[str, None] = {}
    total_issues = 0
    for result in results:
        report = result.report
        summary = report.get("summary", {})
        issues = len(report.get("issues", [])) + (1 if "inputError" in report else 0)
        total_issues += issues
        for trace_id in result.trace_ids:
            all_ids.setdefault(trace_id, None)

        def rel(name: str) -> str:
            return os.path.relpath(result.out_dir / name, out_dir)

        names = result.names
        entry: dict[str, Any] = {
            "key": result.domain.name,
            "label": result.domain.definition.label,
            "status": result.status,
            "issues": issues,
            "traceIds": result.trace_ids,
            "artifacts": {
                "validationPath": rel(names.validation),
                "projectionPath": rel(names.projection),
                "stateSequencePath": rel(names.state_sequence),
                "eventsPath": rel(names.events),
                "summaryPath": rel(names.summary),
            },
            "metrics": {
                "eventCount": summary.get("events", 0),
                "keyCount": summary.get("keys", 0),
                "errors": summary.get("errors", 0),
                "warnings": summary.get("warnings", 0),
                "traceIdCount": result.trace_id_count,
                "byRule": summary.get("byRule", {}),
            },
        }
        if "inputError" in report:
            entry["inputError"] = report["inputError"]
        domains.append(entry)
    worst = max((result.exit_code for result in results), default=2)
    return {
        "schemaVersion": SUMMARY_SCHEMA,
        "source": source,
        "domains": domains,
        "aggregate": {
            "status": {0: "valid", 1: "invalid", 2: "error"}[worst],
            "exitCode": worst,
            "domains": len(domains),
            "issues": total_issues,
            "traceIds": list(all_ids)[:TRACE_IDS_LISTED],
            "traceIdCount": len(all_ids) if all(r.trace_id_count is not None for r in results) else None,
        },
    }


def write_trace_summary(out_dir: Path, results: Sequence[DomainResult], source: str) -> dict[str, Any]:
    """Write ``trace-summary.md`` then ``trace-summary.json`` (last: it vouches for the rest)."""
    document = trace_summary(results, out_dir, source)
    text = render_trace_summary(document, results)
    make_folder(out_dir)
    with atomic_writer(out_dir / TRACE_SUMMARY_MD) as handle:
        handle.write(text.encode())
    with atomic_writer(out_dir / TRACE_SUMMARY) as handle:
        handle.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
        handle.write(b"\n")
    return document


def _traces(count: int | None) -> str:
    return "" if count is None else f", {count} trace(s)"


def render_trace_summary(document: dict[str, Any], results: Sequence[DomainResult]) -> str:
    """One Markdown page: a table of the domains, then each domain's own summary as a section."""
    aggregate = document["aggregate"]
    lines = ["# Trace conformance", "",
             f"**Overall: {aggregate['status']}** ({aggregate['domains']} domain(s), {aggregate['issues']} "
             f"finding(s){_traces(aggregate['traceIdCount'])})", "",
             "| domain | status | events | errors | warnings | report |", "|---|---|---:|---:|---:|---|"]
    for entry in document["domains"]:
        metrics = entry["metrics"]
        lines.append(f"| {entry['label']} | {entry['status']} | {metrics['eventCount']} | {metrics['errors']} | "
                     f"{metrics['warnings']} | `{entry['artifacts']['validationPath']}` |")
    lines.append("")
    for result in results:
        try:
            section = (result.out_dir / result.names.summary).read_text(encoding="utf-8")
        except OSError:
            continue
        lines += [section.rstrip("\n"), ""]
    return "\n".join(lines)
