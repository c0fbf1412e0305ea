"""Work the Dagster step needs only files for, in worker processes beside the step's one pass.

The one-pass writer keeps one core busy decoding and writing; its forked children use the
second core for parts of the run. The Dagster step has three jobs the CLI does not, each needing
only files:

* the collected copy (``collect.collect_payload``): for a spec OTLP/JSON payload a byte copy of
  hundreds of megabytes, scanned for names to normalize, hashed and fsynced (about 3 s of CPU
  and more of disk on the 1M trace), while the step decodes the source: the same bytes;
* the ``collected_schema`` check: the document's spans decoded again and checked (about 4 s);
* the ``projection_schema`` check, once the pass has written ``kvonce-projection.json``: the
  checking worker is already running with pandas and Pandera imported and checks the per-key
  table while the step checks the events in its own process.

The workers run at low priority (``nice`` 10): the pass and its children come first, the workers
take what CPU is left, and the step waits for them only at the end. Like the projection worker
each is a fresh interpreter (``python -m``; no fork of a large parent, no Dagster import). Modes
and protocol (one JSON line per answer on stdout):

* ``collect SOURCE DESTINATION FORMAT``: ``{"collected": {...}}``, ``{"inputError": ...}`` or
  ``{"outputError": ...}``, then it exits;
* ``check PATH``: ``{"spans": ..., "kvonce_spans": ..., "outcome": {...}}``, then one request line
  on stdin (``{"projection": path, "stats": {...}}``) answered by ``{"outcome": {...}}``, or the
  end of stdin, on which it exits.

Any other failure comes back as ``{"error": ...}`` and the parent does that part itself: a
worker only ever saves time.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import orjson

from ...domains.kvonce.own_pass.parallel import close_and_wait

_MODULE = "kvonce_pipeline.orchestration.conformance.schema_worker"


class SchemaWorkerError(RuntimeError):
    """The worker could not answer; the caller does that part in its own process instead."""


class SchemaWorker:
    """The parent's handle. Build with :meth:`collect` (then :meth:`copy`) or :meth:`check` (then
    :meth:`collected`, :meth:`request_projection`, :meth:`projection`); :meth:`close` in every case."""

    def __init__(self, *args: str) -> None:
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self._process = subprocess.Popen([sys.executable, "-m", _MODULE, *args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._copying = args[0] == "collect"
        self._copy: Any = None
        self._collected: Any = None

    @classmethod
    def check(cls, document: Path) -> "SchemaWorker":
        """Check the spans of ``document`` (the collected copy, or the source it is a byte copy of)."""
        return cls("check", str(document))

    @classmethod
    def collect(cls, source: Path, destination: Path, hint: str) -> "SchemaWorker":
        """Collect ``source`` into ``destination`` (``collect.collect_payload``); answers :meth:`copy`."""
        return cls("collect", str(source), str(destination), hint)

    def copy(self) -> Any:
        """The :class:`~kvonce_pipeline.engine.collect.Collected` copy (waits for it). Raises the collecting's
        ``InputError`` or ``OutputError`` as collecting in this process would."""
        from ...engine.collect import Collected
        from ...engine.errors import InputError, OutputError
        from ...engine.decode.reader import InputFormat

        if self._copy is None:
            assert self._copying, "a worker started with check() makes no copy"
            answer = self._answer()
            if "inputError" in answer:
                failed = answer["inputError"]
                raise InputError(failed["source"], failed["message"], where=failed["where"])
            if "outputError" in answer:
                raise OutputError(answer["outputError"])
            fields = answer["collected"]
            self._copy = Collected(Path(fields["source"]), Path(fields["path"]), InputFormat(fields["format"]),
                                   fields["compressed"], fields["converted"], fields["sha256"], fields["size"])
        return self._copy

    def collected(self) -> Any:
        """The :class:`~kvonce_pipeline.domains.kvonce.schemas.CollectedOutcome` (waits for it; read once, then cached)."""
        from ...domains.kvonce.schemas import CollectedOutcome, SchemaOutcome

        assert not self._copying, "a worker started with collect() makes no checks"
        if self._collected is None:
            answer = self._answer()
            self._collected = CollectedOutcome(answer["spans"], answer["kvonce_spans"],
                                               SchemaOutcome(**answer["outcome"]))
        return self._collected

    def request_projection(self, path: Path, stats: dict[str, Any]) -> None:
        """Ask for the per-key check; the worker starts on it at once (answer with :meth:`projection`)."""
        self.collected()
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(orjson.dumps({"projection": str(path), "stats": stats}) + b"\n")
            self._process.stdin.close()
        except (OSError, ValueError) as error:  # ValueError: closed already
            raise SchemaWorkerError(f"the schema worker stopped: {error}; {self._stderr_tail()}") from None

    def projection(self) -> Any:
        """The per-key :class:`~kvonce_pipeline.domains.kvonce.schemas.SchemaOutcome` requested before."""
        from ...domains.kvonce.schemas import SchemaOutcome

        return SchemaOutcome(**self._answer()["outcome"])

    def close(self) -> None:
        """End the worker whatever state it is in (it exits at the end of its stdin). Idempotent."""
        if self._stderr.closed:
            return
        close_and_wait(self._process, timeout=5)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._stderr.close()

    def _answer(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        if self._process.stdout.closed:
            raise SchemaWorkerError("the schema worker was closed")
        line = self._process.stdout.readline()
        if not line:
            code = self._process.wait()
            raise SchemaWorkerError(f"the schema worker ended (exit {code}): {self._stderr_tail()}")
        answer = orjson.loads(line)
        if "error" in answer:
            raise SchemaWorkerError(f"the schema worker failed: {answer['error']}")
        return answer

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace")[-2000:]
        except (OSError, ValueError):
            return ""


def _send(payload: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(payload) + b"\n")
    sys.stdout.buffer.flush()


def _release_memory() -> None:
    """Hand freed heap back to the system while the pass runs (glibc only; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _collect(source: Path, destination: Path, hint: str) -> None:
    """Collect as the step would, and say how it went."""
    from ...engine.collect import collect_payload
    from ...engine.errors import InputError, OutputError
    from ...engine.limits import Limits
    from ...domains.kvonce.otlp_render import render_event_log

    try:
        copy = collect_payload(source, destination, format=hint, limits=Limits.from_env(),
                               render_log=render_event_log)
    except InputError as error:
        _send({"inputError": error.to_json()})
        return
    except OutputError as error:
        _send({"outputError": str(error)})
        return
    except Exception as error:  # noqa: BLE001 - reported to the parent, which collects itself
        _send({"error": f"{type(error).__name__}: {error}"})
        return
    _send({"collected": {"source": str(copy.source), "path": str(copy.path), "format": copy.format.value,
                         "compressed": copy.compressed, "converted": copy.converted, "sha256": copy.sha256,
                         "size": copy.size}})


def _check(collected: Path) -> None:
    import gc

    gc.disable()  # no reference cycles here; a collection would walk a million span structs
    from ...domains.kvonce import schemas

    try:
        result = schemas.check_collected_file(collected)
        _send({"spans": result.spans, "kvonce_spans": result.kvonce_spans,
               "outcome": dataclasses.asdict(result.outcome)})
    except Exception as error:  # noqa: BLE001 - reported to the parent, which checks itself
        _send({"error": f"{type(error).__name__}: {error}"})
        return
    _release_memory()
    request = sys.stdin.buffer.readline()
    if not request:
        return
    try:
        asked = orjson.loads(request)
        outcome = schemas.check_projection_file(Path(asked["projection"]), asked["stats"])
        _send({"outcome": dataclasses.asdict(outcome)})
    except Exception as error:  # noqa: BLE001 - reported to the parent, which checks itself
        _send({"error": f"{type(error).__name__}: {error}"})


def main(argv: list[str]) -> int:
    try:
        os.nice(10)  # after the pass and its children: the step waits for this only at its end
    except OSError:
        pass
    if argv[0] == "collect":
        _collect(Path(argv[1]), Path(argv[2]), argv[3])
    else:
        _check(Path(argv[1]))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # the decoded tables need no freeing: the process ends here
