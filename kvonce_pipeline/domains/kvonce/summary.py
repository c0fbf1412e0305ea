"""KvOnce's human summary (``kvonce-summary.md``): what a reviewer reads on the CI run page.

The findings part is every domain's (:func:`kvonce_pipeline.engine.summary.findings_section`); the
verdict line (with ``MAX_RETRIES``) and the counts by KvOnce event type are KvOnce's.
"""

from __future__ import annotations

from typing import Any

from ...engine.summary import _cell, findings_section


def render_summary(report: dict[str, Any], projection_stats: dict[str, Any] | None = None) -> str:
    summary = report.get("summary", {})
    lines = ["## KvOnce trace conformance", ""]
    error = report.get("inputError")
    if error:
        where = f" ({error['where']})" if error.get("where") else ""
        lines += [f"**Verdict: unusable input** — `{_cell(error['source'])}`{where}: {_cell(error['message'])}", ""]
        return "\n".join(lines) + "\n"
    verdict = "valid" if report["valid"] else "INVALID"
    mode = "strict" if report.get("strict") else "default"
    disabled = report.get("disabledRules") or []
    lines.append(f"**Verdict: {verdict}** ({summary.get('errors', 0)} errors, "
                 f"{summary.get('warnings', 0)} warnings; {mode} mode, MAX_RETRIES {report.get('maxRetries')}"
                 + (f"; disabled: {', '.join(disabled)}" if disabled else "") + ")")
    lines.append("")
    source = summary.get("input") or {}
    rows = [("events", summary.get("events")), ("keys", summary.get("keys"))]
    if source:
        rows.insert(0, ("input", f"`{_cell(source.get('source'))}` ({source.get('format')}"
                                 f"{', gzip' if source.get('compressed') else ''})"))
        if source.get("skippedSpans"):
            rows.append(("spans without kvonce attributes (skipped)", source["skippedSpans"]))
    if projection_stats:
        by_type = projection_stats.get("byType", {})
        rows += [(f"{name} events", by_type.get(name)) for name in ("success", "retry", "failure", "unknown")]
        rows.append(("success rate", projection_stats.get("successRate")))
    lines += ["| | |", "|---|---|"] + [f"| {name} | {_cell(value)} |" for name, value in rows]
    for warning in source.get("warnings", []) if source else []:
        lines += ["", f"> warning: {_cell(warning)}"]
    lines += findings_section(report.get("issues", []), "kvonce-events.ndjson", "kvonce-validation.json")
    return "\n".join(lines) + "\n"
