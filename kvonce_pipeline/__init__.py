"""kvonce_pipeline: prove or disprove that a run obeyed its specification, from its OTLP traces.

Each specification is a domain (KvOnce and Inventory are built in; a package may add its own).

The public API is the names in ``__all__``; everything else is internal and may change. The core
(reading, projection, validation, reports) is plain Python and imports no Dagster. Names are
imported when first used, so ``import kvonce_pipeline`` stays cheap for the CLI, and ``defs`` (the
Dagster ``Definitions``, which ``dagster job execute -m kvonce_pipeline`` finds) is the only name
that imports Dagster.

>>> from kvonce_pipeline import ConformanceOptions, run_conformance
>>> result = run_conformance("trace.json", "reports/", ConformanceOptions(strict=True))  # doctest: +SKIP
>>> result.valid, result.exit_code, result.report["summary"]["errors"]  # doctest: +SKIP
>>> from kvonce_pipeline import PayloadRequest, check_payload
>>> outcome = check_payload(PayloadRequest("mixed.json", Path("reports/")))  # doctest: +SKIP
>>> [(r.domain.name, r.status) for r in outcome.results], outcome.exit_code  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it (``module:name`` when the name there differs)
_EXPORTS = {
    # checking a trace: the same pass as `kvonce conformance`
    "run_conformance": "domains.kvonce.own_pass.conformance",
    "ConformanceOptions": "domains.kvonce.own_pass.conformance",
    "ConformanceResult": "domains.kvonce.own_pass.conformance",
    # reading traces in any supported format, and checking events already in memory
    "read_trace": "domains.kvonce.reader",
    "open_trace": "domains.kvonce.reader",
    "TraceRead": "domains.kvonce.reader",
    "Event": "domains.kvonce.events",
    "validate_events": "domains.kvonce.validation",
    # domains: defining one, finding the installed ones, and checking a payload for every domain it has
    "Domain": "engine.domain",
    "DomainEvent": "engine.domain",
    "Definition": "engine.domain",
    "Machine": "engine.domain",
    "load_definition": "engine.domain",
    "installed_domains": "engine.registry:installed",
    "get_domain": "engine.registry:get",
    "read_domain_events": "engine.domain_decode",
    "check_domain": "engine.domain_pass",
    "DomainOptions": "engine.domain_pass",
    "DomainResult": "engine.domain_pass",
    "check_payload": "engine.payload",
    "PayloadRequest": "engine.payload",
    "PayloadResult": "engine.payload",
    # limits and the errors every entry point raises
    "Limits": "engine.limits",
    "KvonceError": "engine.errors",
    "InputError": "engine.errors",
    "OutputError": "engine.errors",
    "ConfigError": "engine.errors",
    # the OTLP receiver behind `kvonce collector`
    "Receiver": "collector.receiver",
    "ReceiverConfig": "collector.receiver",
    # the lineage envelope a drop run writes beside its artifacts
    "read_envelope": "domains.kvonce.envelope",
    # generated traces (what `kvonce generate` writes); not `generate`, the submodule's name
    "generate_trace": "devtools.generate:generate",
    "GenerateOptions": "devtools.generate",
}

# ``defs`` is public too but not in ``__all__``: ``from kvonce_pipeline import *`` must not import Dagster
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # what type checkers and editors see; at run time the names load on first use
    from .collector.receiver import Receiver, ReceiverConfig
    from .definitions import defs
    from .devtools.generate import GenerateOptions
    from .devtools.generate import generate as generate_trace
    from .domains.kvonce.events import Event
    from .domains.kvonce.validation import validate_events
    from .domains.kvonce.own_pass.conformance import ConformanceOptions, ConformanceResult, run_conformance
    from .engine.domain import Definition, Domain, DomainEvent, Machine, load_definition
    from .engine.domain_decode import read_domain_events
    from .engine.domain_pass import DomainOptions, DomainResult, check_domain
    from .engine.payload import PayloadRequest, PayloadResult, check_payload
    from .engine.registry import get as get_domain
    from .engine.registry import installed as installed_domains
    from .domains.kvonce.reader import TraceRead, open_trace, read_trace
    from .domains.kvonce.envelope import read_envelope
    from .engine.errors import ConfigError, InputError, KvonceError, OutputError
    from .engine.limits import Limits


def __getattr__(name: str) -> Any:
    if name == "defs":
        from .definitions import defs

        return defs
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attribute = where.partition(":")
    value = getattr(import_module(f".{module}", __name__), attribute or name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"defs"})
