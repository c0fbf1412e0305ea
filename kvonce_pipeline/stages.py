"""The pipeline's stages as plain functions that write one artifact each.

The Dagster assets and the CLI both call these, so a CLI run and a Dagster run produce
byte-identical artifacts. Every write goes through :mod:`kvonce_pipeline.atomic`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import artifacts
from .atomic import atomic_writer
from .events import Event
from .limits import Limits
from .ndjson import dump_events, iter_ndjson_events
from .projection import ProjectionBuilder
from .reader import TraceRead
from .summary import render_summary
from .validation import DEFAULT_MAX_RETRIES, Validator


@dataclass(frozen=True)
class Written:
    """A file this package wrote, with what lineage needs."""

    path: Path
    sha256: str
    size: int


def _timestamped(events: Iterable[Event]) -> Iterator[tuple[Event, str | None]]:
    for event in events:
        yield event, event.timestamp


def write_events(events: Iterable[Event], path: Path) -> Written:
    with atomic_writer(path) as out:
        dump_events(_timestamped(events), out)
    return Written(path, out.hexdigest(), out.size)


def read_events_ndjson(path: Path, limits: Limits | None = None) -> Iterator[Event]:
    """Stream events back from ``kvonce-events.ndjson`` (already in order)."""
    limits = limits or Limits()
    with open(path, "rb") as stream:
        yield from iter_ndjson_events(stream, source=str(path), max_line=limits.max_line_bytes,
                                      max_depth=limits.max_context_depth)


@dataclass(frozen=True)
class ProjectionResult:
    projection: dict[str, Any]
    projection_file: Written
    state_sequence_file: Written


def write_projection(events: Iterable[Event], out_dir: Path) -> ProjectionResult:
    """Fold events into the projection, streaming the state sequence as a JSON array."""
    builder = ProjectionBuilder()
    state_path = out_dir / artifacts.STATE_SEQUENCE
    dumps = orjson.dumps
    with atomic_writer(state_path) as out:
        out.write(b"[")
        separator = b"\n"
        buffer: list[bytes] = []
        for index, event in enumerate(events):
            buffer.append(dumps(builder.observe(index, event, event.timestamp)))
            if len(buffer) >= 4096:
                out.write(separator + b"\n,".join(buffer))
                separator = b"\n,"
                buffer.clear()
        if buffer:
            out.write(separator + b"\n,".join(buffer))
        out.write(b"\n]\n")
    state_file = Written(state_path, out.hexdigest(), out.size)
    projection = builder.result(state_sequence_path=artifacts.STATE_SEQUENCE)
    projection_path = out_dir / artifacts.PROJECTION
    with atomic_writer(projection_path) as out:
        out.write(dumps(projection, option=orjson.OPT_INDENT_2 if builder.event_count < 10_000 else 0))
        out.write(b"\n")
    return ProjectionResult(projection, Written(projection_path, out.hexdigest(), out.size), state_file)


@dataclass(frozen=True)
class ValidationResult:
    report: dict[str, Any]
    validation_file: Written
    summary_file: Written

    @property
    def valid(self) -> bool:
        return bool(self.report["valid"])


def write_validation(
    events: Iterable[Event],
    out_dir: Path,
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
    strict: bool = False,
    input_summary: dict[str, Any] | None = None,
    projection_stats: dict[str, Any] | None = None,
) -> ValidationResult:
    validator = Validator(max_retries=max_retries, strict=strict)
    for index, event in enumerate(events):
        validator.observe(index, event)
    report = validator.report(input_summary=input_summary)
    return ValidationResult(report, *write_report_files(report, out_dir, projection_stats))


def write_report_files(report: dict[str, Any], out_dir: Path,
                       projection_stats: dict[str, Any] | None = None) -> tuple[Written, Written]:
    """Write ``kvonce-validation.json`` and ``kvonce-summary.md``; append to the CI step summary."""
    validation_path = out_dir / artifacts.VALIDATION
    with atomic_writer(validation_path) as out:
        out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        out.write(b"\n")
    validation_file = Written(validation_path, out.hexdigest(), out.size)
    text = render_summary(report, projection_stats).encode()
    summary_path = out_dir / artifacts.SUMMARY
    with atomic_writer(summary_path) as out:
        out.write(text)
    append_step_summary(text)
    return validation_file, Written(summary_path, out.hexdigest(), out.size)


def append_step_summary(text: bytes) -> None:
    """GitHub Actions shows ``$GITHUB_STEP_SUMMARY`` on the run page; appending is its contract."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "ab") as handle:
            handle.write(text + b"\n")


def write_input_error(error: Any, out_dir: Path, input_summary: dict[str, Any] | None = None) -> None:
    """An unusable input still gets a report, one that says so: ``valid`` is false.

    The earlier run's event, projection and state files describe another input; they are removed
    (they are ours, in our folder) so that nothing left behind vouches for this one.
    """
    for name in (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE):
        try:
            (out_dir / name).unlink()
        except FileNotFoundError:
            pass
    report = {
        "schemaVersion": "kvonce-validation/v1",
        "valid": False,
        "inputError": error.to_json(),
        "issues": [],
        "summary": {"events": 0, "keys": 0, "errors": 1, "warnings": 0, "byRule": {},
                    **({"input": input_summary} if input_summary else {})},
    }
    write_report_files(report, out_dir)


def summarize_trace(trace: TraceRead) -> dict[str, Any]:
    return trace.summary()
