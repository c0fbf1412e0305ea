"""Pandera schemas for each stage's data, and the tables they check.

A schema failure means an artifact broke its own contract (a bug or corrupt data), not that the
trace violates KvOnce: that is the validator's job. Checks are vectorised over columns, so they
stay cheap on millions of rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pandera.pandas as pa

from .events import Event
from .validation import RULES

ISO_MS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
HEX32_OR_EMPTY = r"^(?:[0-9a-f]{32})?$"
HEX16_OR_EMPTY = r"^(?:[0-9a-f]{16})?$"


def spans_frame(request: Any) -> pd.DataFrame:
    """One row per span of a spec OTLP/JSON request (the collected payload)."""
    trace_ids: list[Any] = []
    span_ids: list[Any] = []
    starts: list[Any] = []
    kvonce: list[bool] = []
    for resource_spans in request.get("resourceSpans", ()) if isinstance(request, dict) else ():
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                trace_ids.append(span.get("traceId", ""))
                span_ids.append(span.get("spanId", ""))
                start = span.get("startTimeUnixNano")
                starts.append(int(start) if isinstance(start, (str, int)) and str(start).isdigit() else None)
                names = {a.get("key") for a in span.get("attributes", ()) if isinstance(a, dict)}
                kvonce.append("kvonce.event.type" in names and "kvonce.event.key" in names)
    return pd.DataFrame({
        "traceId": pd.Series(trace_ids, dtype="object"),
        "spanId": pd.Series(span_ids, dtype="object"),
        "startTimeUnixNano": pd.array(starts, dtype="UInt64"),
        "isKvonce": pd.Series(kvonce, dtype="bool"),
    })


collected_schema = pa.DataFrameSchema(
    {
        "traceId": pa.Column(str, pa.Check.str_matches(HEX32_OR_EMPTY), description="hex, lower case, or empty"),
        "spanId": pa.Column(str, pa.Check.str_matches(HEX16_OR_EMPTY)),
        "startTimeUnixNano": pa.Column("UInt64", nullable=True),
        "isKvonce": pa.Column(bool),
    },
    checks=[pa.Check(lambda df: bool(df["isKvonce"].any()), element_wise=False,
                     error="the payload has no span with kvonce.event.type and kvonce.event.key")],
    name="collected_kvonce_otlp",
)


def events_frame(events: Iterable[Event]) -> pd.DataFrame:
    events = list(events)
    return pd.DataFrame({
        "timeUnixNano": pd.array([e.time_unix_nano for e in events], dtype="Int64"),
        "timestamp": pd.Series([e.timestamp for e in events], dtype="object"),
        "type": pd.Series([e.type for e in events], dtype="object"),
        "key": pd.Series([e.key for e in events], dtype="object"),
        "traceId": pd.Series([e.trace_id for e in events], dtype="object"),
        "actor": pd.Series([e.actor for e in events], dtype="object"),
    })


events_schema = pa.DataFrameSchema(
    {
        "timeUnixNano": pa.Column("Int64", pa.Check.ge(0), nullable=True),
        "timestamp": pa.Column(str, pa.Check.str_matches(ISO_MS), nullable=True),
        "type": pa.Column(str, nullable=True),
        "key": pa.Column(str, nullable=True),
        "traceId": pa.Column(str, pa.Check.str_length(min_value=1)),
        "actor": pa.Column(str, pa.Check.str_length(min_value=1)),
    },
    checks=[
        pa.Check(lambda df: bool(df["timeUnixNano"].ffill().fillna(0).is_monotonic_increasing),
                 element_wise=False, error="events are not in time order"),
        pa.Check(lambda df: bool((df["timestamp"].isna() == df["timeUnixNano"].isna()).all()),
                 element_wise=False, error="timestamp and timeUnixNano disagree on presence"),
    ],
    name="kvonce_events",
)


def per_key_frame(projection: dict[str, Any]) -> pd.DataFrame:
    per_key = projection["perKey"]
    keys = list(per_key)
    entries = list(per_key.values())
    return pd.DataFrame(
        {
            "successCount": [e["successCount"] for e in entries],
            "retries": [e["retries"] for e in entries],
            "failures": [len(e["failureReasons"]) for e in entries],
            "firstTimestamp": pd.Series([e["firstTimestamp"] for e in entries], dtype="object"),
            "lastTimestamp": pd.Series([e["lastTimestamp"] for e in entries], dtype="object"),
        },
        index=pd.Index(keys, dtype="object", name="key"),
    )


def projection_schema(stats: dict[str, Any]) -> pa.DataFrameSchema:
    """The per-key table must add up to no more than the run totals it was folded from."""
    by_type = stats["byType"]
    return pa.DataFrameSchema(
        {
            "successCount": pa.Column(int, pa.Check.ge(0)),
            "retries": pa.Column(int, pa.Check.ge(0)),
            "failures": pa.Column(int, pa.Check.ge(0)),
            "firstTimestamp": pa.Column(str, pa.Check.str_matches(ISO_MS), nullable=True),
            "lastTimestamp": pa.Column(str, pa.Check.str_matches(ISO_MS), nullable=True),
        },
        index=pa.Index(str, unique=True, name="key"),
        checks=[
            pa.Check(lambda df: bool((df["firstTimestamp"].fillna("") <= df["lastTimestamp"].fillna("")).all()),
                     element_wise=False, error="firstTimestamp after lastTimestamp"),
            pa.Check(lambda df: int(df["successCount"].sum()) <= by_type["success"]
                     and int(df["retries"].sum()) <= by_type["retry"]
                     and int(df["failures"].sum()) <= by_type["failure"],
                     element_wise=False, error="per-key counts exceed the totals in stats.byType"),
            pa.Check(lambda df: len(df) == stats["uniqueKeys"], element_wise=False,
                     error="perKey size differs from stats.uniqueKeys"),
        ],
        name="kvonce_projection",
    )


def issues_frame(report: dict[str, Any]) -> pd.DataFrame:
    issues = report.get("issues", [])
    return pd.DataFrame({
        "type": pd.Series([i["type"] for i in issues], dtype="object"),
        "key": pd.Series([i.get("key") for i in issues], dtype="object"),
        "severity": pd.Series([i["severity"] for i in issues], dtype="object"),
        "message": pd.Series([i["message"] for i in issues], dtype="object"),
        "eventIndex": pd.Series([i["eventIndex"] for i in issues], dtype="int64"),
    })


def validation_schema(report: dict[str, Any]) -> pa.DataFrameSchema:
    events = report.get("summary", {}).get("events", 0)
    valid = bool(report.get("valid"))
    return pa.DataFrameSchema(
        {
            "type": pa.Column(str, pa.Check.isin(sorted(RULES))),
            "key": pa.Column(str, nullable=True),
            "severity": pa.Column(str, pa.Check.isin(["error", "warning"])),
            "message": pa.Column(str, pa.Check.str_length(min_value=1)),
            "eventIndex": pa.Column("int64", pa.Check.in_range(0, max(events - 1, 0))),
        },
        checks=[pa.Check(lambda df: valid == (not (df["severity"] == "error").any()), element_wise=False,
                         error="'valid' disagrees with the error findings")],
        name="kvonce_validation",
    )


@dataclass(frozen=True)
class SchemaOutcome:
    passed: bool
    rows: int
    failure_count: int
    failure_markdown: str


def check_frame(schema: pa.DataFrameSchema, frame: pd.DataFrame, max_rows: int = 20) -> SchemaOutcome:
    """Validate lazily (every failure, not the first) and render the failure cases as Markdown."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        return SchemaOutcome(False, len(frame), len(cases), _markdown(cases, max_rows))
    return SchemaOutcome(True, len(frame), 0, "")


def _markdown(cases: pd.DataFrame, max_rows: int) -> str:
    columns = [c for c in ("schema_context", "column", "check", "failure_case", "index") if c in cases.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in cases.head(max_rows).iterrows():
        lines.append("| " + " | ".join(str(row[c]).replace("|", "\\|")[:120] for c in columns) + " |")
    if len(cases) > max_rows:
        lines.append(f"\n…{len(cases) - max_rows} more failure cases")
    return "\n".join(lines)
