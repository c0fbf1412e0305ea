"""Recognising spans a client sends twice, so an exporter retry cannot fake a violation.

OTLP exporters retry a request when they see no answer (a timeout, a dropped connection, a 503)
even if the receiver already accepted it. A re-sent ``success`` would then reach the validator as a
second write of the key (``multiple-success``): a false violation. The receiver therefore remembers
the ``(traceId, spanId)`` of recently accepted spans and drops spans it has already accepted.

Span ids are random 64-bit values that OTLP requires to be unique within a trace, so the pair
identifies a span; spans without a span id are never treated as duplicates. Memory is bounded: ids
are kept in two generations that rotate every ``window_seconds`` (or when a generation reaches
``max_ids // 2``), so an id is remembered for at least one window and at most two. Exporter
retries give up after seconds (the Python exporter's default timeout is 10 s), far inside the
default 5 minute window. Ids are not saved across a restart, but the receiver re-reads them from
the payload files of the last window at start-up (``Receiver.recover``), so a retry of a request
acknowledged (or journaled) just before a crash is recognised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: 5 minutes: exporters stop retrying long before; at 100k spans/s the ids take ~2 x 100 MB at most,
#: which ``max_ids`` caps lower.
DEFAULT_WINDOW_SECONDS = 300.0
#: 2 million ids (two generations of 1 million): roughly 200 MB in the worst case.
DEFAULT_MAX_IDS = 2_000_000


def span_keys(message: Any) -> list[bytes | None]:
    """The identity of each span of an ``ExportTraceServiceRequest``, in document order."""
    keys: list[bytes | None] = []
    for resource_spans in message.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span_id = span.span_id
                keys.append(span.trace_id + span_id if span_id else None)
    return keys


def without_spans(message: Any, keep: list[bool]) -> Any:
    """A copy of ``message`` holding only the spans whose ``keep`` flag (document order) is set.

    Resources and scopes left without spans are dropped; everything else is copied unchanged.
    """
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    out = ExportTraceServiceRequest()
    index = 0
    for resource_spans in message.resource_spans:
        new_resource = None
        for scope_spans in resource_spans.scope_spans:
            new_scope = None
            for span in scope_spans.spans:
                if keep[index]:
                    if new_resource is None:
                        new_resource = out.resource_spans.add()
                        new_resource.resource.CopyFrom(resource_spans.resource)
                        new_resource.schema_url = resource_spans.schema_url
                    if new_scope is None:
                        new_scope = new_resource.scope_spans.add()
                        new_scope.scope.CopyFrom(scope_spans.scope)
                        new_scope.schema_url = scope_spans.schema_url
                    new_scope.spans.add().CopyFrom(span)
                index += 1
    return out


class RecentSpanIds:
    """The ids of recently accepted spans, in two rotating generations. Not thread-safe: the
    collector calls it under the lock that also appends to the batch, so that check, reservation
    and acceptance are one step and two concurrent copies of a request cannot both get in."""

    def __init__(self, *, window_seconds: float = DEFAULT_WINDOW_SECONDS, max_ids: int = DEFAULT_MAX_IDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_seconds = window_seconds
        self.generation_size = max(1, max_ids // 2)
        self._clock = clock
        self._current: set[bytes] = set()
        self._previous: set[bytes] = set()
        self._rotated_at = clock()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def _rotate_if_due(self) -> None:
        if len(self._current) >= self.generation_size or self._clock() - self._rotated_at >= self.window_seconds:
            self._previous = self._current
            self._current = set()
            self._rotated_at = self._clock()

    def claim(self, keys: list[bytes | None]) -> list[bool]:
        """Record ``keys`` as accepted; returns, per key, whether it is new (False: a duplicate,
        including a second copy within the same request)."""
        self._rotate_if_due()
        current, previous = self._current, self._previous
        fresh: list[bool] = []
        for key in keys:
            if key is None:
                fresh.append(True)
            elif key in current or key in previous:
                fresh.append(False)
            else:
                current.add(key)
                fresh.append(True)
        return fresh

    def release(self, keys: list[bytes | None], fresh: list[bool]) -> None:
        """Undo :meth:`claim` for a request that was finally not accepted (so its retry gets in)."""
        for key, new in zip(keys, fresh):
            if new and key is not None:
                self._current.discard(key)
                self._previous.discard(key)
