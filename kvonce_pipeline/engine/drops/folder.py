"""A local (or shared POSIX) folder as the drop folder: listing settled files, finding a partition's again.

Half-written files are never read (a file is taken once its mtime is settled and its size and mtime
did not change while it was hashed), symbolic links that leave the folder and special files are
refused, and nothing here writes, renames or deletes anything in the folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..limits import Limits
from .names import (DEFAULT_SCOPE, DEFAULT_SETTLE_SECONDS, DropFile, Fingerprint, Refusal, ScanResult,
                    candidate_order, is_ignored_name, is_partition_key, is_scope_name,
                    printable_name, scope_folder, scope_label, scope_of, split_partition_key)

class _Changing(Exception):
    """The file changed while it was read: not settled."""


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


def scan_folder(
    drop_dir: Path,
    *,
    limits: Limits | None = None,
    known: Mapping[str, Fingerprint] | None = None,
    waited: Mapping[str, Fingerprint] | None = None,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    now_ns: int | None = None,
    max_files: int = 100,
    max_bytes: int = 2 * 1024 * 1024 * 1024,
) -> ScanResult:
    """List the drop folder (not recursively) and hash files that are new since ``known``.

    ``known`` maps names to the ``(size, mtime_ns)`` they had when last handled; those are not read
    again. A file has settled when its mtime is ``settle_seconds`` old, or when it is unchanged since
    the previous call saw it waiting (``waited``, from :attr:`ScanResult.seen_waiting`): that covers
    an mtime in the future (a copy that kept a skewed clock's time). At most ``max_files`` files and ``max_bytes`` bytes are hashed per call, so one sensor
    tick stays well inside its 60 s budget; the rest wait for the next call (in name order).
    """
    limits = limits or Limits()
    known = known or {}
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
    from ..atomic import atomic_writer

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


def locate_in_folder(drop_dir: Path, partition_key: str, *, name: str | None = None,
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

    """
    limits = limits or Limits()
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
