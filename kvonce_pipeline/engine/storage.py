"""Inputs and reports beyond the local disk: any location fsspec reaches (``s3://``, ``gs://``, ...).

The engine reads and writes local files: the one pass, the on-disk sort and the second core's
worker need seekable files, and every artifact is published by rename (:mod:`kvonce_pipeline.engine.atomic`).
A remote location is therefore staged at the edges, not threaded through the engine:

* an input URL is downloaded once, streamed, into a private folder, and the run reads that copy,
  so the bytes judged are the bytes fetched and the remote object is never touched; the copy is a
  :class:`StagedInput`, which names the URL in every message and report;
* a reports URL gets a private local folder; once the run has written its artifacts there (each
  through the atomic helper), :func:`publish` uploads them one object each, the validation report
  last, then removes the artifacts of an earlier run that this run did not write; a step that runs
  apart from the one that published its input (another process or machine) gets it back with
  :func:`restore`.

``file://`` URLs and plain paths are local paths: nothing is staged and every promise of the local
disk holds. What an object store weakens, and how the order above copes, is in
``docs/storage.md`` (one ``PUT`` replaces one object whole, so no reader sees half an artifact;
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard, TypeVar

from .errors import ConfigError, InputError, OutputError
from .limits import Limits

R = TypeVar("R")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_COPY_BLOCK = 4 * 1024 * 1024
#: Object stores: a "folder" is a key prefix that needs no creating, and the first part of the path is
#: a bucket that must exist (creating one because of a typo in a URL would be a surprise).
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})


def is_remote(location: str | os.PathLike[str]) -> TypeGuard[str]:
    """A URL with a scheme other than ``file``: staged through fsspec. Only text can be one (a Path
    would have folded the ``//``), so a caller may treat a location it says yes to as ``str``."""
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


def filesystem_of(url: str) -> tuple[Any, str]:
    """fsspec's filesystem and path for ``url``; a clear message when its backend is missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        hint = " (install the [s3] extra: .venv/bin/pip install -e '.[s3]')" if scheme in ("s3", "s3a") else ""
        raise ConfigError(f"{url}: no storage backend for {scheme}:// is installed{hint}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a backend's own errors (bad options, credentials) are settings
        raise ConfigError(f"{url}: {store_error(exc)}") from None


def store_error(exc: BaseException) -> str:
    """A backend error in one line: its type (botocore's are not OSErrors) and message."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def protocol_of(fs: Any) -> str:
    """The filesystem's protocol (``s3``, ``file``, ...): fsspec gives one name or several."""
    protocol = fs.protocol
    return str(protocol[0] if isinstance(protocol, (tuple, list)) else protocol)


@contextmanager
def staged_input(url: str, limits: Limits | None = None) -> Iterator[StagedInput]:
    """Download ``url`` into a private folder for the run; removed afterwards whatever happens.

    Raises :class:`InputError` naming the URL when the object is missing, cannot be read, or is
    larger than ``KVONCE_MAX_DECOMPRESSED_BYTES`` (checked before anything is downloaded), and
    :class:`OutputError` when the local copy cannot be written (a full disk is not the input's fault).
    """
    limits = limits or Limits()
    fs, path = filesystem_of(url)
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise InputError(url, "no such object") from None
    except Exception as exc:  # noqa: BLE001 - botocore and friends raise their own types
        raise InputError(url, f"cannot read: {store_error(exc)}") from None
    if size is not None and size > limits.max_decompressed_bytes:
        raise InputError(url, f"{size} bytes is more than KVONCE_MAX_DECOMPRESSED_BYTES "
                              f"({limits.max_decompressed_bytes})")
    folder = Path(tempfile.mkdtemp(prefix="kvonce-input-"))
    local = folder / (PurePosixPath(path).name or "payload")
    try:
        with open(local, "wb") as copy:
            try:
                source = fs.open(path, "rb")
            except IsADirectoryError:
                raise InputError(url, "is a folder, not a trace file") from None
            except Exception as exc:  # noqa: BLE001
                raise InputError(url, f"cannot read: {store_error(exc)}") from None
            with source:
                while True:
                    try:
                        block = source.read(_COPY_BLOCK)
                    except Exception as exc:  # noqa: BLE001
                        raise InputError(url, f"cannot read: {store_error(exc)}") from None
                    if not block:
                        break
                    try:
                        copy.write(block)
                    except OSError as exc:
                        raise OutputError(f"cannot copy {url} to {local}: {exc.strerror or exc}") from None
        yield StagedInput(url, local)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def staged_reports(url: str) -> Iterator[Path]:
    """A private local folder for a run whose reports go to ``url`` (publish them with :func:`publish`)."""
    filesystem_of(url)  # a missing backend is a configuration error before the run, not after it
    folder = Path(tempfile.mkdtemp(prefix="kvonce-reports-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(folder: Path, url: str, names: Sequence[str]) -> None:
    """Upload the artifacts ``names`` (in publish order, the validation report last) in ``folder`` to ``url``.

    Order: the earlier run's report is removed first (so no report ever describes a mix of two
    runs' files), then this run's data files are uploaded and the earlier run's files this run did
    not write are removed, then the report. A run that wrote none of ``names`` (a domain absent from
    the payload) thus removes an earlier run's files and publishes no report. Raises :class:`OutputError` naming the object when the
    store refuses a write, and for a bucket that does not exist (it is not created).
    """
    fs, root = filesystem_of(url)
    root = root.rstrip("/")
    *data_files, report_name = names
    report = f"{root}/{report_name}"
    target = root
    try:
        if protocol_of(fs) in OBJECT_STORES:
            bucket = target = root.split("/", 1)[0]
            try:
                fs.info(bucket)  # raises what went wrong; exists() would say False for a store it cannot reach
            except FileNotFoundError:
                raise OutputError(f"cannot write reports to {url}: the bucket {bucket} does not exist") from None
        else:
            fs.makedirs(root, exist_ok=True)
        if fs.exists(report):
            target = report
            fs.rm_file(report)
        for name in data_files:
            target = f"{root}/{name}"
            if (folder / name).is_file():
                fs.put_file(str(folder / name), target)
            elif fs.exists(target):
                fs.rm_file(target)  # an earlier run's, not described by the report to come
        target = report
        if (folder / report_name).is_file():
            fs.put_file(str(folder / report_name), report)
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore and friends raise their own types
        raise OutputError(f"cannot write {target} in {url}: {store_error(exc)}") from None


def restore(folder: Path, url: str, names: Sequence[str]) -> list[str]:
    """Download the files ``names`` published at ``url`` that ``folder`` lacks; returns those fetched.

    For a step that runs apart from the step that wrote its input (another process or machine): it
    reads what was published, never a half-written file (each object is whole). A name not published
    is left out. Raises :class:`OutputError` naming the object when the store cannot be read.
    """
    fs, root = filesystem_of(url)
    root = root.rstrip("/")
    fetched = []
    for name in names:
        local = folder / name
        if local.is_file():
            continue
        target = f"{root}/{name}"
        try:
            if not fs.exists(target):
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(target, str(local))
        except Exception as exc:  # noqa: BLE001 - botocore and friends raise their own types
            raise OutputError(f"cannot read {target} in {url}: {store_error(exc)}") from None
        fetched.append(name)
    return fetched


def run_staged(input_path: str | os.PathLike[str], output_dir: str | os.PathLike[str],
               run: Callable[[str | os.PathLike[str], Path], R], *, limits: Limits | None = None,
               report_input_error: Callable[[InputError, Path], None], published: Sequence[str]) -> R:
    """``run(source, out)`` with URLs staged: a remote input is downloaded first (an object that
    cannot be read is reported by ``report_input_error`` like any unusable input), a remote report
    folder is a private local one whose files ``published`` (in order, the report last) are published
    when the run ends, whatever its verdict, also when the input was unusable. Local paths (and
    ``file://``) pass through untouched."""
    out_text = os.fspath(output_dir)
    remote_out = out_text if is_remote(out_text) else None
    with ExitStack() as stack:
        out = stack.enter_context(staged_reports(remote_out)) if remote_out else local_path(output_dir)
        source: str | os.PathLike[str] = input_path
        try:
            if is_remote(input_path):
                try:
                    source = stack.enter_context(staged_input(input_path, limits))
                except InputError as error:
                    report_input_error(error, out)
                    raise
            elif isinstance(input_path, str) and input_path.lower().startswith("file://"):
                source = local_path(input_path)
            result = run(source, out)
        except InputError as error:
            if remote_out and (out / published[-1]).is_file():
                try:
                    publish(out, remote_out, published)
                except OutputError as output_error:
                    error.add_note(f"no report published: {output_error}")
            raise
        if remote_out:
            publish(out, remote_out, published)
        return result


# --- single objects: what the drop graphs and the cross-payload store read and replace -------------
#
# The drop graphs' reports (one folder per payload) and the store are read back by later runs: a
# partition's key facts, a few lines of its events, the store's reset record. These helpers read or
# write one object each. Store errors are :class:`OutputError` naming the object (the run's reports
# location is unusable, exit 2), never a verdict.


class PublishConflict(OutputError):
    """A conditional write lost: the object was replaced (or created) by someone else since it was read."""


def join(location: str, *parts: str) -> str:
    """``location/part/...`` for a URL (a ``/`` between each, never doubled)."""
    return "/".join([location.rstrip("/"), *(part.strip("/") for part in parts)])


def read_bytes(url: str) -> bytes | None:
    """The whole object at ``url`` (one ``GET``), or None when there is none."""
    fs, path = filesystem_of(url)
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - botocore and friends raise their own types
        raise OutputError(f"cannot read {url}: {store_error(exc)}") from None


def read_many(urls: Sequence[str]) -> dict[str, bytes | None]:
    """Each object of ``urls`` whole (one ``GET`` each, sent concurrently by an async backend such as
    s3fs, in fsspec's batches), None for one that does not exist. All under one store (the first URL's
    settings are used). Raises :class:`OutputError` naming the first object that could not be read."""
    if not urls:
        return {}
    fs, _ = filesystem_of(urls[0])
    paths = [fs._strip_protocol(url) for url in urls]
    try:
        found = fs.cat(paths, on_error="return")
    except Exception as exc:  # noqa: BLE001
        raise OutputError(f"cannot read {urls[0]}: {store_error(exc)}") from None
    if not isinstance(found, dict):  # one path: fsspec gives the bytes themselves
        found = {paths[0]: found}
    out: dict[str, bytes | None] = {}
    for url, path in zip(urls, paths):
        value = found.get(path)
        if isinstance(value, FileNotFoundError):
            out[url] = None
        elif isinstance(value, BaseException):
            raise OutputError(f"cannot read {url}: {store_error(value)}")
        else:
            out[url] = None if value is None else bytes(value)
    return out


def version_of(url: str) -> str | None:
    """The object's ETag (its version, for :func:`put_bytes`'s condition), or None when there is none.

    Asked of the store itself (one ``HEAD``), not of fsspec's listing cache, which may be older."""
    fs, path = filesystem_of(url)
    try:
        fs.invalidate_cache(path)
        info = fs.info(path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001
        raise OutputError(f"cannot read {url}: {store_error(exc)}") from None
    if info.get("type") == "directory":
        return None
    etag = info.get("ETag") or info.get("etag")
    return str(etag) if etag else ""


def supports_conditional_put(url: str) -> bool:
    """Whether :func:`put_bytes` can make its write conditional at ``url``: S3 (``If-Match`` and
    ``If-None-Match`` on ``PutObject``, on AWS since 2024 and in moto). Other backends write unconditionally."""
    fs, _ = filesystem_of(url)
    return protocol_of(fs) in ("s3", "s3a")


_ABSENT = object()


def put_bytes(url: str, data: bytes, *, expect: str | None | object = _ABSENT) -> None:
    """Replace the object at ``url`` with ``data`` in one ``PUT`` (a reader sees the old object or the new).

    ``expect``: the ETag the object must still have (:func:`version_of` when it was read), or None for
    "must not exist yet"; on S3 the write is then conditional (``If-Match`` / ``If-None-Match: *``) and
    raises :class:`PublishConflict` when another writer got there first, instead of overwriting its
    object. On a backend without conditional writes (:func:`supports_conditional_put`) ``expect`` is
    ignored. Raises :class:`OutputError` naming the object when the store refuses.
    """
    fs, path = filesystem_of(url)
    condition: dict[str, Any] = {}
    if expect is not _ABSENT and supports_conditional_put(url):
        condition = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": str(expect)}
    # with a condition, one PutObject whatever the size: a multipart upload would not carry it
    options = {"chunksize": max(len(data), 1), **condition} if condition else {}
    try:
        fs.pipe_file(path, data, **options)
    except Exception as exc:  # noqa: BLE001
        if condition and _precondition_failed(exc):
            state = "was created" if expect is None else "was replaced"
            raise PublishConflict(f"cannot write {url}: it {state} by another writer since this run read it "
                                  f"(a conditional write, {next(iter(condition))}); nothing was overwritten") from None
        raise OutputError(f"cannot write {url}: {store_error(exc)}") from None
    finally:
        fs.invalidate_cache(path)


def _precondition_failed(exc: BaseException) -> bool:
    """Whether the store answered HTTP 412 (``PreconditionFailed``): s3fs turns it into a FileExistsError
    (``If-None-Match``) or an OSError (``If-Match``) raised from botocore's ClientError, which has the code."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if error.get("Code") == "PreconditionFailed" or status == 412:
                return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def open_read(url: str, block_size: int = _COPY_BLOCK) -> Iterator[Any]:
    """The object at ``url`` as a binary file streamed in ``block_size`` range reads (``GET`` with
    ``Range``), so a reader that stops early fetches only the blocks it read. FileNotFoundError when
    there is none; :class:`OutputError` naming the object for other store errors."""
    fs, path = filesystem_of(url)
    try:
        handle = fs.open(path, "rb", block_size=block_size)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise OutputError(f"cannot read {url}: {store_error(exc)}") from None
    with handle:
        yield handle


def list_files(url: str) -> list[str]:
    """Every object under ``url``, as paths relative to it (one listing: a request per 1,000 objects)."""
    fs, root = filesystem_of(url)
    root = root.rstrip("/")
    try:
        fs.invalidate_cache(root)
        found = fs.find(root)
    except FileNotFoundError:
        return []
    except Exception as exc:  # noqa: BLE001
        raise OutputError(f"cannot list {url}: {store_error(exc)}") from None
    return sorted(str(path)[len(root) + 1:] for path in found if str(path).startswith(root + "/"))
