"""The human summary (``kvonce-summary.md``): what a reviewer reads on the CI run page."""

from __future__ import annotations

from typing import Any

MAX_ROWS = 50


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:200]


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
    lines.append(f"**Verdict: {verdict}** ({summary.get('errors', 0)} errors, "
                 f"{summary.get('warnings', 0)} warnings; {mode} mode, MAX_RETRIES {report.get('maxRetries')})")
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
    issues = report.get("issues", [])
    if issues:
        lines += ["", "### Findings", "", "| severity | rule | key | event | where | message |",
                  "|---|---|---|---|---|---|"]
        for issue in issues[:MAX_ROWS]:
            lines.append(f"| {issue['severity']} | `{issue['type']}` | {_cell(issue.get('key'))} | "
                         f"{issue['eventIndex']} | {_cell(issue.get('origin'))} | {_cell(issue['message'])} |")
        if len(issues) > MAX_ROWS:
            lines.append(f"\n…and {len(issues) - MAX_ROWS} more in `kvonce-validation.json`.")
    return "\n".join(lines) + "\n"
