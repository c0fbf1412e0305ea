"""Progress for long runs: a bar on a terminal, one summary line otherwise, or log lines.

The pipeline calls ``progress(stage, done, total)`` once per write batch (a few thousand events;
see a pass's batch size), never per event, and the reporters below look at the
clock only then and draw at most every ``interval`` seconds: the cost stays far below 1% of a run
(the tests count the calls rather than time them).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

BAR_WIDTH = 28


def _rate(done: int, elapsed: float) -> float:
    return done / elapsed if elapsed > 0 else 0.0


def _human(number: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if number >= size:
            return f"{number / size:.1f}{unit}"
    return f"{number:.0f}"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def describe(done: int, total: int | None, elapsed: float) -> str:
    """``1.2M events, 85.3k/s, 40%, about 12s left`` (the parts that are known)."""
    rate = _rate(done, elapsed)
    text = f"{_human(done)} events, {_human(rate)}/s"
    if total and total >= done and rate > 0:
        text += f", {100 * done / total:.0f}%, about {_duration((total - done) / rate)} left"
    return text


class ConsoleProgress:
    """The CLI's reporter: a redrawn bar on a terminal, else a single line at :meth:`finish`.

    A CI log gets one line instead of hundreds of carriage-return frames.
    """

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._next_draw = self.started + interval
        self.done = 0
        self.total: int | None = None
        self.calls = 0
        self.draws = 0

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        self.calls += 1
        self.done = done
        if total:
            self.total = total
        if not self.tty:
            return
        now = self.clock()
        if now < self._next_draw:
            return
        self._next_draw = now + self.interval
        self.draws += 1
        self.stream.write("\r" + self._bar(now) + "\x1b[K")
        self.stream.flush()

    def _bar(self, now: float) -> str:
        text = describe(self.done, self.total, now - self.started)
        if self.total:
            filled = min(BAR_WIDTH, int(BAR_WIDTH * self.done / self.total))
            return f"kvonce [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}"
        return f"kvonce [{text}]"

    def finish(self) -> None:
        """Clear the bar, or write the one-line summary (events, seconds, rate)."""
        elapsed = self.clock() - self.started
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"kvonce: processed {self.done} events in {elapsed:.1f}s "
                          f"({_human(_rate(self.done, elapsed))} events/s)\n")
        self.stream.flush()


def log_progress(log: Any, *, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> Callable[[str, int, int | None], None]:
    """A callback for the Dagster assets: ``log.info`` at most every ``interval`` seconds.

    Ten seconds keeps a minute-long materialization to a handful of event-log entries (each one
    is a database write in Dagster), which is what makes progress cheap there.
    """
    started = clock()
    next_log = started + interval

    def report(stage: str, done: int, total: int | None) -> None:
        nonlocal next_log
        now = clock()
        if now < next_log:
            return
        next_log = now + interval
        log.info(f"kvonce {stage}: {describe(done, total, now - started)}")

    return report
