"""One conformance run without Dagster: input -> events -> projection -> validation -> summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import artifacts
from .errors import InputError
from .limits import Limits
from .reader import read_trace
from .stages import write_artifacts, write_input_error
from .validation import DEFAULT_MAX_RETRIES


@dataclass(frozen=True)
class ConformanceOptions:
    format: str = "auto"
    strict: bool = False
    max_retries: int = DEFAULT_MAX_RETRIES
    limits: Limits = Limits()


@dataclass(frozen=True)
class ConformanceResult:
    valid: bool
    report: dict[str, Any]
    output_dir: Path

    @property
    def exit_code(self) -> int:
        return 0 if self.valid else 1


def run_conformance(input_path: str | Path, output_dir: str | Path,
                    options: ConformanceOptions = ConformanceOptions()) -> ConformanceResult:
    """Write every artifact for ``input_path`` into ``output_dir``.

    Raises :class:`InputError` for unusable input, after writing a validation report that says so.
    """
    out = Path(output_dir)
    try:
        trace = read_trace(input_path, format=options.format, limits=options.limits)
    except InputError as error:
        write_input_error(error, out)
        raise
    input_summary = trace.summary()
    result = write_artifacts(trace.events, out, max_retries=options.max_retries, strict=options.strict,
                             input_summary=input_summary).validation
    return ConformanceResult(result.valid, result.report, out)
