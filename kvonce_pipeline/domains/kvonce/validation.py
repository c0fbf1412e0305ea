"""The verdict: replay the events once, in order, through the KvOnceImpl state machine.

Per key the machine holds ``written``, ``value`` and ``retries``. The six aggregate rules of the
earlier validator keep their ids and meaning; the replay adds what only order can show (a
``duplicate`` failure before the key's first success) and the checks on malformed events. One pass,
O(events) time, memory proportional to the number of keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import msgspec

from ...engine.domain import RuleSpec, load_definition, rule_table
from ...engine.errors import ConfigError
from .events import EVENT_TYPES, Event

#: KvOnce's definition: the rule table, the report's schema version and MAX_RETRIES's default are
#: read from it, so ``kvonce domain doc kvonce`` and this validator cannot disagree.
DEFINITION = load_definition(Path(__file__).with_name("domain.toml"))
SCHEMA_VERSION = DEFINITION.schema_version
_KNOWN = frozenset(EVENT_TYPES)
DEFAULT_MAX_RETRIES: int = next(option.default for option in DEFINITION.options if option.name == "max_retries")

#: rule id -> its severity ("error" or "warning" by default; strict mode makes every warning an error)
RULES: dict[str, RuleSpec] = {rule.id: rule for rule in rule_table(DEFINITION, own_pass=True)}


def check_disabled(disabled: frozenset[str]) -> None:
    """Rules to disable must be KvOnce's: a typo would otherwise silently disable nothing."""
    unknown = sorted(disabled - RULES.keys())
    if unknown:
        raise ConfigError(f"--disable names rules KvOnce does not have: {', '.join(unknown)} "
                          "(`kvonce domain doc kvonce` lists them)")


def attempt_of(context: Any) -> int | float | None:
    """The attempt number a context carries: a bare number, or ``attempt``/``attempts``."""
    if type(context) in (int, float):
        return context
    if type(context) is dict:
        for name in ("attempt", "attempts"):
            value = context.get(name)
            if type(value) in (int, float):
                return value
    return None


_NOWHERE = ("", "", "")


def _pointer(index: int, where: Event | tuple[str, str, str]) -> dict[str, Any]:
    """Where a finding points: the event's index and, when it has them, its origin, traceId and spanId."""
    if type(where) is tuple:
        origin, trace_id, span_id = where
    else:
        event = cast(Event, where)
        origin, trace_id, span_id = event.origin, event.trace_id, event.span_id
    pointer: dict[str, Any] = {"eventIndex": index}
    if origin:
        pointer["origin"] = origin
    if trace_id:
        pointer["traceId"] = trace_id
    if span_id:
        pointer["spanId"] = span_id
    return pointer


class _KeyState(msgspec.Struct, gc=False):
    """One key's replay state (a struct: 400,000 keys are made in C, not by a Python ``__init__``)."""

    written: bool = False
    retries: int = 0
    retry_contexts: int = 0
    retry_context_missing: bool = False
    out_of_sequence: tuple[int, Any, int] | None = None  # (event index, attempt, expected)
    bound_reported: bool = False
    success_attempt: tuple[int, Any] | None = None  # (event index, attempt) of the first success with one
    pending_duplicates: list[int] | None = None  # created on the first one: most keys have none
    # The event index of the first write, for multiple-success to point at. Only the index: its line
    # in kvonce-events.ndjson has the span's ids and origin. Keeping them here too (a tuple and three
    # strings per written key) would about double a streamed 10M-event run's memory at 4M keys.
    first_write: int = -1


class Validator:
    """Feed events in order with :meth:`observe`, then call :meth:`report`."""

    def __init__(self, *, max_retries: int = DEFAULT_MAX_RETRIES, strict: bool = False,
                 disabled: frozenset[str] = frozenset()) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be zero or more")
        check_disabled(disabled)
        self.max_retries = max_retries
        self.strict = strict
        #: rule ids not reported at all (``--disable``): their findings are made and dropped
        self.disabled = disabled
        self.issues: list[dict[str, Any]] = []
        self._keys: dict[str, _KeyState] = {}
        # where a finding reported only at the end points: event index -> (origin, traceId, spanId)
        self._origins: dict[int, tuple[str, str, str]] = {}
        self.events = 0

    def _add(self, rule_id: str, key: str | None, index: int, message: str,
             where: Event | tuple[str, str, str] = ("", "", "")) -> dict[str, Any]:
        """Record a finding at event ``index``; ``where``: the event, or its (origin, traceId, spanId)."""
        severity = RULES[rule_id].severity
        if self.strict:
            severity = "error"
        issue: dict[str, Any] = {"type": rule_id, "key": key, "severity": severity, "message": message,
                                 **_pointer(index, where)}
        if rule_id not in self.disabled:
            self.issues.append(issue)
        return issue

    def observe(self, index: int, event: Event) -> None:
        self.events += 1
        key, kind = event.key, event.type
        at = event  # where a finding at this event points (a tuple is made only when one is deferred)
        if event.time_unix_nano is None:
            self._add("missing-required-field", key, index, "event has no timestamp", at)
        if kind is None:
            self._add("missing-required-field", key, index, "event has no type", at)
        elif kind not in _KNOWN:
            self._add("unknown-event-type", key, index, f"unknown event type {kind!r:.80}", at)
        if not key:  # None, or "": an empty key names no key
            self._add("missing-required-field", None if key is None else key, index,
                      "event has no key" if key is None else "event has an empty key", at)
            return
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        if kind == "success":
            if event.value is None:
                self._add("success-missing-value", key, index, "success carries no value", at)
            if state.written:
                issue = self._add("multiple-success", key, index, "key is written again: a second success", at)
                if state.first_write >= 0:
                    issue["firstWrite"] = {"eventIndex": state.first_write}
                    issue["message"] = f"{issue['message']} (first written at event {state.first_write})"
            elif state.retries >= self.max_retries > 0:
                self._add("success-after-retries-exhausted", key, index,
                          f"success after {state.retries} retries (MAX_RETRIES {self.max_retries})", at)
            if not state.written:
                state.first_write = index
            state.written = True
            if state.success_attempt is None:
                attempt = attempt_of(event.context)
                if attempt is not None:
                    state.success_attempt = (index, attempt)
                    self._origins[index] = (event.origin, event.trace_id, event.span_id)
        elif kind == "retry":
            state.retries += 1
            if state.retries > self.max_retries and not state.bound_reported:
                state.bound_reported = True
                self._add("retry-bound-exceeded", key, index,
                          f"retry {state.retries} exceeds MAX_RETRIES {self.max_retries}", at)
            if event.context is not None:
                state.retry_contexts += 1
                attempt = attempt_of(event.context)
                if attempt is None:
                    state.retry_context_missing = True
                    self._add("retry-context-missing", key, index,
                              "retry context has no numeric attempt/attempts", at)
                elif attempt != state.retry_contexts and state.out_of_sequence is None:
                    state.out_of_sequence = (index, attempt, state.retry_contexts)
                    self._origins[index] = (event.origin, event.trace_id, event.span_id)
        elif kind == "failure":
            reason = event.reason
            if reason is None:
                self._add("missing-required-field", key, index, "failure has no reason", at)
            elif not state.written and reason.lower() == "duplicate":
                if state.pending_duplicates is None:
                    state.pending_duplicates = []
                state.pending_duplicates.append(index)
                self._origins[index] = (event.origin, event.trace_id, event.span_id)

    def _finish(self) -> None:
        origins = self._origins
        for key, state in self._keys.items():
            if state.pending_duplicates:
                if state.written:
                    for index in state.pending_duplicates:
                        self._add("duplicate-before-success", key, index,
                                  "duplicate failure before the key's first success", origins.get(index, _NOWHERE))
                else:
                    first = state.pending_duplicates[0]
                    self._add("duplicate-without-success", key, first,
                              f"{len(state.pending_duplicates)} duplicate failure(s) on a key that never succeeds",
                              origins.get(first, _NOWHERE))
            if state.out_of_sequence is not None and not state.retry_context_missing:
                index, attempt, expected = state.out_of_sequence
                self._add("retry-attempt-out-of-sequence", key, index,
                          f"retry attempt {attempt} where {expected} was expected", origins.get(index, _NOWHERE))
            if state.retry_contexts and state.success_attempt is not None:
                index, attempt = state.success_attempt
                if attempt != state.retry_contexts + 1:
                    self._add("success-attempt-mismatch", key, index,
                              f"success attempt {attempt} inconsistent with {state.retry_contexts} retries",
                              origins.get(index, _NOWHERE))

    def report(self, *, input_summary: dict[str, Any] | None = None) -> dict[str, Any]:
        self._finish()
        self.issues.sort(key=lambda issue: (issue["eventIndex"], issue["type"]))
        errors = sum(1 for issue in self.issues if issue["severity"] == "error")
        by_rule: dict[str, int] = {}
        for issue in self.issues:
            by_rule[issue["type"]] = by_rule.get(issue["type"], 0) + 1
        summary: dict[str, Any] = {
            "events": self.events,
            "keys": len(self._keys),
            "errors": errors,
            "warnings": len(self.issues) - errors,
            "byRule": by_rule,
        }
        if input_summary is not None:
            summary["input"] = input_summary
        return report_document(self.strict, self.max_retries, self.disabled, self.issues, summary, errors)


def report_document(strict: bool, max_retries: int, disabled: frozenset[str], issues: list[dict[str, Any]],
                    summary: dict[str, Any], errors: int) -> dict[str, Any]:
    """``kvonce-validation.json`` (every strategy's: the key shards' merge writes it too). ``disabledRules``
    only when rules were disabled, so a report without ``--disable`` keeps its bytes."""
    report: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "valid": errors == 0,
        "strict": strict,
        "maxRetries": max_retries,
    }
    if disabled:
        report["disabledRules"] = sorted(disabled)
    report["issues"] = issues
    report["summary"] = summary
    return report


def validate_events(events: list[Event], *, max_retries: int = DEFAULT_MAX_RETRIES,
                    strict: bool = False, disabled: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Convenience for library users: the validation report of an ordered event list."""
    validator = Validator(max_retries=max_retries, strict=strict, disabled=disabled)
    for index, event in enumerate(events):
        validator.observe(index, event)
    return validator.report()
