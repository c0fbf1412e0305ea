"""What every domain's Markdown summary shares: the findings by rule and a table of the first ones."""

from __future__ import annotations

from typing import Any

MAX_ROWS = 50


def where_of(issue: dict[str, Any]) -> str:
    """A finding's *where*: its place in the input, and for a finding across payloads the other
    payload's partition and event (so the column is never empty for one)."""
    origin = issue.get("origin") or ""
    cross = issue.get("crossPayload")
    if not cross:
        return origin
    other = f"with {cross['otherPartition']} event {cross['otherEventIndex']}"
    return f"{origin}; {other}" if origin else other


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def findings_section(issues: list[dict[str, Any]], events_name: str, validation_name: str) -> list[str]:
    """The summary's findings by rule and its table of the first findings (every domain's summary)."""
    lines: list[str] = []
    if issues:
        by_rule: dict[tuple[str, str], int] = {}
        for issue in issues:
            by_rule[(issue["type"], issue["severity"])] = by_rule.get((issue["type"], issue["severity"]), 0) + 1
        lines += ["", "### Findings by rule", "", "| rule | severity | count |", "|---|---|---:|"]
        lines += [f"| `{rule}` | {severity} | {count} |"
                  for (rule, severity), count in sorted(by_rule.items(), key=lambda item: (-item[1], item[0]))]
        lines += ["", "### Findings", "",
                  f"*event* is the 0-based line index into `{events_name}` (event 0 is line 1); "
                  "*where* is the place in the input (line, record or span `r<resource>/s<scope>/p<span>`); "
                  "*trace / span* are the span's ids, to open it in your tracing tool.", "",
                  "| severity | rule | key | event | where | trace / span | message |",
                  "|---|---|---|---|---|---|---|"]
        for issue in issues[:MAX_ROWS]:
            ids = f"{issue['traceId']} / {issue.get('spanId', '')}" if issue.get("traceId") else ""
            message = issue["message"]
            first = issue.get("firstWrite")
            if first and f"event {first['eventIndex']}" not in message:
                message += f" (first written at event {first['eventIndex']})"
            lines.append(f"| {issue['severity']} | `{issue['type']}` | {_cell(issue.get('key'))} | "
                         f"{issue['eventIndex']} | {_cell(where_of(issue))} | {_cell(ids)} | {_cell(message)} |")
        if len(issues) > MAX_ROWS:
            lines.append(f"\n{len(issues) - MAX_ROWS} more findings are not shown here ({len(issues)} in all): "
                         f"the full list is `issues` in `{validation_name}`, beside this file.")
    return lines
