"""Traces made the way real services make them: the OpenTelemetry SDK and its OTLP encoder."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

BASE_NS = 1_759_557_600_000_000_000  # 2025-10-04T06:00:00Z, the seed sample's first event


def sdk_request_bytes(spans: Iterable[dict[str, Any]], service: str = "kvonce-writer") -> bytes:
    """Serialized ``ExportTraceServiceRequest`` for spans given as
    ``{"name", "offset_ms", "attributes"}``; the SDK assigns real trace and span ids."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("kvonce.tests")
    for spec in spans:
        start = BASE_NS + spec.get("offset_ms", 0) * 1_000_000
        span = tracer.start_span(spec.get("name", "op"), start_time=start, attributes=spec.get("attributes", {}))
        span.end(end_time=start + 1_000_000)
    finished = exporter.get_finished_spans()
    provider.shutdown()
    return encode_spans(finished).SerializeToString()


def kv(event_type: str, key: str, offset_ms: int, **extra: Any) -> dict[str, Any]:
    """A KvOnce span spec; ``extra`` keys become ``kvonce.event.<name>`` attributes
    (use ``context_attempt=2`` for the flattened ``kvonce.event.context.attempt``)."""
    attributes: dict[str, Any] = {"kvonce.event.type": event_type, "kvonce.event.key": key}
    for name, value in extra.items():
        attributes["kvonce.event." + name.replace("context_", "context.")] = value
    return {"name": f"kvonce.{event_type}", "offset_ms": offset_ms, "attributes": attributes}
