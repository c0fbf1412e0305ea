"""Progress reporting: a bar on a terminal, one line otherwise, throttled log lines in Dagster."""

from __future__ import annotations

import io
from pathlib import Path

from kvonce_pipeline.cli import main
from kvonce_pipeline.domains.kvonce.own_pass.conformance import ConformanceOptions, run_conformance
from kvonce_pipeline.devtools.generate import GenerateOptions, generate
from kvonce_pipeline.engine.progress import ConsoleProgress, describe, log_progress
from kvonce_pipeline.domains.kvonce.own_pass.stages import BATCH


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_not_a_terminal_gets_one_line() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = ConsoleProgress(stream, tty=False, clock=clock)
    for done in range(BATCH, 10 * BATCH, BATCH):
        clock.now += 1
        progress("write", done, None)
    assert stream.getvalue() == ""
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kvonce: processed {9 * BATCH} events")


def test_terminal_bar_is_throttled_and_shows_time_left() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = ConsoleProgress(stream, tty=True, interval=0.5, clock=clock)
    for step in range(1, 101):
        clock.now += 0.1
        progress("write", step * 100, 10_000)
    assert progress.calls == 100
    assert progress.draws <= 21, "at most one frame per 0.5 s"
    frames = stream.getvalue().split("\r")
    assert any("left" in frame and "%" in frame and "#" in frame for frame in frames)
    progress.finish()
    assert stream.getvalue().endswith("events/s)\n")


def test_describe_without_a_total() -> None:
    assert describe(1_500_000, None, 10.0) == "1.5M events, 150.0k/s"
    assert "about 10s left" in describe(500, 1000, 10.0)


def test_log_progress_at_most_once_per_interval() -> None:
    class Log:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def info(self, text: str) -> None:
            self.lines.append(text)

    log, clock = Log(), Clock()
    report = log_progress(log, interval=10.0, clock=clock)
    for step in range(1, 61):
        clock.now += 1.0
        report("write", step * BATCH, None)
    assert 5 <= len(log.lines) <= 6
    assert log.lines[0].startswith("kvonce write: ")


def test_the_pipeline_reports_per_batch_not_per_event(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    generate(path, GenerateOptions(events=3 * BATCH + 17, keys=500, format="ndjson"))
    calls: list[tuple[str, int, int | None]] = []
    run_conformance(path, tmp_path / "out", progress=lambda *args: calls.append(args))
    assert 3 <= len(calls) <= 5  # one per batch, one at the end: the cost is per batch
    assert calls[-1][1] == 3 * BATCH + 17
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)


def test_a_fed_document_reports_while_it_is_decoded(tmp_path: Path) -> None:
    """A whole document on two cores: progress comes from the decoder's tap (the longest stage),
    once per run of events, then once at the end; the counts only grow."""
    import orjson

    path = tmp_path / "t.json"
    generate(path, GenerateOptions(events=5 * BATCH + 17, keys=900, batch_spans=BATCH // 2))
    path.write_bytes(orjson.dumps(orjson.loads(path.read_bytes()), option=orjson.OPT_INDENT_2))  # a document
    calls: list[tuple[str, int, int | None]] = []
    run_conformance(path, tmp_path / "out", ConformanceOptions(parallel=True),
                    progress=lambda *args: calls.append(args))
    assert [stage for stage, _, _ in calls[:-1]] == ["decode"] * (len(calls) - 1) and 3 <= len(calls) <= 7
    assert calls[-1] == ("write", 5 * BATCH + 17, 5 * BATCH + 17)
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)


def test_cli_summary_line_when_not_a_terminal(tmp_path: Path, capsys) -> None:
    path = tmp_path / "t.json"
    generate(path, GenerateOptions(events=100, keys=40))
    assert main(["conformance", "--input", str(path), "--output-dir", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "kvonce: processed 100 events in" in err
    assert "\r" not in err
    assert main(["conformance", "--input", str(path), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "processed" not in capsys.readouterr().err
