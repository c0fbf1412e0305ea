"""The streaming run: same bytes as the in-memory run, memory bounded by structure, sorted on disk."""

from __future__ import annotations

import filecmp
import random
from pathlib import Path

import pytest

from kvonce_pipeline.domains.kvonce import reader
from kvonce_pipeline.domains.kvonce import event_log
from kvonce_pipeline.domains.kvonce.own_pass.conformance import ConformanceOptions, run_conformance
from kvonce_pipeline.engine.errors import InputError
from kvonce_pipeline.domains.kvonce.events import Event
from kvonce_pipeline.devtools.generate import FORMATS, GenerateOptions, generate
from kvonce_pipeline.domains.kvonce.reader import external_sort, open_trace
from kvonce_pipeline.engine.decode.reader import sort_key_times
from kvonce_pipeline.domains.kvonce.own_pass.stages import (write_artifacts, write_events, write_projection,
                                                            write_validation)

ARTIFACTS = ("kvonce-events.ndjson", "kvonce-projection.json", "projected/kvonce-state-sequence.json",
             "kvonce-validation.json", "kvonce-summary.md")


def _same_artifacts(a: Path, b: Path) -> None:
    for name in ARTIFACTS:
        assert filecmp.cmp(a / name, b / name, shallow=False), name


@pytest.mark.parametrize("form", FORMATS)
def test_streamed_equals_in_memory(tmp_path: Path, form: str) -> None:
    path = tmp_path / f"trace.{form}"
    generate(path, GenerateOptions(events=2500, keys=900, format=form, violations=0.01, batch_spans=200))
    memory = run_conformance(path, tmp_path / "memory", ConformanceOptions(streaming=False))
    streamed = run_conformance(path, tmp_path / "streamed")
    assert memory.report == streamed.report
    _same_artifacts(tmp_path / "memory", tmp_path / "streamed")


def test_fused_pass_equals_the_separate_stages(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    generate(path, GenerateOptions(events=1500, keys=500, violations=0.02))
    events = reader.read_trace(path).events
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    write_events(events, out_a / "kvonce-events.ndjson")
    projection = write_projection(events, out_a)
    write_validation(events, out_a, input_summary={"x": 1}, projection_stats=projection.projection["stats"])
    fused = write_artifacts(events, out_b, input_summary={"x": 1})
    _same_artifacts(out_a, out_b)
    assert fused.projection.projection["stats"] == projection.projection["stats"]
    assert all(type(e["failureReasons"]) is list for e in projection.projection["perKey"].values())


def _shuffled(tmp_path: Path, form: str) -> Path:
    """A trace whose lines (NDJSON events, JSON Lines batches) arrive out of time order."""
    source = tmp_path / f"ordered.{form}"
    generate(source, GenerateOptions(events=3000, keys=1000, format=form, violations=0.01, batch_spans=50))
    lines = source.read_bytes().splitlines()
    random.Random(7).shuffle(lines)
    target = tmp_path / f"shuffled.{form}"
    target.write_bytes(b"\n".join(lines) + b"\n")
    return target


@pytest.mark.parametrize("form", ["ndjson", "otlp-jsonl"])
def test_out_of_order_stream_is_sorted_on_disk(tmp_path: Path, form: str) -> None:
    path = _shuffled(tmp_path, form)
    memory = run_conformance(path, tmp_path / "memory", ConformanceOptions(streaming=False))
    streamed = run_conformance(path, tmp_path / "streamed", ConformanceOptions(sort_run_events=256))
    assert memory.report["summary"]["input"]["reordered"] is True
    assert memory.report == streamed.report
    _same_artifacts(tmp_path / "memory", tmp_path / "streamed")
    leftovers = [p.name for p in (tmp_path / "streamed").iterdir() if p.name.startswith(".")]
    assert leftovers == [], "sort runs and temporary files are removed"


def test_open_trace_spills_runs_only_when_needed(tmp_path: Path) -> None:
    path = _shuffled(tmp_path, "ndjson")
    with open_trace(path, spill_dir=tmp_path, sort_on_disk=True, run_events=500) as trace:
        times = [e.time_unix_nano for e in trace.events]
    assert trace.spilled_runs == 6  # 3000 events in runs of 500 on disk, merged
    assert trace.count == 3000 and trace.reordered
    with open_trace(tmp_path / "ordered.ndjson", spill_dir=tmp_path, sort_on_disk=True, run_events=500) as trace:
        list(trace.events)
    assert not trace.reordered and trace.spilled_runs == 6
    with pytest.raises(reader.OutOfOrder):
        with open_trace(path, spill_dir=tmp_path) as trace:
            list(trace.events)
    assert times == sorted(times)


def test_external_sort_is_the_in_memory_sort() -> None:
    rng = random.Random(3)
    events = [Event(None if rng.random() < 0.1 else rng.randrange(50), "retry", f"k{i % 7}", origin=f"#{i}")
              for i in range(2000)]
    expected = list(events)
    sort_key_times(expected)
    tmp = Path(__import__("tempfile").mkdtemp())
    assert [e.origin for e in external_sort(iter(events), tmp, run_events=97)] == [e.origin for e in expected]
    assert list(tmp.iterdir()) == []


class _Counted(Event):
    """An Event that counts how many of its kind are alive (memory as a structural property)."""

    live = 0
    peak = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _Counted.live += 1
        _Counted.peak = max(_Counted.peak, _Counted.live)

    def __del__(self) -> None:
        _Counted.live -= 1


def test_streaming_holds_a_bounded_number_of_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.ndjson"
    generate(path, GenerateOptions(events=20_000, keys=2000, format="ndjson"))
    monkeypatch.setattr(event_log, "Event", _Counted)
    _Counted.live = _Counted.peak = 0
    run_conformance(path, tmp_path / "streamed")
    assert _Counted.peak <= 4, "an ordered stream holds no events beyond the one being written"
    _Counted.live = _Counted.peak = 0
    run_conformance(path, tmp_path / "memory", ConformanceOptions(streaming=False))
    assert _Counted.peak == 20_000  # the in-memory path, for contrast


def test_unordered_stream_holds_at_most_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _shuffled(tmp_path, "ndjson")
    monkeypatch.setattr(event_log, "Event", _Counted)
    _Counted.live = _Counted.peak = 0
    run_conformance(path, tmp_path / "out", ConformanceOptions(sort_run_events=300))
    assert _Counted.peak <= 300 + 4


def test_error_mid_stream_publishes_nothing_new(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    generate(path, GenerateOptions(events=10_000, keys=1000, format="ndjson"))
    out = tmp_path / "out"
    run_conformance(path, out)
    with open(path, "ab") as handle:
        handle.write(b"{not json\n")
    with pytest.raises(InputError, match="line 10001"):
        run_conformance(path, out)
    assert not (out / "kvonce-events.ndjson").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert b'"inputError"' in (out / "kvonce-validation.json").read_bytes()


def test_empty_of_events_is_unusable(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"","spanId":"","attributes":[]}]}]}]}')
    with pytest.raises(InputError, match="no kvonce events"):
        run_conformance(path, tmp_path / "out")


def test_projection_worker_writes_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    generate(path, GenerateOptions(events=9000, keys=3000, format="ndjson", violations=0.01))
    sequential = run_conformance(path, tmp_path / "one", ConformanceOptions(parallel=False))
    parallel = run_conformance(path, tmp_path / "two", ConformanceOptions(parallel=True))
    assert sequential.report == parallel.report
    _same_artifacts(tmp_path / "one", tmp_path / "two")


def test_projection_worker_discards_its_files_when_the_parent_fails(tmp_path: Path) -> None:
    def failing():
        yield from reader.read_trace(tmp_path / "t.json").events[:5000]
        raise InputError("t.json", "broken on purpose")

    generate(tmp_path / "t.json", GenerateOptions(events=6000, keys=2000))
    out = tmp_path / "out"
    with pytest.raises(InputError):
        write_artifacts(failing(), out, parallel=True)
    leftovers = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert leftovers == [], "no artifact and no temporary file is left behind"


def _count_helpers(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count which helper made the projection: the fed worker (finished) or the forked child (made)."""
    from kvonce_pipeline.domains.kvonce.own_pass import parallel

    used = {"fed": 0, "fork": 0}
    real_fork, real_finish = parallel.ForkedProjection, parallel.FedProjection.finish

    class CountingFork(real_fork):  # the real class; only counts that it was used
        def __init__(self, *args, **kwargs) -> None:
            used["fork"] += 1
            super().__init__(*args, **kwargs)

    def counting_finish(self: parallel.FedProjection) -> dict:
        used["fed"] += 1
        return real_finish(self)

    monkeypatch.setattr(parallel, "ForkedProjection", CountingFork)
    monkeypatch.setattr(parallel.FedProjection, "finish", counting_finish)
    return used


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*"))


@pytest.mark.parametrize("violations", [0.0, 0.02])
def test_fed_projection_writes_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              violations: float) -> None:
    """A whole OTLP document in time order feeds a worker while it is decoded (state sequence,
    per-key file and verdict there); its artifacts and report are the sequential pass's, byte for byte."""
    used = _count_helpers(monkeypatch)
    path = _document(tmp_path, GenerateOptions(events=9000, keys=3000, format="otlp-json", violations=violations))
    sequential = run_conformance(path, tmp_path / "one", ConformanceOptions(parallel=False))
    assert used == {"fed": 0, "fork": 0}
    fed = run_conformance(path, tmp_path / "two", ConformanceOptions(parallel=True))
    assert used == {"fed": 1, "fork": 0}, "the document in time order went to the fed worker"
    assert sequential.report == fed.report
    assert fed.valid == (violations == 0.0)
    _same_artifacts(tmp_path / "one", tmp_path / "two")
    assert _leftovers(tmp_path / "two") == []


@pytest.mark.parametrize("form", ["otlp-json", "otlp-proto"])
def test_document_out_of_time_order_takes_the_forked_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           form: str) -> None:
    """Spans out of time order void the feed (the list is sorted after decoding): the worker is
    stopped and the forked child makes the projection of the sorted list, with the same bytes."""
    import orjson

    from kvonce_pipeline.domains.kvonce.otlp_render import events_to_request
    from kvonce_pipeline.engine.otlp_encodings import request_to_message

    used = _count_helpers(monkeypatch)
    events = reader.read_trace(_generated(tmp_path)).events
    random.Random(5).shuffle(events)
    path = tmp_path / f"shuffled.{form}"
    request = events_to_request(events)
    if form == "otlp-json":
        path.write_bytes(orjson.dumps(request, option=orjson.OPT_INDENT_2))
    else:
        path.write_bytes(request_to_message(request).SerializeToString())
    sequential = run_conformance(path, tmp_path / "one", ConformanceOptions(parallel=False))
    forked = run_conformance(path, tmp_path / "two", ConformanceOptions(parallel=True))
    assert used == {"fed": 0, "fork": 1}
    assert sequential.report == forked.report
    _same_artifacts(tmp_path / "one", tmp_path / "two")
    assert _leftovers(tmp_path / "two") == []


def test_protobuf_document_feeds_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used = _count_helpers(monkeypatch)
    path = tmp_path / "t.pb"
    generate(path, GenerateOptions(events=7000, keys=2000, format="otlp-proto", violations=0.02))
    sequential = run_conformance(path, tmp_path / "one", ConformanceOptions(parallel=False))
    fed = run_conformance(path, tmp_path / "two", ConformanceOptions(parallel=True))
    assert used == {"fed": 1, "fork": 0}
    assert sequential.report == fed.report
    _same_artifacts(tmp_path / "one", tmp_path / "two")


def test_fed_worker_stopped_when_the_input_fails_late(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last span is unusable: the worker was already fed thousands of events; the run fails
    naming the span, the worker is stopped, and nothing but the input-error report is left."""
    import orjson

    from kvonce_pipeline.domains.kvonce.own_pass import parallel

    aborted: list[parallel.FedProjection] = []
    real_abort = parallel.FedProjection.abort

    def spying_abort(self: parallel.FedProjection) -> None:
        real_abort(self)
        aborted.append(self)

    monkeypatch.setattr(parallel.FedProjection, "abort", spying_abort)
    path = _generated(tmp_path)
    document = orjson.loads(path.read_bytes())
    last = document["resourceSpans"][-1]["scopeSpans"][-1]["spans"][-1]
    last["attributes"].append({"key": "kvonce.event.key", "value": {"stringValue": "twice"}})
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="kvonce.event.key"):
        run_conformance(path, out, ConformanceOptions(parallel=True))
    assert aborted and all(fed._process is None for fed in aborted), "the worker was started and stopped"
    assert aborted[0].sent >= 4096, "the worker had been fed before the input failed"
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["kvonce-summary.md", "kvonce-validation.json"]


def test_fed_worker_failure_is_named(tmp_path: Path) -> None:
    from kvonce_pipeline.engine.errors import OutputError

    path = _generated(tmp_path)
    out = tmp_path / "out"
    (out / "kvonce-projection.json").mkdir(parents=True)  # the projection cannot be put there
    with pytest.raises(OutputError, match="kvonce-projection.json"):
        run_conformance(path, out, ConformanceOptions(parallel=True))
    assert not (out / "kvonce-events.ndjson").exists(), "the events were not published beside a failed worker"
    assert _leftovers(out) == []


def test_forked_projection_failure_in_the_parent_leaves_nothing(tmp_path: Path) -> None:
    events = reader.read_trace(_generated(tmp_path)).events
    events[4000].value = object()  # the parent cannot encode this event's line
    out = tmp_path / "out"
    with pytest.raises(TypeError):
        write_artifacts(events, out, parallel=True)
    leftovers = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert leftovers == [], "no artifact and no temporary file of parent or child is left behind"


def test_forked_projection_failure_in_the_child_is_named(tmp_path: Path) -> None:
    from kvonce_pipeline.engine.errors import OutputError

    events = reader.read_trace(_generated(tmp_path)).events
    out = tmp_path / "out"
    (out / "kvonce-projection.json").mkdir(parents=True)  # the child cannot put its file there
    with pytest.raises(OutputError, match="kvonce-projection.json"):
        write_artifacts(events, out, parallel=True)
    assert not (out / "kvonce-events.ndjson").exists(), "the parent did not publish beside a failed child"


def _generated(tmp_path: Path) -> Path:
    return _document(tmp_path, GenerateOptions(events=6000, keys=2000, format="otlp-json"))


def _document(tmp_path: Path, options: GenerateOptions) -> Path:
    """An OTLP/JSON document read whole: indented, since one line of it would read as JSON Lines."""
    import orjson

    path = tmp_path / "t.json"
    generate(path, options)
    path.write_bytes(orjson.dumps(orjson.loads(path.read_bytes()), option=orjson.OPT_INDENT_2))
    return path

