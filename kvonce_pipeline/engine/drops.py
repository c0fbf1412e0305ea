"""The drop folder: which files are payloads, which partition each becomes, and how to find it again.

Plain Python (no Dagster): the sensor calls :func:`scan_drop_dir` on every tick and the drop
assets call :func:`locate_payload` at run time. The rules, and why:

* A file name is a label, never a path. Only entries *listed* from the drop folder are opened,
  subfolders are not descended into, and a name taken back from a run tag must be a bare name.
* A partition key is ``<stem>-<first 12 hex of sha256(content)>``: the same name with new bytes is
  a new partition. Content is the identity: a second file with bytes already seen (under any name)
  is not a new partition; the sensor matches on the sha256 prefix. The stem is
  the file name without its last extension, reduced to ``[A-Za-z0-9._-]`` (other characters are
  dropped), with leading dots removed and at most :data:`MAX_STEM` characters, so a key is always one
  harmless path component (Dagster does not validate dynamic partition keys itself).
* Half-written files are never read: dot-files and temporary names (``*.tmp``, ``*.part``, ...) are
  ignored, and a file is taken only once its mtime is :data:`DEFAULT_SETTLE_SECONDS` old and its
  size and mtime did not change while it was hashed.
* Symlinks that leave the drop folder, non-regular files and files above
  ``Limits.max_drop_file_bytes`` are refused with a reason (the sensor logs it once).
* Nothing here writes, renames or deletes anything in the drop folder.
* The drop folder may be a URL (``s3://bucket/drops``, any fsspec location): the same rules over
  objects, with an object's ``(size, ETag)`` as its fingerprint and no settle time, as objects appear
  whole (:mod:`kvonce_pipeline.engine.drop_objects`). The types below serve both, so the sensor and
  the drop runs have one code path; :attr:`DropFile.location` names the file or the object.
* An NDJSON event log names no domain, so its file name may: ``<stem>.<domain>.<extension>``
  (``orders.inventory.ndjson``, gzipped ``orders.inventory.ndjson.gz``) is that installed domain's log
  (:func:`domain_in_name`). A name, not a subfolder, because subfolders are store scopes
  (``drops/<scope>/``, one level): a per-domain subfolder would be a scope named like a domain, and a
  scope's log could not say its domain. The name keeps both: ``drops/shop-eu/orders.inventory.ndjson``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import InputError
from .limits import Limits
from .storage import is_remote, local_path

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
        """``(size, mtime_ns)`` of a file; ``(size, ETag)`` of an object (see :mod:`.drop_objects`)."""
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


class _Changing(Exception):
    """The file changed while it was read: not settled."""


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


def _listed(drop_dir: Path, result: ScanResult) -> list[tuple[str, Path, str]]:
    """``(scope, folder, name)`` of every entry to consider: the drop folder's own files, and the
    files of each subfolder whose name is a scope (one level, never deeper). A symlinked or
    badly named subfolder is refused, never entered."""
    out: list[tuple[str, Path, str]] = []
    with os.scandir(drop_dir) as listing:
        top = sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing)
    for name, is_folder in top:
        if is_ignored_name(name):
            result.ignored += 1
        elif not is_folder:
            out.append((DEFAULT_SCOPE, Path(drop_dir), name))
        elif (escaped := printable_name(name)) is not None or not is_scope_name(name) or name == DEFAULT_SCOPE:
            result.refused.append(Refusal(escaped or name, "a folder whose name is not a store scope (letters, digits, "
                                                 "'_' and '-', at most 40; not 'default', which is the drop "
                                                 "folder itself): not scanned"))
        else:
            folder = Path(drop_dir) / name
            try:
                with os.scandir(folder) as listing:
                    inner = sorted(entry.name for entry in listing)
            except OSError as exc:
                result.refused.append(Refusal(name, f"scope folder cannot be listed: {exc.strerror or exc}"))
                continue
            for child in inner:
                if is_ignored_name(child):
                    result.ignored += 1
                else:
                    out.append((name, folder, child))
    return out


def _inspect(root_real: str, entry_path: str, name: str, limits: Limits) -> os.stat_result | Refusal:
    """Stat a listed entry, refusing what must not be read. Follows a symlink only inside the folder."""
    try:
        link = os.lstat(entry_path)
    except FileNotFoundError:
        return Refusal(name, "vanished while scanning")
    if stat.S_ISLNK(link.st_mode):
        target = os.path.realpath(entry_path)
        if os.path.commonpath([root_real, target]) != root_real:
            return Refusal(name, f"symlink pointing outside the drop folder (to {target})",
                           0, link.st_mtime_ns)
        try:
            info = os.stat(entry_path)
        except OSError:
            return Refusal(name, "dangling symlink", 0, link.st_mtime_ns)
    else:
        info = link
    if stat.S_ISDIR(info.st_mode):
        return Refusal(name, "a folder (subfolders are not scanned)", 0, info.st_mtime_ns)
    if not stat.S_ISREG(info.st_mode):
        return Refusal(name, "not a regular file (a FIFO, socket or device)", 0, info.st_mtime_ns)
    if info.st_size > limits.max_drop_file_bytes:
        return Refusal(name, f"{info.st_size} bytes is above the drop limit of {limits.max_drop_file_bytes} "
                             "bytes (KVONCE_MAX_DROP_FILE_BYTES)", info.st_size, info.st_mtime_ns)
    return info


def _hash_settled(path: str, expected: os.stat_result, is_link: bool, sink: Any = None) -> str:
    """sha256 of the file, only if it is the file that was stat'ed and it did not change meanwhile;
    ``sink.write`` gets every block read (a private copy made in the same read)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not is_link:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT):
            raise _Changing from None
        raise
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        before = os.fstat(handle.fileno())
        if (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) != (
                expected.st_dev, expected.st_ino, expected.st_size, expected.st_mtime_ns):
            raise _Changing
        while block := handle.read(4 * 1024 * 1024):
            digest.update(block)
            if sink is not None:
                sink.write(block)
        after = os.fstat(handle.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise _Changing
    return digest.hexdigest()


def scan_drop_dir(
    drop_dir: Path | str,
    *,
    limits: Limits | None = None,
    known: Mapping[str, Fingerprint] | None = None,
    waited: Mapping[str, Fingerprint] | None = None,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    now_ns: int | None = None,
    max_files: int = 100,
    max_bytes: int = 2 * 1024 * 1024 * 1024,
    stage_dir: Path | None = None,
) -> ScanResult:
    """List the drop folder (not recursively) and hash files that are new since ``known``.

    ``known`` maps names to the ``(size, mtime_ns)`` they had when last handled; those are not read
    again. A file has settled when its mtime is ``settle_seconds`` old, or when it is unchanged since
    the previous call saw it waiting (``waited``, from :attr:`ScanResult.seen_waiting`): that covers
    an mtime in the future (a copy that kept a skewed clock's time). At most ``max_files`` files and ``max_bytes`` bytes are hashed per call, so one sensor
    tick stays well inside its 60 s budget; the rest wait for the next call (in name order).

    A URL (``s3://bucket/drops``) is listed on its store (:func:`.drop_objects.scan_objects`:
    ``(size, ETag)`` fingerprints, no settle time; ``stage_dir`` keeps a local copy of each object read).
    """
    limits = limits or Limits()
    known = known or {}
    if is_drop_url(drop_dir):
        from .drop_objects import scan_objects

        return scan_objects(str(drop_dir), limits=limits, known=known, max_files=max_files, max_bytes=max_bytes,
                            stage_dir=stage_dir)
    drop_dir = Path(drop_dir)
    waited = waited or {}
    now_ns = time.time_ns() if now_ns is None else now_ns
    settle_ns = int(settle_seconds * 1e9)
    result = ScanResult()
    try:
        root_real = os.path.realpath(drop_dir)
        listed = _listed(Path(drop_dir), result)
    except FileNotFoundError:
        return result
    hashed_files = hashed_bytes = 0
    for scope, folder, bare in listed:
        entry_path = os.path.join(folder, bare)
        escaped = printable_name(bare)
        if escaped is not None:
            try:
                seen = os.lstat(entry_path)
            except OSError:
                continue
            result.refused.append(Refusal(scope_label(scope, escaped),
                                          "the file name is not valid UTF-8: rename it to read it",
                                          seen.st_size, seen.st_mtime_ns))
            continue
        name = scope_label(scope, bare)
        info = _inspect(root_real, entry_path, name, limits)
        if isinstance(info, Refusal):
            result.refused.append(info)
            continue
        fingerprint = (info.st_size, info.st_mtime_ns)
        if known.get(name) == fingerprint:
            result.unchanged.append(name)
            continue
        young = now_ns - info.st_mtime_ns < settle_ns
        over_budget = hashed_files >= max_files or (hashed_files and hashed_bytes + info.st_size > max_bytes)
        if (young and waited.get(name) != fingerprint) or over_budget:
            result.waiting.append(name)
            result.seen_waiting[name] = fingerprint
            continue
        try:
            sha = _hash_settled(entry_path, info, os.path.islink(entry_path))
        except _Changing:
            result.waiting.append(name)
            continue
        except OSError as exc:
            result.refused.append(Refusal(name, f"cannot read: {exc.strerror or exc}", *fingerprint))
            continue
        hashed_files += 1
        hashed_bytes += info.st_size
        result.ready.append(DropFile(bare, Path(folder) / bare, info.st_size, info.st_mtime_ns, sha, scope))
    return result


class _NotThisOne(Exception):
    """A candidate's content is not the partition's: its private copy is abandoned."""


def _hash_candidate(entry_path: str, info: os.stat_result, copy_to: Path | None, wanted: Any) -> str:
    """The candidate's sha256; with ``copy_to``, a private copy written in the same read and kept
    (renamed into place) only if ``wanted(digest)``."""
    is_link = os.path.islink(entry_path)
    if copy_to is None:
        return _hash_settled(entry_path, info, is_link)
    from .atomic import atomic_writer

    digest = ""
    failure: BaseException | None = None  # a read error is the input's: not an OutputError
    try:
        with atomic_writer(copy_to) as out:
            try:
                digest = _hash_settled(entry_path, info, is_link, out)
            except (OSError, _Changing) as exc:
                failure = exc
                raise _NotThisOne from None
            if not wanted(digest):
                raise _NotThisOne
    except _NotThisOne:
        if failure is not None:
            raise failure from None
    return digest


def is_drop_url(drop_dir: Path | str) -> bool:
    """A drop folder given as a URL (``s3://...``; ``file://`` is a local path): read through fsspec."""
    return isinstance(drop_dir, str) and is_remote(drop_dir)


def drop_root_of(configured: str | None) -> Path | str:
    """The drop folder as configured: a URL stays text (a Path would fold its ``//``), else a path."""
    text = (configured or "").strip()
    if is_remote(text):
        return text.rstrip("/")
    return local_path(text)


def payload_location(drop_dir: Path | str, scope: str, name: str) -> str:
    """How lineage names the payload ``name`` of ``scope``: its path, or its object's URL."""
    if is_drop_url(drop_dir):
        from .drop_objects import object_url

        return object_url(str(drop_dir), scope, name)
    return str(scope_folder(Path(drop_dir), scope) / name)


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


def locate_payload(drop_dir: Path | str, partition_key: str, *, name: str | None = None,
                   sha256: str | None = None, size: int | None = None,
                   limits: Limits | None = None, copy_to: Path | None = None) -> DropFile:
    """Find the payload of ``partition_key`` in the drop folder, by content, never by a trusted path.

    ``name`` (a hint, e.g. from the run's tags) is tried first if it is a bare file name, then the
    files whose stem matches the key, then any other file (of ``size`` bytes, when given): a copy
    under another name holds the same content. The content must match ``sha256`` (or the key's
    12-digit prefix). Raises :class:`InputError` naming the folder and the key when no file holds
    that content any more.

    ``copy_to``: the file is read once, and that one read both hashes it and writes a private copy
    there, so what is judged afterwards is exactly the bytes hashed, whatever happens to the file
    in the drop folder meanwhile (rewritten, or swapped for a FIFO). It costs a copy of the payload
    on disk for the length of the run, which is why only the drop runs ask for it.

    A URL is read on its store (:func:`.drop_objects.locate_object`): the object is downloaded once
    into ``copy_to`` and hashed in the same read; it is never written or deleted.
    """
    limits = limits or Limits()
    if is_drop_url(drop_dir):
        from .drop_objects import locate_object

        return locate_object(str(drop_dir), partition_key, name=name, sha256=sha256, size=size, limits=limits,
                             copy_to=copy_to)
    drop_dir = Path(drop_dir)
    if not is_partition_key(partition_key):
        raise InputError(str(drop_dir), f"{partition_key!r} is not a drop partition key (<stem>-<12 hex>)")
    stem, prefix = split_partition_key(partition_key)
    if sha256 is not None and not sha256.startswith(prefix):
        raise InputError(str(drop_dir), f"sha256 {sha256} does not belong to partition {partition_key}")
    root_real = os.path.realpath(drop_dir)
    scope = scope_of(partition_key)
    folder = scope_folder(drop_dir, scope)
    try:
        if os.path.islink(folder):
            raise FileNotFoundError
        with os.scandir(folder) as listing:
            names = sorted(entry.name for entry in listing)
    except FileNotFoundError:
        raise InputError(str(folder), "the drop folder does not exist" if scope == DEFAULT_SCOPE
                         else f"the folder of scope {scope} does not exist") from None
    drop_dir = folder
    eligible = [n for n in names if not is_ignored_name(n) and printable_name(n) is None]

    def wanted(digest: str) -> bool:
        return digest == sha256 if sha256 else digest.startswith(prefix)

    for candidate in candidate_order(eligible, stem, name):
        entry_path = os.path.join(drop_dir, candidate)
        info = _inspect(root_real, entry_path, candidate, limits)
        if isinstance(info, Refusal) or (size is not None and info.st_size != size):
            continue
        try:
            digest = _hash_candidate(entry_path, info, copy_to, wanted)
        except (_Changing, OSError):
            continue
        if wanted(digest):
            return DropFile(candidate, Path(drop_dir) / candidate, info.st_size, info.st_mtime_ns, digest, scope,
                            copy_to)
    raise InputError(str(drop_dir), f"no payload with the content of partition {partition_key} "
                                    "(the file was moved, removed or rewritten after it was seen)")
