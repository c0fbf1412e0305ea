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

Several collectors on one prefix (replicas behind one load balancer): on S3 every upload is a
conditional create (``If-None-Match: *``), so a name another collector took first is never
overwritten: the file goes up under a later ``otlp-<UTC time>-<seq>.pb`` instead (the sensor goes by
content, so the name only has to be free), and an object that already holds these very bytes (this
collector's own upload, before a crash kept the file) counts as uploaded. Other backends have no
"create if absent" this code uses: there, run one collector per prefix (or per scope,
``<url>/<scope>``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from ..engine import storage
from ..engine.drops import is_ignored_name
from ..engine.errors import OutputError
from .drop_batch import payload_name

log = logging.getLogger("kvonce.collector")

#: How many later names a file tries when others were taken first (each try is one conditional PUT).
MAX_RENAMES = 8
_SEQ = re.compile(r"-(\d{6})\.pb$")


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
        moved = 0
        with self._lock:
            fs, root = self.filesystem_of()
            conditional = storage.supports_conditional_put(self.url)
            for path in self.pending():
                try:
                    if conditional:
                        name = self._create(path)
                    else:
                        name = path.name
                        fs.put_file(str(path), f"{root}/{name}")
                except Exception as exc:  # noqa: BLE001 - botocore and friends raise their own types
                    error = str(exc) if isinstance(exc, OutputError) else \
                        f"cannot upload {path.name} to {self.url}: {storage.store_error(exc)}"
                    if self.last_error is None:
                        log.error("kvonce collector: %s; the file stays in %s and is retried", error, self.spool)
                    self.last_error = error
                    return moved
                path.unlink()  # only now: the object is complete in the store
                moved += 1
                self.uploaded += 1
                log.info("kvonce collector: uploaded %s to %s/%s", path.name, self.url, name)
        if moved and self.last_error is not None:
            log.warning("kvonce collector: uploading payload files again")
            self.last_error = None
        return moved

    def _create(self, path: Path) -> str:
        """Upload ``path`` as a new object, never over another's (a conditional create); returns its name.

        A name taken by other bytes (another collector's file) moves the file to a later name; a name
        holding these very bytes (this collector's upload, before a crash kept the file) is done. The
        file is read whole: one ``PUT`` carries the condition (a multipart upload would not), and a
        payload file is one batch, far below a ``PUT``'s 5 GB."""
        data = path.read_bytes()
        found = _SEQ.search(path.name)
        seq = int(found.group(1)) if found else 0
        name = path.name
        for _ in range(MAX_RENAMES + 1):
            url = f"{self.url}/{name}"
            try:
                storage.put_bytes(url, data, expect=None)
                return name
            except storage.PublishConflict:
                if storage.read_bytes(url) == data:
                    return name
                log.warning("kvonce collector: %s is another writer's; %s goes up under a later name", url, path.name)
                time.sleep(0.002)  # a later millisecond: a new name
                name = payload_name(time.time_ns(), seq)
        raise OutputError(f"cannot upload {path.name} to {self.url}: {MAX_RENAMES + 1} names in a row were "
                          "taken by other writers")

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
