"""The one way this package writes a file: to a temporary name beside it, then rename.

A reader (a user, a CI step, the drop-folder sensor, a second run) must never see half an artifact,
and a run killed mid-write must leave the previous artifact whole.

How it holds up when things go wrong:

* **Killed mid-write** (SIGKILL, OOM, power cut before the rename): the target keeps its previous
  content; only a temporary ``.<name>.<pid>.<random>.tmp`` remains. Dot-files are not artifacts
  (the drop-folder sensor and ``rglob("*.json")`` readers skip them) and the next write of the same
  target removes temporaries whose writer process is gone (:func:`sweep_stale_temps`).
* **Power cut after the rename**: the data is fsynced before the rename and the folder after it,
  so the new name never points at missing data.
* **Disk full, read-only folder, no permission, a file where a folder should be**: an
  :class:`~kvonce_pipeline.engine.errors.OutputError` naming the file and the reason (``No space left on
  device``, ``Read-only file system``, ...); the temporary file is removed and the target is left
  as it was. The input is never opened for writing by this module.

Caveat: a temporary is considered stale when no process with its pid exists *in this pid
namespace*. Two containers writing the same folder would each see the other's pids as gone; give
each writer its own reports folder (the drop folder is safe: each payload file has its own name).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError

TEMP_SUFFIX = ".tmp"


#: Written bytes after which the kernel is asked to start writing them out (see _start_writeback).
WRITEBACK_BYTES = 32 * 1024 * 1024


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` through ctypes, or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    function.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        function(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE: start writing, do not wait

    return start


_start_writeback = _load_sync_file_range()


class _HashingWriter:
    """A file wrapper that hashes what passes through, so checksums cost no second read.

    Every :data:`WRITEBACK_BYTES` it asks the kernel to start writing the new range to disk
    (without waiting): the fsync before the rename then waits only for the last range, instead
    of for the whole file (about a second for the 1M-event run's 760 MB of artifacts). The
    request is advisory; where it is missing or fails, the fsync does all the work as before.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0
        self._synced = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        self.size += len(data)
        written = self._raw.write(data)
        if self.size - self._synced >= WRITEBACK_BYTES and _start_writeback is not None:
            self._raw.flush()
            _start_writeback(self._raw.fileno(), self._synced, self.size - self._synced)
            self._synced = self.size
        return written

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def temp_prefix(target: Path) -> str:
    """``.<name>.``: every temporary of ``target`` starts with it (a dot-file, never an artifact)."""
    return f".{target.name}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True  # when in doubt, keep the file
    return True


def _temp_owner(name: str) -> int | None:
    """The writer pid in ``.<target>.<pid>.<random>.tmp`` (mkstemp's random part has no dot)."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    parts = name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit():
        return None
    return int(parts[1])


def _abandoned(directory: str | os.PathLike[str], prefix: str,
               owner_of: Callable[[str], int | None]) -> Iterator[os.DirEntry[str]]:
    """Entries named ``prefix…`` whose owning process (``owner_of(name)``) no longer runs."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix):
            owner = owner_of(entry.name)
            if owner is not None and not _pid_alive(owner):
                yield entry


def sweep_stale_temps(directory: str | os.PathLike[str], target_name: str | None = None) -> list[Path]:
    """Remove temporaries left by writers that no longer run; returns what was removed.

    ``target_name`` limits the sweep to one target's temporaries (what :func:`atomic_writer` does
    before each write); without it every stale temporary in ``directory`` goes (for a service at
    start-up, e.g. the collector on its drop folder). Errors are ignored: this is housekeeping.
    """
    prefix = f".{target_name}." if target_name is not None else "."
    removed: list[Path] = []
    for entry in _abandoned(directory, prefix, _temp_owner):
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def private_folder_name(prefix: str) -> str:
    """``<prefix><pid>-``: the start of a scratch folder's name that :func:`sweep_stale_folders`
    can attribute to its process (use as ``tempfile.mkdtemp(prefix=...)``)."""
    return f"{prefix}{os.getpid()}-"


def sweep_stale_folders(directory: str | os.PathLike[str], prefix: str) -> list[Path]:
    """Remove scratch folders ``<prefix><pid>-<random>`` whose process is gone (e.g. the on-disk
    sort's runs of a killed run); returns what was removed. Errors are ignored."""

    def owner_of(name: str) -> int | None:
        pid_text = name[len(prefix):].partition("-")[0]
        return int(pid_text) if pid_text.isascii() and pid_text.isdigit() else None

    removed: list[Path] = []
    for entry in _abandoned(directory, prefix, owner_of):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def fsync_directory(directory: Path) -> None:
    """Make a rename durable. Some filesystems refuse fsync on a folder; that is not an error."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _output_error(target: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write {target}: {reason}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[_HashingWriter]:
    """Yield a binary writer; on success the file appears at ``path`` in one rename.

    On any exception the temporary file is removed and ``path`` keeps its previous content;
    an ``OSError`` (disk full, read-only, permissions) becomes :class:`OutputError`.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(target.parent, target.name)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{temp_prefix(target)}{os.getpid()}.", suffix=TEMP_SUFFIX,
                                        dir=target.parent)
    except OSError as exc:
        raise _output_error(target, exc) from exc
    try:
        with os.fdopen(fd, "wb", buffering=1024 * 1024) as raw:
            writer = _HashingWriter(raw)
            yield writer
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise _output_error(target, exc) from exc
        raise
    fsync_directory(target.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` atomically and return its sha256 (hex)."""
    with atomic_writer(path) as out:
        out.write(data)
    return out.hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 4 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
