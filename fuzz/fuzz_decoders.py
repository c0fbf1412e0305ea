"""Coverage-guided fuzz target (atheris / libFuzzer) for the format sniffer and every decoder.

Each input is written to a file and read with :func:`kvonce_pipeline.domains.kvonce.reader.read_trace`, exactly as
``kvonce conformance`` reads it (gzip detection, sniffing, the five decoders, the mapping); the
events it yields are then validated, projected and serialised the way the artifacts are. The only
acceptable failure is :class:`kvonce_pipeline.engine.errors.InputError` (exit 2 with a message): any other
exception, a hang or a crash is a finding.

A second oracle checks the mapping's inverse: events that came in are rendered back to OTLP/JSON
(as ``collected-kvonce-otlp.json`` is) and read again; they must come back unchanged. Conversions
that are known to be lossy and already reported (a string context that looks like JSON, time 0,
integers beyond int64, keyless events) are skipped, so only new findings stop the run.

The first byte of the input picks the ``--format`` hint (auto most of the time), so the forced
paths are fuzzed too. Limits are lowered so that one execution stays fast.

Run (from the project root, new corpus entries go to the first directory)::

    .venv/bin/pip install atheris
    mkdir -p /tmp/kvonce-fuzz-corpus
    .venv/bin/python fuzz/fuzz_decoders.py /tmp/kvonce-fuzz-corpus fuzz/seeds -max_total_time=120

Replay one crashing input: ``.venv/bin/python fuzz/fuzz_decoders.py crash-<sha1>``.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["kvonce_pipeline"]):
    import orjson

    from kvonce_pipeline.engine.errors import InputError
    from kvonce_pipeline.engine.limits import Limits
    from kvonce_pipeline.domains.kvonce.events import Event
    from kvonce_pipeline.domains.kvonce.event_log import dump_events
    from kvonce_pipeline.domains.kvonce.otlp_render import events_to_request
    from kvonce_pipeline.domains.kvonce.projection import ProjectionBuilder
    from kvonce_pipeline.engine.decode.reader import FORMAT_CHOICES
    from kvonce_pipeline.domains.kvonce.reader import read_trace
    from kvonce_pipeline.domains.kvonce.validation import Validator

#: Small limits: a fuzz input is at most a few KiB, but decompression can blow it up.
FUZZ_LIMITS = Limits(
    max_body_bytes=1024 * 1024,
    max_decompressed_bytes=4 * 1024 * 1024,
    max_line_bytes=1024 * 1024,
    max_context_depth=64,
    max_events=100_000,
)
_WORKDIR = tempfile.mkdtemp(prefix="kvonce-fuzz-")
_PAYLOAD = os.path.join(_WORKDIR, "payload")
_RENDERED = os.path.join(_WORKDIR, "rendered.json")
_INT64 = (-(2**63), 2**63 - 1)


def _has_wide_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not _INT64[0] <= value <= _INT64[1]
    if isinstance(value, dict):
        return any(_has_wide_int(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_wide_int(v) for v in value)
    return False


def _known_lossy(event: Event) -> bool:
    """Conversions already reported as lossy (xfail tests in test_properties.py)."""
    return (not event.type or not event.key or event.time_unix_nano == 0
            or (isinstance(event.context, str) and event.context[:1] in ("{", "["))
            or _has_wide_int(event.context) or _has_wide_int(event.value))


def _canonical(event: Event) -> bytes:
    data = event.to_json()
    data.pop("origin", None)
    data.pop("spanId", None)  # non-hex NDJSON span ids are dropped by design (OTLP has bytes ids)
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def _check_round_trip(events: list[Event]) -> None:
    if not events or any(_known_lossy(e) for e in events):
        return
    with open(_RENDERED, "wb") as handle:
        handle.write(orjson.dumps(events_to_request(events)))
    again = read_trace(_RENDERED, limits=FUZZ_LIMITS).events
    # reading sorts by time; rendering keeps the order, so both lists are in the same order
    if [_canonical(e) for e in again] != [_canonical(e) for e in events]:
        raise AssertionError("events changed through OTLP/JSON: "
                             f"{[_canonical(e) for e in events]!r:.600} -> {[_canonical(e) for e in again]!r:.600}")


def _hint(selector: int) -> str:
    """Mostly ``auto`` (what users run); sometimes a forced format."""
    return FORMAT_CHOICES[selector % len(FORMAT_CHOICES)] if selector >= 0xF0 else "auto"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    hint, payload = _hint(data[0]), data[1:]
    with open(_PAYLOAD, "wb") as handle:
        handle.write(payload)
    try:
        trace = read_trace(_PAYLOAD, format=hint, limits=FUZZ_LIMITS)
    except InputError as error:
        text = str(error)
        # the contract: every unusable-input message names the file
        if not text.startswith(_PAYLOAD):
            raise AssertionError(f"InputError does not name the file: {text!r}") from None
        return
    validator = Validator()
    projection = ProjectionBuilder()
    for index, event in enumerate(trace.events):
        validator.observe(index, event)
        projection.observe(index, event, event.timestamp)
    report = validator.report(input_summary=trace.summary())
    orjson.dumps(report)
    orjson.dumps(projection.result())
    dump_events(((event, event.timestamp) for event in trace.events), io.BytesIO())
    _check_round_trip(trace.events)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
