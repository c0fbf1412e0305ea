"""A domain's trace schema as Markdown, generated from its definition (``kvonce domain doc NAME``).

The tables are the ones the seed's KvOnce trace schema has (event fields with type, required and
meaning; the OTLP mapping) plus the rules and options, so a domain's documentation is printed from
the same file the engine checks with and cannot drift from it.
"""

from __future__ import annotations

from .domain import Domain, Definition

_COMMON = (
    ("timestamp", "string (ISO 8601, UTC)", "yes", "when the event happened (or `timeUnixNano`, nanoseconds as a "
     "decimal string)", "span `startTimeUnixNano`"),
    ("type", "string", "yes", "the event type (below); `event` is accepted too", "`{prefix}type`"),
    ("key", "string", "yes", "{key_doc}", "`{prefix}key`"),
)
_TRAILING = (
    ("traceId", "string", "no", "correlates events across a trace", "span `traceId`"),
    ("spanId", "string", "no", "the span the event came from", "span `spanId`"),
    ("actor", "string", "no", "who acted", "`{prefix}actor`, else `actor`, `enduser.id`, `service.name`, "
     "`service.instance.id` (span, then resource)"),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _required_by(definition: Definition, field: str) -> str:
    types = [t.name for t in definition.types if field in t.required]
    return f"{', '.join(f'`{t}`' for t in types)}" if types else "no"


def render_domain_doc(domain: Domain) -> str:
    d = domain.definition
    fmt = {"prefix": d.prefix, "key_doc": d.key_doc or "what the event is about"}
    lines = [f"# {d.label} trace schema (`{d.name}`)", ""]
    if d.doc:
        lines += [d.doc, ""]
    lines += ["## Event types", "", "| type | requires | meaning |", "|---|---|---|"]
    for t in d.types:
        required = ", ".join(f"`{name}`" for name in t.required) or "-"
        lines.append(f"| `{t.name}` | {required} | {_cell(t.doc)} |")
    lines += ["", "## Event fields (NDJSON, one object per line)", "",
              "| field | type | required | meaning |", "|---|---|---|---|"]
    rows = [(name, kind, req, doc.format(**fmt)) for name, kind, req, doc, _ in _COMMON]
    rows += [(f.name, " or ".join(f.json), _required_by(d, f.name), f.doc) for f in d.fields]
    rows += [(name, kind, req, doc) for name, kind, req, doc, _ in _TRAILING]
    lines += [f"| `{name}` | {kind} | {req} | {_cell(doc)} |" for name, kind, req, doc in rows]
    lines += ["", "## OTLP mapping", "",
              f"A span carries a {d.label} event when it has the attribute `{d.prefix}type`.", "",
              "| event field | OTLP span |", "|---|---|"]
    lines += [f"| `{name}` | {where.format(**fmt)} |" for name, _, _, _, where in _COMMON]
    for f in d.fields:
        where = f"`{d.prefix}{f.name}`"
        if "object" in f.json or "array" in f.json:
            where += " (an AnyValue; a JSON string holding an object or array is read as it)"
        if "object" in f.json:
            where += f", or flattened `{d.prefix}{f.name}.<name>` attributes"
        lines.append(f"| `{f.name}` | {where} |")
    lines += [f"| `{name}` | {where.format(**fmt)} |" for name, _, _, _, where in _TRAILING]
    lines += ["", "## Rules", "", "| id | severity | finding |", "|---|---|---|"]
    lines += [f"| `{r.id}` | {r.severity} | {_cell(r.summary)} |" for r in domain.rules()]
    lines += ["", "`--strict` makes every warning an error."]
    if d.options:
        lines += ["", "## Options", "", "| option | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{o.name}` | {o.type} | `{o.default}` | {_cell(o.doc)} |" for o in d.options]
    names = domain.artifact_names()
    lines += ["", "## Artifacts", "", "| file | holds |", "|---|---|",
              f"| `{names.events}` | the events in time order, one JSON object per line (the fields above) |",
              f"| `{names.projection}` | {_cell(d.projection_doc or 'the per-key aggregates')} |",
              f"| `{names.state_sequence}` | {_cell(d.state_doc or 'one entry per event: the state after it')} |",
              f"| `{names.validation}` | the verdict: `valid`, `issues[]` (rule id as `type`, `key`, `severity`, "
              "`message`, `eventIndex`, `origin`, `traceId`, `spanId`) and `summary` |",
              f"| `{names.summary}` | the verdict for people (the CI step summary) |"]
    return "\n".join(lines) + "\n"
