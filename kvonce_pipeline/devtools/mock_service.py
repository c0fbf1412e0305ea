"""The mock KvOnce service: a write-once store instrumented with the real OpenTelemetry SDK.

The seed's mock service (``scripts/trace/mock-otlp-service.mjs``) produced the payload for runs that
have none. This is its Python counterpart: :class:`MockKvOnceStore` is a tiny write-once store whose
backend fails transiently on demand; every ``put`` is a span ``kvonce.put`` with one child span per
KvOnce event (``kvonce.event.*`` attributes, the context flattened as ``kvonce.event.context.<name>``
because SDK attributes cannot be maps). The spans leave through the SDK's ``BatchSpanProcessor`` and
the real ``OTLPSpanExporter`` (OTLP/HTTP protobuf), i.e. exactly the way a production service's do,
and arrive at a receiver (:mod:`kvonce_pipeline.collector.receiver`) that writes the payload file.

The scenario (:data:`SCENARIO`) covers what the spec talks about: a first-try success, a key that
succeeds after two transient retries (attempt contexts 1, 2, then success attempt 3), a ``duplicate``
failure on an already written key, and a third key. The resulting trace is valid, without warnings.

``kvonce mock`` runs it by hand; :func:`generate_payload` is what the Dagster resource calls when
there is neither ``KVONCE_OTLP_PAYLOAD`` nor the bundled sample.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine.domain import Domain, DomainEvent

SERVICE_NAME = "kvonce-mock-service"
SCOPE_NAME = "kvonce.mock_service"


@dataclass(frozen=True)
class Put:
    """One client call: write ``value`` under ``key``; the backend first fails ``transient_failures`` times."""

    key: str
    value: str
    transient_failures: int = 0


#: The scenario: success, retry with attempt contexts then success, duplicate failure, another success.
SCENARIO: tuple[Put, ...] = (
    Put("alpha", "v1"),
    Put("beta", "v2", transient_failures=2),
    Put("alpha", "v9"),  # alpha is written: a duplicate failure
    Put("gamma", "v3"),
)

#: The events :data:`SCENARIO` must produce, in order: ``(type, key, value, reason, context)``.
EXPECTED_EVENTS: tuple[tuple[str, str, str | None, str | None, dict[str, Any]], ...] = (
    ("success", "alpha", "v1", None, {"attempt": 1}),
    ("retry", "beta", None, None, {"attempt": 1, "cause": "timeout"}),
    ("retry", "beta", None, None, {"attempt": 2, "cause": "timeout"}),
    ("success", "beta", "v2", None, {"attempt": 3}),
    ("failure", "alpha", None, "duplicate", {"http.status": 409}),
    ("success", "gamma", "v3", None, {"attempt": 1}),
)


class DuplicateKey(Exception):
    """The key was written already: KvOnce never overwrites."""


class MockKvOnceStore:
    """A write-once store, instrumented: each state change of the spec is one span.

    ``max_retries`` is the spec's ``MAX_RETRIES``: a put that keeps failing gives up rather than
    retry beyond it (``RetryBounded``).
    """

    def __init__(self, tracer: Any, *, max_retries: int = 3) -> None:
        self._tracer = tracer
        self._store: dict[str, str] = {}
        self.max_retries = max_retries

    def _event(self, event_type: str, key: str, *, value: str | None = None, reason: str | None = None,
               context: dict[str, Any] | None = None) -> None:
        attributes: dict[str, Any] = {"kvonce.event.type": event_type, "kvonce.event.key": key}
        if value is not None:
            attributes["kvonce.event.value"] = value
        if reason is not None:
            attributes["kvonce.event.reason"] = reason
        for name, item in (context or {}).items():
            attributes[f"kvonce.event.context.{name}"] = item
        with self._tracer.start_as_current_span(f"kvonce.{event_type}", attributes=attributes):
            pass

    def put(self, call: Put) -> None:
        """Write once; transient backend failures are retried (one ``retry`` event each)."""
        with self._tracer.start_as_current_span("kvonce.put", attributes={"kvonce.op.key": call.key}):
            if call.key in self._store:
                self._event("failure", call.key, reason="duplicate", context={"http.status": 409})
                raise DuplicateKey(call.key)
            attempt = 1
            while attempt <= call.transient_failures:
                if attempt > self.max_retries:
                    raise TimeoutError(f"{call.key}: backend still failing after {self.max_retries} retries")
                self._event("retry", call.key, context={"attempt": attempt, "cause": "timeout"})
                time.sleep(0.001)  # backoff: keeps event times strictly ordered
                attempt += 1
            self._store[call.key] = call.value
            self._event("success", call.key, value=call.value, context={"attempt": attempt})


@dataclass
class ScenarioResult:
    spans_exported: int = 0
    spans_failed: int = 0
    statuses: list[str] = field(default_factory=list)


def run_scenario(endpoint: str, *, gzip: bool = False, headers: dict[str, str] | None = None,
                 scenario: tuple[Put, ...] = SCENARIO, timeout: float = 10.0,
                 domain: "Domain | None" = None, events: int = 40) -> ScenarioResult:
    """Run the scenario, exporting through the real OTLP/HTTP exporter to ``endpoint``.

    With ``domain`` (not KvOnce) the spans are that domain's events instead: ``events`` from its
    generator, or its first bundled sample when it has none, each one span carrying
    ``<prefix>*`` attributes the way an instrumented service sets them (:func:`domain_attributes`),
    with the event's time as the span's start.

    Raises :class:`~kvonce_pipeline.engine.errors.KvonceError` if the exporter could not deliver every span
    (the exporter itself only logs failures, so they are counted on the way through).
    """
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from ..engine.errors import KvonceError

    result = ScenarioResult()

    class CountingExporter(SpanExporter):
        """Delegates to the OTLP exporter and counts what it delivered."""

        def __init__(self, inner: SpanExporter) -> None:
            self.inner = inner

        def export(self, spans: Any) -> SpanExportResult:
            outcome = self.inner.export(spans)
            if outcome is SpanExportResult.SUCCESS:
                result.spans_exported += len(spans)
            else:
                result.spans_failed += len(spans)
            result.statuses.append(outcome.name)
            return outcome

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self.inner.force_flush(timeout_millis)

    exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=timeout,
                                compression=Compression.Gzip if gzip else Compression.NoCompression)
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME,
                                                        "service.instance.id": "mock-1"}))
    provider.add_span_processor(BatchSpanProcessor(CountingExporter(exporter)))
    try:
        if domain is not None:
            tracer = provider.get_tracer(f"{domain.name}.mock_service", "1.0.0")
            for event in _domain_events(domain, events):
                span = tracer.start_span(f"{domain.name}.{event.type}", attributes=domain_attributes(domain, event),
                                         start_time=event.time_unix_nano)
                span.end(end_time=event.time_unix_nano)
        else:
            store = MockKvOnceStore(provider.get_tracer(SCOPE_NAME, "1.0.0"))
            for call in scenario:
                try:
                    store.put(call)
                except DuplicateKey:
                    pass  # the client sees the refusal; the failure event is the point
        provider.force_flush(int(timeout * 1000))
    finally:
        provider.shutdown()
    if result.spans_failed or not result.spans_exported:
        raise KvonceError(f"mock service: the receiver at {endpoint} did not accept the spans "
                          f"({result.spans_exported} delivered, {result.spans_failed} failed)")
    return result


def domain_attributes(domain: "Domain", event: "DomainEvent") -> dict[str, Any]:
    """A domain event as span attributes: SDK attributes are scalars or lists of scalars, so an object
    field is flattened into ``<prefix><field>.<name>`` (a nested value as JSON text), and anything
    else that is not a scalar is JSON text, which the mapping reads back as the object or array."""
    import orjson

    prefix = domain.definition.prefix
    attributes: dict[str, Any] = {prefix + "type": event.type, prefix + "key": event.key}
    for name, value in event.fields.items():
        if isinstance(value, dict):
            for inner, item in value.items():
                scalar = item is not None and not isinstance(item, (dict, list))
                attributes[f"{prefix}{name}.{inner}"] = item if scalar else orjson.dumps(item).decode()
        elif isinstance(value, list) or value is None:
            attributes[prefix + name] = orjson.dumps(value).decode()
        else:
            attributes[prefix + name] = value
    return attributes


def _domain_events(domain: "Domain", count: int) -> list["DomainEvent"]:
    if domain.generate is not None:
        return list(domain.generate(count, seed=1))
    from ..engine.domain_decode import read_domain_events

    samples = domain.sample_paths()
    if not samples:
        from ..engine.errors import KvonceError

        raise KvonceError(f"mock service: the {domain.name} domain has neither a generator nor a sample")
    return read_domain_events(samples[0], [domain]).events[domain.name]


def generate_payload(dest_dir: Path, *, gzip: bool = False, domain: "Domain | None" = None,
                     events: int = 40) -> Path:
    """Run the scenario against an in-process receiver on 127.0.0.1 (ephemeral port) that writes
    into ``dest_dir``; returns the payload file (OTLP protobuf). ``gzip`` compresses the exports;
    ``domain`` and ``events`` as for :func:`run_scenario`."""
    from ..engine.errors import KvonceError
    from ..collector.receiver import Receiver, ReceiverConfig

    # One batch for the whole run: the timer never fires first, stop() writes it as one file.
    receiver = Receiver(ReceiverConfig(drop_dir=Path(dest_dir), host="127.0.0.1", port=0, flush_seconds=3600.0))
    with receiver:
        run_scenario(receiver.endpoint, gzip=gzip, domain=domain, events=events)
    files = receiver.files
    if len(files) != 1:
        raise KvonceError(f"mock service: expected one payload file in {dest_dir}, got {len(files)}")
    return files[0].path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``kvonce mock``."""
    parser = subparsers.add_parser(
        "mock",
        help="run the mock KvOnce service (OpenTelemetry SDK) and produce a payload file",
        description="Runs the KvOnce scenario (success, retries with attempt contexts, duplicate failure) "
                    "through the OpenTelemetry SDK and the OTLP/HTTP exporter. Without --endpoint an "
                    "in-process receiver on 127.0.0.1 writes the payload into --drop-dir and its path is "
                    "printed; with --endpoint the spans go to a running 'kvonce collector'.",
    )
    parser.add_argument("--drop-dir", default=None,
                        help="where the payload goes: a folder or a bucket prefix (s3://bucket/drops, uploaded as one "
                             "object) (default KVONCE_DROP_DIR, else drops/ in the project)")
    parser.add_argument("--endpoint", default=None,
                        help="send to a running receiver instead, e.g. http://127.0.0.1:4318/v1/traces "
                             "(uses KVONCE_COLLECTOR_TOKEN as the bearer token when set)")
    parser.add_argument("--gzip", action="store_true", help="gzip the export requests")
    parser.add_argument("--domain", default="kvonce",
                        help="whose spans: kvonce (the scenario above, the default) or another installed domain's "
                             "events (its generator, else its sample)")
    parser.add_argument("--events", type=int, default=40, help="how many events of another domain (default 40)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    import os
    import tempfile

    from ..engine import storage
    from ..engine.artifacts import drop_dir
    from ..engine.storage import is_remote
    from ..engine.registry import get

    domain = None if args.domain == "kvonce" else get(args.domain)
    if args.endpoint:
        token = (os.environ.get("KVONCE_COLLECTOR_TOKEN") or "").strip()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        result = run_scenario(args.endpoint, gzip=args.gzip, headers=headers, domain=domain, events=args.events)
        print(f"kvonce mock: {result.spans_exported} spans delivered to {args.endpoint}", file=sys.stderr)
        return 0
    location = (args.drop_dir or os.environ.get("KVONCE_DROP_DIR", "")).strip()
    if is_remote(location):
        # A bucket prefix: the payload is written in a private folder, then uploaded as one object (a
        # sensor never lists half of it), as the collector uploads its finished batches.
        with tempfile.TemporaryDirectory(prefix="kvonce-mock-") as spool:
            path = generate_payload(Path(spool), gzip=args.gzip, domain=domain, events=args.events)
            url = storage.join(location, path.name)
            storage.put_bytes(url, path.read_bytes())
        print(url)
        return 0
    path = generate_payload(Path(args.drop_dir) if args.drop_dir else drop_dir(), gzip=args.gzip, domain=domain,
                            events=args.events)
    print(path)
    return 0
