"""What a domain is: a declarative definition (``domain.toml``) and a small state machine.

A domain is one specification the engine can check (KvOnce, Inventory, a team's own). Everything the
engine needs to know about it is here, so no engine module names a domain:

- the **definition** (:class:`Definition`, read from the domain's ``domain.toml``): name, label, OTLP
  attribute prefix, event types with the fields each requires, every field's JSON types, the rules
  (ids, severities, summaries), the options with their defaults, and what the projection and the state
  sequence hold (as prose for ``kvonce domain doc``);
- the **machine** (a class following :class:`Machine`): the state per key and how each event moves it.

Why a TOML file plus Python rather than all Python or all configuration: the schema part (types, fields,
rules, options) is data that the engine checks, the docs print and the Pandera schema is built from; a
typo in it is a load error naming the file, not a silent wrong verdict. The state machine is logic,
which a configuration language expresses badly (the earlier tool's Inventory needed arithmetic, per-SKU
state and cross-event comparisons); Python keeps it short, testable and fast.

What the engine does itself, for every domain, before the machine sees an event: an unknown type is
``unknown-event-type``; a missing timestamp, type, key or type-required field is
``missing-required-field``; a field whose JSON type the definition does not allow is
``invalid-field-type`` and the field is dropped (the machine only ever sees well-typed fields). Events
with a known type and a non-empty key then go to :meth:`Machine.observe`, in time order.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from .errors import ConfigError

if TYPE_CHECKING:
    from .payload import DomainRun
    from .domain_pass import DomainResult

JsonType = Literal["string", "number", "integer", "boolean", "object", "array"]
Severity = Literal["error", "warning"]

#: The rules the engine itself applies to every domain's events (same ids as KvOnce has always used).
ENGINE_RULES: tuple[tuple[str, Severity, str], ...] = (
    ("unknown-event-type", "error", "an event type the domain does not define"),
    ("missing-required-field", "error",
     "an event lacks its timestamp, type or key, or a field its type requires"),
    ("invalid-field-type", "error", "a field whose JSON type the domain does not allow (the field is ignored)"),
)

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_RULE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_:.-]{0,79}$")
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
#: Names a domain may not have: the Dagster layer's groups, jobs and prefixes for every domain use them.
RESERVED_NAMES = frozenset({"trace", "drops", "all", "domain", "domains"})
#: Field names every event has; a domain's own fields may not reuse them.
RESERVED_FIELDS = frozenset({"timestamp", "timeUnixNano", "type", "event", "key", "traceId", "spanId",
                             "actor", "origin", "domain"})


class FieldSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One event field besides the timestamp, type and key every event has."""

    name: str
    json: tuple[JsonType, ...]
    doc: str = ""


class EventTypeSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    doc: str = ""
    #: fields an event of this type must carry (besides timestamp, type and key)
    required: tuple[str, ...] = ()


class RuleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    severity: Severity
    summary: str


class OptionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A setting of the domain's checks (``kvonce conformance --option NAME=VALUE``)."""

    name: str
    type: Literal["integer", "number", "string", "boolean"]
    default: Any
    doc: str = ""


class Definition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A domain's ``domain.toml``, as read and checked."""

    name: str
    label: str
    #: the OTLP span attribute prefix: ``<prefix>type``, ``<prefix>key``, ``<prefix><field>``
    prefix: str
    #: the validation report's ``schemaVersion``
    schema_version: str
    doc: str = ""
    #: what the key names (prose for the docs), e.g. "the key-value store's key"
    key_doc: str = ""
    types: tuple[EventTypeSpec, ...] = ()
    fields: tuple[FieldSpec, ...] = ()
    rules: tuple[RuleSpec, ...] = ()
    options: tuple[OptionSpec, ...] = ()
    #: prose for the docs: what the projection file and a state-sequence entry's ``state`` hold
    projection_doc: str = ""
    state_doc: str = ""
    #: the bundled sample trace(s), relative to the domain's folder
    samples: tuple[str, ...] = ()

    @property
    def type_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.types)



def _check(definition: Definition, where: str) -> None:
    """What msgspec's typing cannot say about a definition: names, references, duplicates."""
    def fail(text: str) -> None:
        raise ConfigError(f"{where}: {text}")

    if not _NAME.match(definition.name):
        fail(f"domain name {definition.name!r} must be lower-case letters, digits and '_' (at most 40)")
    if definition.name in RESERVED_NAMES:
        fail(f"domain name {definition.name!r} is taken by what serves every domain "
             f"(reserved: {', '.join(sorted(RESERVED_NAMES))})")
    if not definition.prefix.endswith(".") or len(definition.prefix) < 2:
        fail(f"prefix {definition.prefix!r} must end with '.' (e.g. 'inventory.event.')")
    if not definition.types:
        fail("a domain needs at least one event type ([[types]])")
    seen: set[str] = set()
    for spec in definition.fields:
        if not _FIELD.match(spec.name) or spec.name in RESERVED_FIELDS:
            fail(f"field name {spec.name!r} is not allowed (letters, digits, '_'; not one of "
                 f"{', '.join(sorted(RESERVED_FIELDS))})")
        if spec.name in seen:
            fail(f"field {spec.name!r} is defined twice")
        if not spec.json:
            fail(f"field {spec.name!r} allows no JSON type")
        seen.add(spec.name)
    types: set[str] = set()
    for event_type in definition.types:
        if not event_type.name or event_type.name in types:
            fail(f"event type {event_type.name!r} is empty or defined twice")
        types.add(event_type.name)
        for name in event_type.required:
            if name not in seen:
                fail(f"event type {event_type.name!r} requires {name!r}, which is not a field")
    rules = {rid for rid, _, _ in ENGINE_RULES}
    for rule in definition.rules:
        if not _RULE_ID.match(rule.id):
            fail(f"rule id {rule.id!r} must be letters, digits and _ : . - (at most 80)")
        if rule.id in rules:
            fail(f"rule {rule.id!r} is defined twice (or is one of the engine's own)")
        rules.add(rule.id)
    options: set[str] = set()
    for option in definition.options:
        if not _FIELD.match(option.name) or option.name in options:
            fail(f"option {option.name!r} is not a valid name or is defined twice")
        options.add(option.name)
        try:
            coerce_option(option, option.default)
        except ValueError as exc:
            fail(f"option {option.name!r}: default {exc}")


def rule_table(definition: Definition, *, own_pass: bool = False) -> tuple[RuleSpec, ...]:
    """The engine's checks, then the domain's own rules. A domain with its own pass refuses a wrongly
    typed field as unusable input, so it has no ``invalid-field-type``."""
    engine = tuple(RuleSpec(rid, sev, text) for rid, sev, text in ENGINE_RULES
                   if not own_pass or rid != "invalid-field-type")
    return engine + definition.rules


def load_definition(path: Path) -> Definition:
    """Read and check a ``domain.toml``; a mistake is a :class:`ConfigError` naming the file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the domain definition ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        definition = msgspec.convert(raw, Definition)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    _check(definition, str(path))
    return definition


def coerce_option(option: OptionSpec, value: Any) -> Any:
    """``value`` (a TOML value, or the text of ``--option NAME=VALUE``) as the option's type."""
    kind = option.type
    if isinstance(value, str) and kind != "string":
        text = value.strip()
        try:
            if kind == "integer":
                return int(text)
            if kind == "number":
                return float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            raise ValueError(f"{value!r} is not {'an integer' if kind == 'integer' else 'a number'}") from None
        if kind == "boolean" and text.lower() in ("true", "1", "yes", "false", "0", "no"):
            return text.lower() in ("true", "1", "yes")
        raise ValueError(f"{value!r} is not true or false")
    ok = {
        "integer": type(value) is int,
        "number": type(value) in (int, float),
        "string": type(value) is str,
        "boolean": type(value) is bool,
    }[kind]
    if not ok:
        raise ValueError(f"{value!r} is not of type {kind}")
    return value


class DomainEvent(msgspec.Struct, gc=False):
    """One event of any domain: what every decoder produces and every machine reads.

    ``fields`` holds the domain's own fields (only those the definition declares, each of an allowed
    JSON type once the engine has checked it). ``time_unix_nano is None``: the event had no time.
    """

    time_unix_nano: int | None
    type: str | None
    key: str | None
    fields: dict[str, Any]
    trace_id: str = ""
    span_id: str = ""
    actor: str = "unknown"
    origin: str = ""


#: ``emit(rule_id, key, event_index, message)``: report a finding. The engine adds the severity (after
#: ``--strict`` and ``--disable``) and where the event came from (origin, traceId, spanId), and returns
#: the finding so the machine may add fields (e.g. ``"expected": {...}``); a disabled rule returns None.
Emit = Callable[[str, "str | None", int, str], "dict[str, Any] | None"]


class Machine(Protocol):
    """A domain's state machine: one instance per run, fed every event in time order.

    Implementations are plain classes; ``__init__`` takes the run's options (every option of the
    definition, defaults filled in, values of the declared types).
    """

    def observe(self, index: int, event: DomainEvent, emit: Emit) -> Any:
        """Move the state by one event (``index``: its place in time order, from 0) and return what the
        state-sequence entry of this event shows as ``state`` (a JSON value; ``None`` for nothing).
        The returned value is encoded before the next call, so a live object may be returned."""
        ...

    def finish(self, emit: Emit) -> None:
        """Called once after the last event: report what only the whole run can show."""
        ...

    def projection(self) -> dict[str, Any]:
        """The projection file's domain part: per-key aggregates and whatever else the domain keeps.
        JSON values only; the engine adds the common header (domain, events, keys, trace ids, times)."""
        ...


MachineFactory = Callable[[Mapping[str, Any]], Machine]


@dataclass(frozen=True)
class ArtifactNames:
    """The file names of one domain's artifacts (a contract: users' scripts open them)."""

    events: str
    state_sequence: str
    projection: str
    validation: str
    summary: str

    @classmethod
    def of(cls, name: str) -> "ArtifactNames":
        return cls(f"{name}-events.ndjson", f"{name}-state-sequence.json", f"{name}-projection.json",
                   f"{name}-validation.json", f"{name}-summary.md")

    def all(self) -> tuple[str, ...]:
        return (self.events, self.state_sequence, self.projection, self.validation, self.summary)


@dataclass(frozen=True)
class Domain:
    """A loaded domain: its definition, its machine class, and the folder it came from."""

    definition: Definition
    #: None only for a domain that brings its own pass (:attr:`runner`)
    machine: MachineFactory | None
    folder: Path
    #: optional: a generator of synthetic events for ``kvonce generate --domain NAME`` (see the template)
    generate: Callable[..., Iterator[DomainEvent]] | None = field(default=None, compare=False)
    #: optional: the domain's own whole pass, used instead of the engine's generic one (KvOnce has a
    #: specialised pass with byte contracts older than the engine). It reads the payload itself.
    runner: "Callable[[DomainRun], DomainResult] | None" = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.definition.name

    @classmethod
    def from_folder(cls, folder: str | Path, machine: MachineFactory | None, *,
                    generate: Callable[..., Iterator[DomainEvent]] | None = None,
                    runner: "Callable[[DomainRun], DomainResult] | None" = None,
                    names: ArtifactNames | None = None) -> "Domain":
        """The domain whose ``domain.toml`` is in ``folder`` (usually ``Path(__file__).parent``)."""
        folder = Path(folder)
        if machine is None and runner is None:
            raise ConfigError(f"{folder}: a domain needs a machine (or its own pass)")
        return cls(load_definition(folder / "domain.toml"), machine, folder, generate, runner, names)

    #: the artifacts' file names, when the domain's own pass names them otherwise than ``<name>-<role>``
    names: ArtifactNames | None = field(default=None, compare=False)

    def artifact_names(self) -> ArtifactNames:
        return self.names or ArtifactNames.of(self.name)

    def rules(self) -> tuple[RuleSpec, ...]:
        """Every rule a run of this domain can report (:func:`rule_table`)."""
        return rule_table(self.definition, own_pass=self.runner is not None)

    def options(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every option with its default, overridden by ``given`` (values or their text)."""
        specs = {option.name: option for option in self.definition.options}
        out = {name: spec.default for name, spec in specs.items()}
        for name, value in (given or {}).items():
            spec = specs.get(name)
            if spec is None:
                known = ", ".join(specs) or "none"
                raise ConfigError(f"domain {self.name!r} has no option {name!r} (its options: {known})")
            try:
                out[name] = coerce_option(spec, value)
            except ValueError as exc:
                raise ConfigError(f"option {name!r} of domain {self.name!r}: {exc}") from None
        return out

    def sample_paths(self) -> list[Path]:
        return [self.folder / sample for sample in self.definition.samples]
