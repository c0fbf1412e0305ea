"""The drop folder on an object store (``KVONCE_DROP_DIR=s3://bucket/drops``): listing and locating payloads.

Plain Python (no Dagster), reached through fsspec like every other URL (:mod:`kvonce_pipeline.engine.storage`).
:func:`kvonce_pipeline.engine.drops.scan_drop_dir` and :func:`~kvonce_pipeline.engine.drops.locate_payload`
hand a URL here and return the same :class:`~.names.DropFile` and :class:`~.names.ScanResult` as for a
folder (:mod:`.folder`), so the sensor and the drop runs have one code path.

What changes from a local folder, and why:

* **No settle time.** A local file can be read while a writer that is not atomic still appends to
  it, hence the mtime rule. An object becomes visible only when its ``PUT`` (or its multipart
  upload) has completed, whole: an object is taken the first time it is listed.
* **The fingerprint is ``(size, ETag)``, not ``(size, mtime)``.** The store gives a new ETag to
  every new content (an MD5 for a single ``PUT``, a digest of the parts' for a multipart upload),
  so an object the sensor's cursor knows under the same size and ETag is not downloaded again; a
  replaced object is. The ETag is not the content hash the partition key is made of (it is not a
  sha256, and a multipart ETag depends on the part size), so content is still hashed, once.
* **The object is read once, pinned to its ETag.** s3fs asks for every range with ``If-Match`` on the
  ETag it saw when the object was opened, so an object replaced mid-read fails the read (it waits
  for the next tick) instead of mixing two versions; one streaming read hashes the bytes and writes
  the local copy that the sensor's domain scan and the drop run read.
* **Names are one level.** Objects directly under the prefix are the default scope's, objects
  directly under ``<prefix>/<scope>/`` that scope's (the same scope-name rules as subfolders); deeper
  keys are never read, and ``<scope>/x/y`` shows as a refused "folder". There are no symbolic links or
  special files on an object store; a key's last part is the name, never a path.
* **Nothing is written or deleted** under the prefix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from .names import (DEFAULT_SCOPE, DropFile, candidate_order, Fingerprint, Refusal, ScanResult, is_bare_name, is_ignored_name, is_partition_key,
                    is_scope_name, printable_name, scope_label, scope_of, split_partition_key)
from ..errors import InputError, OutputError
from ..limits import Limits
from ..storage import OBJECT_STORES, filesystem_of, protocol_of, store_error

_BLOCK = 4 * 1024 * 1024


class _Changed(Exception):
    """The object was replaced or removed while it was read: taken again on a later tick."""


def _etag(entry: Mapping[str, Any]) -> str:
    return str(entry.get("ETag") or entry.get("etag") or entry.get("md5Hash") or entry.get("mtime") or "").strip('"')


def _mtime_ns(entry: Mapping[str, Any]) -> int:
    stamp = entry.get("LastModified") or entry.get("mtime") or entry.get("updated")
    if isinstance(stamp, datetime):
        return int(stamp.timestamp() * 1_000_000_000)
    if isinstance(stamp, (int, float)):
        return int(stamp * 1_000_000_000)
    return 0


def _listing(fs: Any, path: str) -> list[dict[str, Any]]:
    """The entries directly under ``path`` (files and "folders"), fresh from the store (not fsspec's cache)."""
    try:
        entries = fs.ls(path, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    own = path.rstrip("/")
    return sorted((e for e in entries if str(e["name"]).rstrip("/") != own),
                  key=lambda e: str(e["name"]))


def _base(entry: Mapping[str, Any]) -> str:
    return str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]


def object_url(url: str, scope: str, name: str) -> str:
    """The URL of ``name`` in ``scope``'s part of the drop folder ``url``."""
    root = url.rstrip("/")
    return f"{root}/{name}" if scope == DEFAULT_SCOPE else f"{root}/{scope}/{name}"


def _listed(fs: Any, root: str, result: ScanResult) -> list[tuple[str, dict[str, Any]]]:
    """``(scope, entry)`` of every object to consider: the prefix's own objects and those of each
    "subfolder" whose name is a scope (one level, never deeper), as :func:`.folder._listed` does."""
    out: list[tuple[str, dict[str, Any]]] = []
    for entry in _listing(fs, root):
        name = _base(entry)
        if is_ignored_name(name):
            result.ignored += 1
        elif entry.get("type") != "directory":
            out.append((DEFAULT_SCOPE, entry))
        elif not is_scope_name(name) or name == DEFAULT_SCOPE:
            result.refused.append(Refusal(name, "a folder whose name is not a store scope (letters, digits, "
                                                "'_' and '-', at most 40; not 'default', which is the drop "
                                                "folder itself): not scanned"))
        else:
            for child in _listing(fs, f"{root}/{name}"):
                child_name = _base(child)
                if is_ignored_name(child_name):
                    result.ignored += 1
                elif child.get("type") == "directory":
                    result.refused.append(Refusal(scope_label(name, child_name),
                                                  "a folder (subfolders are not scanned)"))
                else:
                    out.append((name, child))
    return out


def _bucket_exists(fs: Any, root: str, url: str) -> None:
    """An empty listing of an object store: say so when its bucket does not exist (a typo in the URL
    would otherwise look like an empty drop folder, tick after tick). Not created: a surprise otherwise."""
    if protocol_of(fs) not in OBJECT_STORES:
        return
    bucket = root.split("/", 1)[0]
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise InputError(url, f"the bucket {bucket} does not exist") from None


def _read(fs: Any, path: str, etag: str | None, sink: Any = None) -> str:
    """sha256 of the object, streamed once (``sink.write`` gets every block: a copy made in the same read).

    Raises :class:`_Changed` when the object is gone or is not the one listed (``etag``) any more."""
    digest = hashlib.sha256()
    try:
        handle = fs.open(path, "rb")
    except FileNotFoundError:
        raise _Changed from None
    with handle:
        details = getattr(handle, "details", None)
        if etag is not None and isinstance(details, Mapping) and _etag(details) not in ("", etag):
            raise _Changed
        while True:
            try:
                block = handle.read(_BLOCK)
            except FileNotFoundError:
                raise _Changed from None
            except OSError as exc:
                if type(exc).__name__ == "FileExpired":  # fsspec's: If-Match failed, replaced mid-read
                    raise _Changed from None
                raise
            if not block:
                break
            digest.update(block)
            if sink is not None:
                sink.write(block)
    return digest.hexdigest()


def _copy_name(index: int, name: str) -> str:
    """A short local name for the copy of the ``index``-th object, keeping its extensions (``.ndjson.gz``)."""
    return f"{index}{''.join(PurePosixPath(name).suffixes[-2:])[:40]}"


def scan_objects(url: str, *, limits: Limits, known: Mapping[str, Fingerprint], max_files: int, max_bytes: int,
                 stage_dir: Path | None = None) -> ScanResult:
    """:func:`~kvonce_pipeline.engine.drops.scan_drop_dir` for a drop folder URL (see the module for the rules).

    ``known`` maps names to the ``(size, ETag)`` they had when last handled: those are not downloaded
    again. At most ``max_files`` objects and ``max_bytes`` bytes are downloaded per call; the rest
    wait (in name order). With ``stage_dir``, each object read is kept there as a local copy
    (:attr:`DropFile.copy` and :attr:`DropFile.path`; the caller removes the folder), for the sensor's
    domain scan; its :attr:`DropFile.url` names the object. Raises :class:`InputError` naming the URL
    when the store cannot be listed.
    """
    from ..atomic import atomic_writer

    fs, root = filesystem_of(url)
    root = root.rstrip("/")
    result = ScanResult()
    try:
        listed = _listed(fs, root, result)
        if not listed and not result.refused and not result.ignored:
            _bucket_exists(fs, root, url)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore and friends raise their own types
        raise InputError(url, f"cannot list the drop folder: {store_error(exc)}") from None
    hashed_files = hashed_bytes = 0
    for scope, entry in listed:
        bare = _base(entry)
        name = scope_label(scope, bare)
        size = int(entry.get("size") or 0)
        etag = _etag(entry)
        mtime_ns = _mtime_ns(entry)
        fingerprint: Fingerprint = (size, etag)
        if printable_name(bare) is not None or not is_bare_name(bare):
            result.refused.append(Refusal(name, "the object's name cannot be a file name", size, mtime_ns, etag))
            continue
        if size > limits.max_drop_file_bytes:
            result.refused.append(Refusal(name, f"{size} bytes is above the drop limit of {limits.max_drop_file_bytes} "
                                                "bytes (KVONCE_MAX_DROP_FILE_BYTES)", size, mtime_ns, etag))
            continue
        if known.get(name) == fingerprint:
            result.unchanged.append(name)
            continue
        if hashed_files >= max_files or (hashed_files and hashed_bytes + size > max_bytes):
            result.waiting.append(name)
            result.seen_waiting[name] = fingerprint
            continue
        copy = None if stage_dir is None else stage_dir / _copy_name(len(result.ready), bare)
        try:
            if copy is None:
                sha = _read(fs, str(entry["name"]), etag)
            else:
                with atomic_writer(copy) as out:
                    sha = _read(fs, str(entry["name"]), etag, out)
        except _Changed:
            result.waiting.append(name)
            continue
        except OutputError:
            raise  # the local copy cannot be written: not the object's fault
        except Exception as exc:  # noqa: BLE001 - botocore and friends raise their own types
            result.refused.append(Refusal(name, f"cannot read: {store_error(exc)}", size, mtime_ns, etag))
            continue
        hashed_files += 1
        hashed_bytes += size
        result.ready.append(DropFile(bare, copy or Path(bare), size, mtime_ns, sha, scope, copy,
                                     url=object_url(url, scope, bare), etag=etag))
    return result


def locate_object(url: str, partition_key: str, *, name: str | None = None, sha256: str | None = None,
                  size: int | None = None, limits: Limits, copy_to: Path | None = None) -> DropFile:
    """:func:`~kvonce_pipeline.engine.drops.locate_payload` for a drop folder URL: the object of
    ``partition_key``'s scope whose content is the partition's, read once (hashed, and copied to
    ``copy_to`` in the same read; a copy of other bytes is never kept). The object is only read.

    Raises :class:`InputError` naming the scope's URL and the key when no object holds that content
    any more (removed, or replaced with other bytes), or when the store cannot be listed.
    """
    from ..atomic import atomic_writer

    if not is_partition_key(partition_key):
        raise InputError(url, f"{partition_key!r} is not a drop partition key (<stem>-<12 hex>)")
    stem, prefix = split_partition_key(partition_key)
    if sha256 is not None and not sha256.startswith(prefix):
        raise InputError(url, f"sha256 {sha256} does not belong to partition {partition_key}")
    scope = scope_of(partition_key)
    folder_url = url.rstrip("/") if scope == DEFAULT_SCOPE else f"{url.rstrip('/')}/{scope}"
    fs, root = filesystem_of(url)
    folder = root.rstrip("/") if scope == DEFAULT_SCOPE else f"{root.rstrip('/')}/{scope}"
    try:
        entries = {_base(e): e for e in _listing(fs, folder) if e.get("type") != "directory"}
    except Exception as exc:  # noqa: BLE001 - botocore and friends raise their own types
        raise InputError(folder_url, f"cannot list the drop folder: {store_error(exc)}") from None
    eligible = sorted(n for n in entries if not is_ignored_name(n) and is_bare_name(n))

    def wanted(digest: str) -> bool:
        return digest == sha256 if sha256 else digest.startswith(prefix)

    for candidate in candidate_order(eligible, stem, name):
        entry = entries[candidate]
        length = int(entry.get("size") or 0)
        if length > limits.max_drop_file_bytes or (size is not None and length != size):
            continue
        digest = ""
        try:
            if copy_to is None:
                digest = _read(fs, str(entry["name"]), None)
            else:
                try:
                    with atomic_writer(copy_to) as out:
                        digest = _read(fs, str(entry["name"]), None, out)
                        if not wanted(digest):
                            raise _Changed  # not this one: its copy is not kept
                except _Changed:
                    if digest:
                        continue
                    raise
        except _Changed:
            continue
        except OutputError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore and friends raise their own types
            raise InputError(object_url(url, scope, candidate), f"cannot read: {store_error(exc)}") from None
        if wanted(digest):
            return DropFile(candidate, copy_to or Path(candidate), length, _mtime_ns(entry), digest, scope, copy_to,
                            url=object_url(url, scope, candidate), etag=_etag(entry))
    raise InputError(folder_url, f"no payload with the content of partition {partition_key} "
                                 "(the object was removed or replaced with other bytes after it was seen)")
