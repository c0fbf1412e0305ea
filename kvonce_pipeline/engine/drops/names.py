"""The drop folder's names and keys, and the records both kinds of drop folder return.

What a payload is called and which partition it becomes does not depend on where the drop folder
is: a local (or shared POSIX) folder (:mod:`.folder`) and a bucket prefix (:mod:`.objects`) share
these rules and return these types, so the sensor and the drop runs have one code path. The rules,
and why, are in :mod:`kvonce_pipeline.engine.drops`.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from ..storage import is_remote, local_path

#: Names that are some writer's work in progress (or an editor's), never a payload.
TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".swp", ".swx", "~")
#: How old (by mtime) a file must be before it is read: a writer that is not atomic (``cp``, an
#: editor, a network copy) has stopped touching it by then.
DEFAULT_SETTLE_SECONDS = 2.0
#: Stems are cut here so that a key (stem + 13) stays a short, portable path component.
MAX_STEM = 80
SHA_PREFIX = 12
#: The store scope of files directly in the drop folder (a subfolder named ``default`` is refused).
DEFAULT_SCOPE = "default"
#: A scope is a subfolder of the drop folder; its name is one short, safe path component.
SCOPE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
#: Between a scope and the stem in a partition key: a character no stem has (see :func:`stem_of`).
SCOPE_SEPARATOR = "~"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
KEY_PATTERN = re.compile(rf"^(?:{SCOPE_PATTERN.pattern}{re.escape(SCOPE_SEPARATOR)})?"
                         rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_STEM - 1}}}-[0-9a-f]{{{SHA_PREFIX}}}$")


def stem_of(name: str) -> str:
    """The file name without its last extension, reduced to safe characters (never empty)."""
    stem = PurePosixPath(name.replace("\\", "/")).name
    if "." in stem.lstrip("."):
        stem = stem[: stem.rindex(".")]
    stem = _UNSAFE.sub("", stem).lstrip(".")[:MAX_STEM]
    return stem or "payload"


def is_scope_name(name: str) -> bool:
    return bool(SCOPE_PATTERN.fullmatch(name))


def partition_key_for(name: str, sha256: str, scope: str = DEFAULT_SCOPE) -> str:
    """``<stem>-<sha256[:12]>`` in the default scope, ``<scope>~<stem>-<sha256[:12]>`` in another."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    if not is_scope_name(scope):
        raise ValueError(f"not a scope name: {scope!r}")
    prefix = "" if scope == DEFAULT_SCOPE else scope + SCOPE_SEPARATOR
    return f"{prefix}{stem_of(name)}-{sha256[:SHA_PREFIX]}"


def scope_of(key: str) -> str:
    """The store scope a partition key belongs to."""
    head, separator, _ = key.partition(SCOPE_SEPARATOR)
    return head if separator else DEFAULT_SCOPE


def scope_folder(drop_dir: Path, scope: str) -> Path:
    """Where a scope's payloads are dropped (the default scope: the drop folder itself)."""
    if not is_scope_name(scope):
        raise ValueError(f"not a scope name: {scope!r}")
    return Path(drop_dir) if scope == DEFAULT_SCOPE else Path(drop_dir) / scope


def is_partition_key(key: str) -> bool:
    """True for keys this module builds. Anything else (``../x``, ``a/b``) is refused as a folder name."""
    return bool(KEY_PATTERN.match(key))


def split_partition_key(key: str) -> tuple[str, str]:
    """``(stem, sha256 prefix)`` of a key built by :func:`partition_key_for` (the scope aside)."""
    if not is_partition_key(key):
        raise ValueError(f"not a drop partition key: {key!r}")
    return key.rpartition(SCOPE_SEPARATOR)[2][: -SHA_PREFIX - 1], key[-SHA_PREFIX:]


def domain_in_name(name: str, domains: Collection[str]) -> str | None:
    """The domain among ``domains`` a file name names as its next-to-last part, ``.gz`` aside:
    ``orders.inventory.ndjson`` and ``orders.inventory.ndjson.gz`` name ``inventory``; ``inventory.ndjson``
    (no stem), ``orders.ndjson`` and a part that is no installed domain's name name none."""
    base = PurePosixPath(name.replace("\\", "/")).name
    if base.lower().endswith(".gz"):
        base = base[:-3]
    parts = base.split(".")
    if len(parts) < 3 or not parts[0]:
        return None
    return parts[-2] if parts[-2] in domains else None


def is_ignored_name(name: str) -> bool:
    """Dot-files and temporary names: somebody is still writing them (the collector's ``.x.tmp``)."""
    lowered = name.lower()
    return not name or name.startswith(".") or lowered.endswith(TEMP_SUFFIXES)


def is_bare_name(name: str) -> bool:
    """A single path component, nothing that walks elsewhere."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def iso_utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


#: What the sensor's cursor remembers of a file: ``(size, mtime_ns)``, or ``(size, ETag)`` for an object.
Fingerprint = tuple[int, "int | str"]


@dataclass(frozen=True)
class DropFile:
    """A settled payload in the drop folder, with what lineage needs."""

    name: str
    path: Path
    size: int
    mtime_ns: int
    sha256: str
    scope: str = DEFAULT_SCOPE
    #: A private copy of exactly these bytes, when :func:`locate_payload` was asked for one.
    copy: Path | None = None
    #: The object's URL when the drop folder is a URL (``path`` is then the local copy, if any).
    url: str | None = None
    #: The object's ETag (a URL's drop folder): with the size, its fingerprint.
    etag: str = ""

    @property
    def partition_key(self) -> str:
        return partition_key_for(self.name, self.sha256, self.scope)

    @property
    def label(self) -> str:
        """The name relative to the drop folder: ``name``, or ``<scope>/<name>``."""
        return scope_label(self.scope, self.name)

    @property
    def arrived_at(self) -> str:
        """When the file arrived: its mtime (the collector renames a finished file into place)."""
        return iso_utc(self.mtime_ns)

    @property
    def location(self) -> str:
        """What lineage and messages name: the object's URL, or the file's path."""
        return self.url or str(self.path)

    def fingerprint(self) -> Fingerprint:
        """``(size, mtime_ns)`` of a file; ``(size, ETag)`` of an object (see :mod:`.objects`)."""
        return (self.size, self.etag) if self.url else (self.size, self.mtime_ns)


@dataclass(frozen=True)
class Refusal:
    """A file the sensor will not read, and why (logged once per version of the file)."""

    name: str
    reason: str
    size: int = 0
    mtime_ns: int = 0
    etag: str = ""

    def fingerprint(self) -> Fingerprint:
        return (self.size, self.etag) if self.etag else (self.size, self.mtime_ns)


@dataclass
class ScanResult:
    ready: list[DropFile] = field(default_factory=list)        # new or changed, hashed, settled
    unchanged: list[str] = field(default_factory=list)          # same size and mtime as ``known``
    refused: list[Refusal] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)            # not settled yet, or over this tick's budget
    seen_waiting: dict[str, Fingerprint] = field(default_factory=dict)  # their fingerprint now
    ignored: int = 0                                            # dot-files and temporary names


def printable_name(name: str) -> str | None:
    """``None`` for a name that is valid UTF-8, else the name with its bad bytes as ``\\xff`` escapes.

    A name listed from the folder may hold bytes that are not UTF-8 (``os`` gives them back as lone
    surrogates). JSON, Dagster tags and logs cannot carry those, so such a file is refused under its
    escaped name, and the cursor, the log and every other file's run stay intact.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return None


def scope_label(scope: str, name: str) -> str:
    return name if scope == DEFAULT_SCOPE else f"{scope}/{name}"


def drop_root_of(configured: str | None) -> Path | str:
    """The drop folder as configured: a URL stays text (a Path would fold its ``//``), else a path."""
    text = (configured or "").strip()
    if is_remote(text):
        return text.rstrip("/")
    return local_path(text)


def candidate_order(eligible: list[str], stem: str, name: str | None) -> list[str]:
    """The order in which a run tries a scope's payloads for its partition's content: the name its
    tag gives first (the file it was made from, usually still there), then the names of its stem
    (the same file rewritten), then the rest (the same bytes under another name). Each is hashed
    until one matches, so the usual case reads one payload."""
    candidates = [n for n in eligible if stem_of(n) == stem] + [n for n in eligible if stem_of(n) != stem]
    if name is not None and is_bare_name(name) and name in candidates:
        candidates.remove(name)
        candidates.insert(0, name)
    return candidates
