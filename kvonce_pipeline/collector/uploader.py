"""Uploading the collector's finished payload files to a drop folder URL (``--drop-dir s3://bucket/drops``).

The collector's durability rests on a local folder: the journals are fsynced before a request is
answered, batches appear by rename, and a killed collector's journals are written out at the next
start (:mod:`kvonce_pipeline.collector.drop_batch`). None of that has an object-store equivalent, so with
a drop folder URL the collector keeps writing exactly as before into a local *spool* folder, and this
uploader moves each finished payload file to the URL:

* one file, one object: ``<url>/<file name>``, uploaded whole (a single ``PUT`` or a multipart upload,
  visible only once complete, so the sensor never lists half a payload);
* the local file is removed only after its upload succeeded: a crash in between leaves it in the spool,
  and the next start uploads it again under the same name with the same bytes (the same ETag, which
  the sensor's cursor already knows: no second run, and the content would be recognised anyway);
* leftovers of an earlier run (files not uploaded, journals written out at recovery) are uploaded at
  start-up, before new data arrives;
* only finished payload files move: dot-files (the writer's temporaries, the journals) stay;
* an upload that fails is kept and retried every ``interval`` seconds, in name order (arrival order),
  and the error is logged once until an upload succeeds again. The spool folder is the buffer.

One collector per prefix (or per scope, ``<url>/<scope>``): names are the collector's own
``otlp-<UTC time>-<seq>.pb``, and an object store has no "create if absent" that every backend keeps.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ..engine.drops import is_ignored_name

log = logging.getLogger("kvonce.collector")


class Uploader:
    """Moves the finished payload files of ``spool`` to ``url``, one object each (see the module)."""

    def __init__(self, spool: Path, url: str, *, interval: float = 1.0) -> None:
        self.spool = spool
        self.url = url.rstrip("/")
        self.interval = interval
        self.uploaded = 0
        self.last_error: str | None = None
        self._fs: Any = None
        self._root = ""
        self._lock = threading.Lock()  # one pass at a time: files go in name (arrival) order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def filesystem_of(self) -> tuple[Any, str]:
        if self._fs is None:
            from ..engine.storage import filesystem_of

            self._fs, root = filesystem_of(self.url)
            self._root = root.rstrip("/")
        return self._fs, self._root

    def check(self) -> None:
        """Fail now, not at the first upload, when the URL has no backend or bad settings (ConfigError)."""
        self.filesystem_of()

    def pending(self) -> list[Path]:
        """The finished payload files waiting in the spool, in name (arrival) order."""
        try:
            return sorted(p for p in self.spool.iterdir() if not is_ignored_name(p.name) and p.is_file())
        except FileNotFoundError:
            return []

    def upload_pending(self) -> int:
        """Upload what waits, in order; stops at the first failure (kept, retried). Returns how many moved."""
        from ..engine.storage import store_error

        moved = 0
        with self._lock:
            fs, root = self.filesystem_of()
            for path in self.pending():
                target = f"{root}/{path.name}"
                try:
                    fs.put_file(str(path), target)
                except Exception as exc:  # noqa: BLE001 - botocore and friends raise their own types
                    error = f"cannot upload {path.name} to {self.url}: {store_error(exc)}"
                    if self.last_error is None:
                        log.error("kvonce collector: %s; the file stays in %s and is retried", error, self.spool)
                    self.last_error = error
                    return moved
                path.unlink()  # only now: the object is complete in the store
                moved += 1
                self.uploaded += 1
                log.info("kvonce collector: uploaded %s to %s/%s", path.name, self.url, path.name)
        if moved and self.last_error is not None:
            log.warning("kvonce collector: uploading payload files again")
            self.last_error = None
        return moved

    def start(self) -> "Uploader":
        """Upload the spool's leftovers now, then keep uploading in a background thread."""
        self.upload_pending()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kvonce-drop-upload", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.upload_pending()

    def stop(self) -> None:
        """Stop the thread and upload what is left (the last batch); what fails stays in the spool."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.upload_pending()
