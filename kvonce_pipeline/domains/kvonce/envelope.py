"""The envelope: one small file per dropped payload that ties its artifacts to their origin.

``<reports>/trace/<partition key>/kvonce-envelope.json`` lists the source file (name, sha256,
size, arrival time), each artifact with its sha256 and size, and the correlation fields a reviewer
needs to find the run again: the Dagster run id, the code versions, and the commit and branch when
the environment says which (CI variables; nothing is guessed by running git). Anyone holding only
the folder can check that the artifacts are the ones the run produced (``sha256sum``) and find the
run that produced them.

Plain Python: no Dagster import. Written atomically, like every artifact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from . import artifacts
from ...engine.atomic import sha256_file, write_bytes_atomic
from .store import KEYFACTS

ENVELOPE = "kvonce-envelope.json"
SCHEMA_VERSION = "kvonce-envelope/v1"
#: Every artifact a partition folder can hold, in pipeline order (names as in the default run).
ARTIFACT_NAMES = (artifacts.COLLECTED, artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE,
                  artifacts.VALIDATION, artifacts.SUMMARY, KEYFACTS)
#: Where commit and branch come from, first match wins: GitHub Actions, GitLab CI, Jenkins, and our own.
COMMIT_VARS = ("KVONCE_COMMIT", "GITHUB_SHA", "CI_COMMIT_SHA", "GIT_COMMIT")
BRANCH_VARS = ("KVONCE_BRANCH", "GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME", "GIT_BRANCH")


def _first_env(names: tuple[str, ...], environ: Mapping[str, str]) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def correlation(run_id: str | None, code_versions: Mapping[str, str] | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    return {"runId": run_id, "commit": _first_env(COMMIT_VARS, env), "branch": _first_env(BRANCH_VARS, env),
            "codeVersions": dict(code_versions or {})}


def build_envelope(
    out_dir: Path,
    *,
    partition_key: str,
    source: Mapping[str, Any],
    status: str,
    valid: bool | None,
    correlation_fields: Mapping[str, Any],
    known: Mapping[str, tuple[str, int]] | None = None,
    error: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The envelope document for ``out_dir``; artifacts present are listed with sha256 and size.

    ``known`` maps artifact names to ``(sha256, bytes)`` already computed by the stages; others are
    hashed here (they are small next to the payload, except the collected copy, which is known).
    """
    known = known or {}
    listed: list[dict[str, Any]] = []
    for name in ARTIFACT_NAMES:
        path = out_dir / name
        if not path.is_file():
            continue
        size = path.stat().st_size
        sha, known_size = known.get(name, (None, None))
        if sha is None or known_size != size:
            sha = sha256_file(path)
        listed.append({"name": name, "sha256": sha, "bytes": size})
    doc: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "partitionKey": partition_key,
        "status": status,
        "valid": valid,
        "source": dict(source),
        "artifacts": listed,
        "correlation": dict(correlation_fields),
        "writtenAt": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if error:
        doc["inputError"] = dict(error)
    return doc


def write_envelope(out_dir: Path, document: Mapping[str, Any]) -> Path:
    path = out_dir / ENVELOPE
    write_bytes_atomic(path, orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def read_envelope(out_dir: Path) -> dict[str, Any] | None:
    try:
        return orjson.loads((out_dir / ENVELOPE).read_bytes())
    except FileNotFoundError:
        return None
