"""Run settings as a Dagster resource, so they show (and can be changed) in the launchpad."""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from ..engine import artifacts, storage
from ..engine.errors import InputError
from ..domains.kvonce import artifacts as kvonce_artifacts
from ..engine.limits import Limits
from ..domains.kvonce.validation import DEFAULT_MAX_RETRIES


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class KvonceSettings(dg.ConfigurableResource):
    """Where the payload comes from, where reports go, and how strictly to judge.

    Defaults come from ``KVONCE_OTLP_PAYLOAD``, ``KVONCE_REPORTS_DIR``, ``KVONCE_STRICT``,
    ``KVONCE_MAX_RETRIES``, ``KVONCE_DROP_SETTLE_SECONDS`` and ``KVONCE_NDJSON_DOMAIN`` when the code
    location loads (see :meth:`from_env`); the drop folder and reports folder, when not set, follow the
    environment when used.
    """

    payload: str | None = None
    reports_dir: str | None = None
    strict: bool = False
    max_retries: int = DEFAULT_MAX_RETRIES
    input_format: str = "auto"
    #: The folder the drop sensor watches (``KVONCE_DROP_DIR``, read when used, else ``drops/``).
    drop_dir: str | None = None
    #: Seconds a dropped file's mtime must be old before it is read (non-atomic writers finish first).
    drop_settle_seconds: float = 2.0
    #: The domain of an NDJSON event log in ``trace_conformance_job`` and in a materialization from the UI
    #: (``KVONCE_NDJSON_DOMAIN``; ``kvonce conformance --domain``): an event log names no domain. Unset: the
    #: default domain (KvOnce). ``<name>_conformance_job`` reads it as its own domain's whatever this says;
    #: the drop folder ignores it (a dropped log says its domain by name: ``<stem>.<domain>.ndjson``).
    ndjson_domain: str | None = None

    #: A run's staged copies (see :meth:`resolve_payload` and :meth:`trace_dir`). Dagster gives each run
    #: its own copy of the resource, and the CI jobs' in-process executor one copy for the whole run, so
    #: every step of a run shares them; they are removed when that copy goes (:meth:`_stack`).
    _staging: ExitStack | None = PrivateAttr(default=None)
    _staged_input: storage.StagedInput | None = PrivateAttr(default=None)
    _staged_reports: Path | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> "KvonceSettings":
        raw_retries = os.environ.get("KVONCE_MAX_RETRIES", "").strip()
        return cls(
            payload=os.environ.get("KVONCE_OTLP_PAYLOAD") or None,
            reports_dir=os.environ.get("KVONCE_REPORTS_DIR") or None,
            strict=_env_bool("KVONCE_STRICT"),
            max_retries=int(raw_retries) if raw_retries else DEFAULT_MAX_RETRIES,
            input_format=os.environ.get("KVONCE_FORMAT") or "auto",
            drop_settle_seconds=float(os.environ.get("KVONCE_DROP_SETTLE_SECONDS", "").strip() or 2.0),
            ndjson_domain=os.environ.get("KVONCE_NDJSON_DOMAIN", "").strip() or None,
        )

    def reports_location(self) -> str:
        """Where reports go, as given: a local folder or a URL (``s3://bucket/prefix``, any fsspec location)."""
        # the variable as text: a Path would fold a URL's "//" (artifacts.reports_dir() is for local folders)
        return self.reports_dir or os.environ.get("KVONCE_REPORTS_DIR") or str(artifacts.reports_dir())

    def reports_url(self) -> str | None:
        """The reports location when it is a URL (the CI jobs stage it locally and publish), else None."""
        location = self.reports_location()
        return location.rstrip("/") if storage.is_remote(location) else None

    def reports_root(self) -> Path:
        """The local reports folder; for a reports URL, this run's private staging folder (published by
        :meth:`publish`, removed when the run ends)."""
        if self.reports_url() is not None:
            return self._reports_stage()
        return storage.local_path(self.reports_location())

    def trace_dir(self) -> Path:
        return self.reports_root() / "trace"

    def trace_location(self) -> Path | str:
        """``<reports>/trace`` where runs read back what other runs published: the URL's ``/trace`` for a
        reports URL (the drop graphs' key facts and events, the cross-payload store), else the local folder.

        A run writes into :meth:`trace_dir` (for a URL, its private staging folder) and publishes; what
        an earlier run, or a run on another machine, left is read from here, never from the staging."""
        url = self.reports_url()
        return f"{url}/trace" if url is not None else self.trace_dir()

    def published_name(self, path: Path | str) -> str:
        """How a run names one of its files: the URL it is published to when it is in the staging folder
        of a reports URL, else the path itself (so local runs record exactly what they always did)."""
        url = self.reports_url()
        if url is None or self._staged_reports is None:
            return str(path)
        try:
            relative = Path(path).relative_to(self._staged_reports)
        except ValueError:
            return str(path)
        return f"{url}/{relative.as_posix()}"

    def publish(self, folder: Path, names: Sequence[str]) -> str | None:
        """Publish ``names`` (the report last) of the staged ``folder`` to its URL; None for local reports.

        Raises :class:`OutputError` naming the object when the store refuses (see :func:`storage.publish`).
        """
        if self.reports_url() is None:
            return None
        url = self.published_name(folder)
        storage.publish(folder, url, names)
        return url

    def restore(self, folder: Path, names: Sequence[str]) -> list[str]:
        """The published files ``names`` of ``folder`` that this run's staging lacks, downloaded: what an
        earlier step wrote when it ran in another process or on another machine (Dagster's multiprocess
        executor, as for a materialization from the UI). Nothing for local reports."""
        if self.reports_url() is None:
            return []
        return storage.restore(folder, self.published_name(folder), names)

    def payload_label(self, source: Path | str) -> str:
        """How findings, reports and messages name ``source``: the URL for the staged copy of a payload URL."""
        staged = self._staged_input
        if staged is not None and str(source) == os.fspath(staged):
            return staged.url
        return str(source)

    def input_error(self, error: InputError) -> InputError:
        """``error`` naming the payload URL rather than its private copy (the user never saw that path)."""
        staged = self._staged_input
        return error if staged is None else error.naming(os.fspath(staged), staged.url)

    def _stack(self) -> ExitStack:
        """The staged copies' clean-up, run when this run's copy of the resource is collected (right
        after the run, as nothing else holds it) or at the latest when the process exits.

        Why not ``teardown_after_execution``: overriding it makes the resource a context-manager
        resource, which every sensor evaluation and ``build_*_context`` caller would then have to open
        with ``with``; the staged copies need no more than to be removed after the run.
        """
        if self._staging is None:
            self._staging = ExitStack()
            weakref.finalize(self, self._staging.close)
        return self._staging

    def _reports_stage(self) -> Path:
        if self._staged_reports is None:
            url = self.reports_url()
            assert url is not None
            self._staged_reports = self._stack().enter_context(storage.staged_reports(url))
        return self._staged_reports

    def drop_root(self) -> Path | str:
        """The drop folder: a local path, or a URL (``s3://bucket/drops``) kept as text for fsspec."""
        from ..engine.drops import drop_root_of

        return drop_root_of(self.drop_dir) if self.drop_dir else artifacts.drop_location()

    def limits(self) -> Limits:
        return Limits.from_env()

    def resolve_payload(self) -> Path:
        """``payload`` if set, else the bundled sample, else a run of the mock service.

        A payload URL (``s3://...``, any fsspec location) is downloaded once per run into a private
        folder, and every step reads that copy (:meth:`payload_label` names the URL): the bytes judged
        are the bytes fetched, and the object is never written. Raises :class:`InputError` naming the
        URL when it cannot be read (an unusable input, as for a local file).
        """
        if self.payload and storage.is_remote(self.payload):
            if self._staged_input is None or self._staged_input.url != self.payload:
                self._staged_input = self._stack().enter_context(storage.staged_input(self.payload, self.limits()))
            return Path(os.fspath(self._staged_input))
        if self.payload:
            return storage.local_path(self.payload).expanduser().resolve()
        if kvonce_artifacts.BUNDLED_SAMPLE.is_file():
            return kvonce_artifacts.BUNDLED_SAMPLE
        from ..devtools.mock_service import generate_payload

        return generate_payload(self.reports_root() / "mock")
