"""Producing ``collected-kvonce-otlp.json``: the payload as collected, always as spec OTLP/JSON.

A spec OTLP/JSON document is copied byte for byte (its sha256 is the source's); anything else is
converted: protobuf and JSON Lines batches are merged into one request, lenient JSON is rewritten
in spec form, and an NDJSON event log is rendered as spans by its domain (``render_log``: the inverse
of that domain's mapping), so that reading the collected payload gives the same events as reading the
source.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .atomic import atomic_writer
from .errors import ConfigError
from .limits import Limits
from .decode.ndjson import iter_lines, loads_line
from .decode.otlp_proto import iter_delimited_records, parse_request
from .otlp_encodings import message_to_request, needs_normalizing, normalize_request
from .decode.reader import InputFormat, detect_format, open_payload

#: ``render_log(path, limits)``: an NDJSON event log as one OTLP/JSON request (a domain's inverse mapping).
RenderLog = Callable[[Path, Limits], dict[str, Any]]


@dataclass(frozen=True)
class Collected:
    source: Path
    path: Path
    format: InputFormat
    compressed: bool
    converted: bool
    sha256: str
    size: int


def collect_payload(source: str | Path, destination: Path, *, format: str = "auto",
                    limits: Limits | None = None, render_log: RenderLog | None = None) -> Collected:
    """Write ``source`` to ``destination`` as spec OTLP/JSON. Raises ``InputError`` if unusable.
    An NDJSON event log needs ``render_log``, its domain's rendering (a log does not say its domain)."""
    limits = limits or Limits()
    source = Path(source)
    detected, compressed = detect_format(source, hint=format, limits=limits)
    converted = True
    with atomic_writer(destination) as out:
        if detected is InputFormat.NDJSON:
            if render_log is None:
                raise ConfigError(f"{source}: an NDJSON event log is collected by its domain's rendering, "
                                  f"and none was given")
            out.write(orjson.dumps(render_log(source, limits)))
        else:
            with open_payload(source, limits) as (stream, _):
                if detected is InputFormat.OTLP_JSON:
                    blob = stream.read()
                    if needs_normalizing(blob) or blob.startswith(b"\xef\xbb\xbf"):
                        gc.disable()
                        try:
                            doc = orjson.loads(blob.removeprefix(b"\xef\xbb\xbf"))
                            out.write(dumps_any_depth(normalize_request(doc)))
                        except orjson.JSONDecodeError:
                            out.write(blob)  # decoding the events will name the bad line
                        finally:
                            gc.enable()
                    else:
                        converted = compressed
                        out.write(blob)
                else:
                    _write_merged(out, _batches(stream, detected, str(source), limits))
    return Collected(source, destination, detected, compressed, converted, out.hexdigest(), out.size)


def _batches(stream: Any, detected: InputFormat, source: str, limits: Limits):
    """Each batch's ``resourceSpans`` list, in spec OTLP/JSON form."""
    if detected is InputFormat.OTLP_JSONL:
        for number, line in iter_lines(stream, source=source, max_line=limits.max_line_bytes):
            request = loads_line(line, source=source, number=number)
            yield normalize_request(request).get("resourceSpans", []) if isinstance(request, dict) else []
    elif detected is InputFormat.OTLP_PROTO:
        yield message_to_request(parse_request(stream.read(), source=source)).get("resourceSpans", [])
    else:
        for number, blob in iter_delimited_records(stream, source=source, max_record=limits.max_body_bytes):
            message = parse_request(blob, source=source, where=f"record {number}")
            yield message_to_request(message).get("resourceSpans", [])


def _write_merged(out: Any, batches) -> None:
    """One ``{"resourceSpans": [...]}`` from many batches, streamed: memory stays per batch."""
    out.write(b'{"resourceSpans":[')
    first = True
    for resource_spans in batches:
        for item in resource_spans:
            if not first:
                out.write(b",")
            out.write(dumps_any_depth(item))
            first = False
    out.write(b"]}")


def dumps_any_depth(value: Any) -> bytes:
    """``orjson.dumps``, and the same bytes for a value nested deeper than it serializes.

    orjson reads 1,024 levels but writes only 254, and an OTLP context at the 64-level limit
    already takes about 260 (four JSON levels per AnyValue), as may a member the decoders ignore.
    Such documents are rare, so they take this slower walk (scalars and names still go through
    orjson, so their bytes are orjson's) instead of every payload paying for it.
    """
    try:
        return orjson.dumps(value)
    except TypeError as error:
        if "Recursion limit" not in str(error):
            raise
    parts: list[bytes] = []
    # work items: a value to write, or bytes to write as they are
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is bytes:
            parts.append(item)
        elif isinstance(item, dict):
            parts.append(b"{")
            pending: list[Any] = []
            for number, (name, child) in enumerate(item.items()):
                pending.append((b"," if number else b"") + orjson.dumps(name) + b":")
                pending.append(child)
            pending.append(b"}")
            stack.extend(reversed(pending))
        elif isinstance(item, list):
            parts.append(b"[")
            pending = []
            for number, child in enumerate(item):
                if number:
                    pending.append(b",")
                pending.append(child)
            pending.append(b"]")
            stack.extend(reversed(pending))
        else:
            parts.append(orjson.dumps(item))
    return b"".join(parts)
