"""The one way this package writes a file: to a temporary name beside it, then rename.

A reader (a user, a CI step, the drop-folder sensor, a second run) must never see half an artifact,
and a run killed mid-write must leave the previous artifact whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError


class _HashingWriter:
    """A file wrapper that hashes what passes through, so checksums cost no second read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._raw.write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[_HashingWriter]:
    """Yield a binary writer; on success the file appears at ``path`` in one rename.

    On any exception the temporary file is removed and ``path`` keeps its previous content.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
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
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise


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
