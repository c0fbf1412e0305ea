"""Inputs and reports beyond the local disk: any location fsspec reaches (``s3://``, ``gs://``, ...).

The engine reads and writes local files: the one pass, the on-disk sort and the second core's
worker need seekable files, and every artifact is published by rename (:mod:`kvonce_pipeline.atomic`).
A remote location is therefore staged at the edges, not threaded through the engine:

* an input URL is downloaded once, streamed, into a private folder, and the run reads that copy,
  so the bytes judged are the bytes fetched and the remote object is never touched; the copy is a
  :class:`StagedInput`, which names the URL in every message and report;
* a reports URL gets a private local folder; once the run has written its artifacts there (each
  through the atomic helper), :func:`publish` uploads them one object each, the validation report
  last, then removes the artifacts of an earlier run that this run did not write.

``file://`` URLs and plain paths are local paths: nothing is staged and every promise of the local
disk holds. What an object store weakens, and how the order above copes, is in
``docs/scale-out.md`` (one ``PUT`` replaces one object whole, so no reader sees half an artifact;
but there is no rename of a folder, so while a publish runs a reader can see new data files beside
the previous report; the report, published last, is the commit point). Credentials and endpoints
come from the backend's usual configuration (for S3: ``AWS_*`` variables, ``~/.aws``, or
``FSSPEC_S3_ENDPOINT_URL`` and friends); the S3 backend is the ``[s3]`` extra (s3fs).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from . import artifacts
from .errors import ConfigError, InputError, OutputError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: Artifacts in the order they are published; the validation report, which says what the run
#: found and which files it wrote, is last.
PUBLISH_ORDER = (artifacts.EVENTS, artifacts.PROJECTION, artifacts.STATE_SEQUENCE, artifacts.SUMMARY,
                 artifacts.VALIDATION)
_COPY_BLOCK = 4 * 1024 * 1024


def is_remote(location: str | os.PathLike[str]) -> bool:
    """A URL with a scheme other than ``file``: staged through fsspec."""
    if not isinstance(location, str):
        return False
    match = _SCHEME.match(location)
    return match is not None and match.group(1).lower() != "file"


def local_path(location: str | os.PathLike[str]) -> Path:
    """A local location as a path (``file:///x`` is ``/x``)."""
    text = os.fspath(location)
    return Path(text[len("file://"):]) if text.lower().startswith("file://") else Path(text)


class StagedInput(os.PathLike[str]):
    """A downloaded input: opened as its local copy (``os.fspath``), named as its URL (``str``).

    Every reader opens ``os.fspath(path)`` and labels messages and reports with ``str(path)``, so
    a finding, an input error and ``input.source`` in the report all name the object the user gave.
    """

    def __init__(self, url: str, local: Path) -> None:
        self.url = url
        self.local = local

    def __fspath__(self) -> str:
        return str(self.local)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"StagedInput({self.url!r} at {str(self.local)!r})"


def _filesystem(url: str) -> tuple[Any, str]:
    """fsspec's filesystem and path for ``url``; a clear message when its backend is missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        hint = " (install the [s3] extra: .venv/bin/pip install -e '.[s3]')" if scheme in ("s3", "s3a") else ""
        raise ConfigError(f"{url}: no storage backend for {scheme}:// is installed{hint}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{url}: {exc}") from None


@contextmanager
def staged_input(url: str) -> Iterator[StagedInput]:
    """Download ``url`` into a private folder for the run; removed afterwards whatever happens.

    Raises :class:`InputError` naming the URL when the object is missing or cannot be read.
    """
    fs, path = _filesystem(url)
    folder = Path(tempfile.mkdtemp(prefix="kvonce-input-"))
    local = folder / (PurePosixPath(path).name or "payload")
    try:
        try:
            with fs.open(path, "rb") as source, open(local, "wb") as copy:
                shutil.copyfileobj(source, copy, _COPY_BLOCK)
        except FileNotFoundError:
            raise InputError(url, "no such object") from None
        except IsADirectoryError:
            raise InputError(url, "is a folder, not a trace file") from None
        except PermissionError as exc:
            raise InputError(url, f"cannot read: access denied ({exc})") from None
        except OSError as exc:
            raise InputError(url, f"cannot read: {exc}") from None
        yield StagedInput(url, local)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def staged_reports(url: str) -> Iterator[Path]:
    """A private local folder for a run whose reports go to ``url`` (publish them with :func:`publish`)."""
    _filesystem(url)  # a missing backend is a configuration error before the run, not after it
    folder = Path(tempfile.mkdtemp(prefix="kvonce-reports-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(folder: Path, url: str) -> list[str]:
    """Upload the artifacts in ``folder`` to ``url``, the validation report last; then remove the
    artifacts of an earlier run there that this run did not write. Returns the URLs written.

    Raises :class:`OutputError` naming the object when the store refuses a write.
    """
    fs, root = _filesystem(url)
    root = root.rstrip("/")
    written: list[str] = []
    target = ""
    try:
        fs.makedirs(root, exist_ok=True)
        for name in PUBLISH_ORDER:
            local = folder / name
            if not local.is_file():
                continue
            target = f"{root}/{name}"
            fs.put_file(str(local), target)
            written.append(target)
        for name in PUBLISH_ORDER:
            target = f"{root}/{name}"
            if not (folder / name).is_file() and fs.exists(target):
                fs.rm_file(target)  # an earlier run's, not described by the report just published
    except OSError as exc:
        raise OutputError(f"cannot write {target or root} in {url}: {exc}") from None
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return [f"{protocol}://{path}" for path in written]
