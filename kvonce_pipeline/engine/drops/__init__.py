"""The drop folder: which files are payloads, which partition each becomes, and how to find it again.

One interface, two places: a local (or shared POSIX) folder (:mod:`.folder`) and a bucket prefix
(:mod:`.objects`), sharing the names, keys and records of :mod:`.names`, so the sensor and the drop
runs have one code path (:attr:`DropFile.location` names the file or the object). The functions
below pick the place from the drop folder's form.

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
  whole.
* An NDJSON event log names no domain, so its file name may: ``<stem>.<domain>.<extension>``
  (``orders.inventory.ndjson``, gzipped ``orders.inventory.ndjson.gz``) is that installed domain's log
  (:func:`domain_in_name`). A name, not a subfolder, because subfolders are store scopes
  (``drops/<scope>/``, one level): a per-domain subfolder would be a scope named like a domain, and a
  scope's log could not say its domain. The name keeps both: ``drops/shop-eu/orders.inventory.ndjson``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..limits import Limits
from ..storage import is_remote
from .folder import locate_in_folder, scan_folder
from .names import (DEFAULT_SCOPE, DEFAULT_SETTLE_SECONDS, KEY_PATTERN, MAX_STEM, SCOPE_PATTERN, SCOPE_SEPARATOR,
                    SHA_PREFIX, TEMP_SUFFIXES, DropFile, Fingerprint, Refusal, ScanResult, candidate_order,
                    domain_in_name, drop_root_of, is_bare_name, is_ignored_name, is_partition_key,
                    is_scope_name, iso_utc, partition_key_for, printable_name, scope_folder, scope_label, scope_of,
                    split_partition_key, stem_of)
from .objects import locate_object, object_url, scan_objects

__all__ = [
    "DEFAULT_SCOPE", "DEFAULT_SETTLE_SECONDS", "KEY_PATTERN", "MAX_STEM", "SCOPE_PATTERN", "SCOPE_SEPARATOR",
    "SHA_PREFIX", "TEMP_SUFFIXES", "DropFile", "Fingerprint", "Refusal", "ScanResult", "candidate_order",
    "domain_in_name", "drop_root_of", "is_bare_name", "is_ignored_name", "is_partition_key",
    "is_scope_name", "iso_utc", "locate_payload", "partition_key_for", "payload_location", "printable_name",
    "scan_drop_dir", "scope_folder", "scope_label", "scope_of", "split_partition_key", "stem_of",
]


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
    """The drop folder's payloads that are new since ``known`` (name -> fingerprint when last handled),
    hashed; at most ``max_files`` files and ``max_bytes`` bytes per call, the rest wait (in name order).

    A folder: :func:`.folder.scan_folder` (settled by mtime, or unchanged since ``waited``). A URL
    (``s3://bucket/drops``): :func:`.objects.scan_objects` (``(size, ETag)`` fingerprints, no settle
    time; ``stage_dir`` keeps a local copy of each object read).
    """
    limits = limits or Limits()
    if is_remote(drop_dir):
        return scan_objects(drop_dir, limits=limits, known=known or {}, max_files=max_files,
                            max_bytes=max_bytes, stage_dir=stage_dir)
    return scan_folder(Path(drop_dir), limits=limits, known=known, waited=waited, settle_seconds=settle_seconds,
                       now_ns=now_ns, max_files=max_files, max_bytes=max_bytes)


def locate_payload(drop_dir: Path | str, partition_key: str, *, name: str | None = None,
                   sha256: str | None = None, size: int | None = None,
                   limits: Limits | None = None, copy_to: Path | None = None) -> DropFile:
    """Find the payload of ``partition_key`` in the drop folder, by content, never by a trusted path
    (``name``, from the run's tags, is only tried first); with ``copy_to``, one read both hashes it and
    writes a private copy there, which is what the run judges. Raises :class:`InputError` naming the
    folder and the key when no payload holds that content any more.

    A folder: :func:`.folder.locate_in_folder`. A URL: :func:`.objects.locate_object` (the object is
    downloaded once, never written or deleted).
    """
    limits = limits or Limits()
    if is_remote(drop_dir):
        return locate_object(drop_dir, partition_key, name=name, sha256=sha256, size=size, limits=limits,
                             copy_to=copy_to)
    return locate_in_folder(Path(drop_dir), partition_key, name=name, sha256=sha256, size=size, limits=limits,
                            copy_to=copy_to)


def payload_location(drop_dir: Path | str, scope: str, name: str) -> str:
    """How lineage names the payload ``name`` of ``scope``: its path, or its object's URL."""
    if is_remote(drop_dir):
        return object_url(drop_dir, scope, name)
    return str(scope_folder(Path(drop_dir), scope) / name)
