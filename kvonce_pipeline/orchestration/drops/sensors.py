"""The drop-folder sensor: every settled payload becomes one partition and exactly one run.

Exactly once, by three independent guards:

1. the **run key** is the partition key (content-addressed), and Dagster never launches a second
   run for a run key this sensor already used, whatever the cursor says;
2. the **cursor** remembers each file's ``(size, mtime)`` (an object's ``(size, ETag)``) and partition, so a file is hashed and
   considered once, across ticks and daemon restarts (Dagster stores the cursor with the tick);
3. content that is **already registered** as a partition (same sha256 prefix, under any name) is
   not requested again: a copy under another name, a file put back after removal, a cursor reset.

Partitions are registered and runs requested in one ``SensorResult``, which Dagster applies all or
nothing. An unreadable payload's run fails once (its error names the file and line or span, and
its partition folder gets an envelope with status ``unusable``); the guards above mean it is never
retried, and the file itself is never touched. Work per tick is bounded (files and bytes hashed, and the
inflated bytes the domain scans read: :data:`MAX_SCANNED_BYTES_PER_TICK`) so a tick stays far inside the
60 s sensor timeout; what is left waits for the next tick, in name order, and is taken exactly once.

Per domain: each new payload is scanned once for the installed domains' attribute names
(:func:`~kvonce_pipeline.orchestration.drops.domains.mentioned_within`, a byte scan that stops
as soon as every name was seen). A payload naming no generic domain gets exactly the KvOnce run it
always got (``kvonce_drop_job``); any other gets one ``trace_drop_job`` run limited to the drop groups
of the domains it carries, KvOnce's drop graph included only if it carries KvOnce spans (see
:mod:`kvonce_pipeline.orchestration.drops.domains`). Same partition, run key and tags either way,
plus ``kvonce/domains``. An NDJSON event log names no domain: one named ``<stem>.<domain>.ndjson`` is that
domain's (:func:`~kvonce_pipeline.orchestration.drops.domains.ndjson_drop_domain`), any other is KvOnce's.

The drop folder may be a URL (``KVONCE_DROP_DIR=s3://bucket/drops``): the same tick over its objects
(:mod:`kvonce_pipeline.engine.drops.objects`). Each new object is downloaded once, into a folder private to
the tick, in the read that hashes it; the domain scan reads that copy, and the folder is removed when the
tick ends. So the tick's hashing budget (``MAX_BYTES_PER_TICK``) also bounds what it downloads and keeps on
local disk, and the scan budget holds as for a file. An object the cursor knows by size and ETag is not
downloaded again.
"""


import os
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
import orjson

from ...engine import drops
from ...engine.errors import InputError
from .assets import (DROP_JUDGED_KEY, PARTITIONS_NAME, TAG_ARRIVED, TAG_BYTES, TAG_NAME, TAG_SCOPE, TAG_SHA, drop_partitions,
                          kvonce_drop_job, kvonce_store_job)
from ..resources import KvonceSettings
from .domains import (TAG_DOMAINS, OverBudget, ScanBudget, mentioned_within, ndjson_drop_domain, selection_for,
                      trace_drop_job)

CURSOR_VERSION = 1


def _interval_seconds() -> int:
    """15 s unless ``KVONCE_DROP_SENSOR_INTERVAL_SECONDS`` says otherwise (clamped to 1..30 s)."""
    raw = os.environ.get("KVONCE_DROP_SENSOR_INTERVAL_SECONDS", "").strip()
    return min(max(int(raw), 1), 30) if raw.isdigit() else 15


#: Seconds between ticks, read when the code location loads (the daemon may tick a little later).
MINIMUM_INTERVAL_SECONDS = _interval_seconds()
MAX_FILES_PER_TICK = 100
MAX_BYTES_PER_TICK = 2 * 1024 * 1024 * 1024
#: Inflated bytes the domain scans of one tick may read (beyond its first file's): a gzip file's scan reads
#: its inflated bytes, which ``MAX_BYTES_PER_TICK`` (file bytes) does not bound.
MAX_SCANNED_BYTES_PER_TICK = 2 * 1024 * 1024 * 1024


def load_cursor(raw: str | None) -> dict[str, Any]:
    """The sensor's memory: ``files`` (name -> [size, mtime_ns, key]), ``refused`` and ``waiting``
    (name -> [size, mtime_ns]; an object's ETag in place of its mtime), and ``store_seen`` (the last validation result the store was asked to fold)."""
    empty: dict[str, Any] = {"v": CURSOR_VERSION, "files": {}, "refused": {}, "waiting": {}, "store_seen": 0}
    if not raw:
        return empty
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return empty
    if not isinstance(data, dict) or data.get("v") != CURSOR_VERSION:
        return empty
    return {**empty, **data}


def _latest_validation_storage_id(instance: dg.DagsterInstance) -> int:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=DROP_JUDGED_KEY), limit=1).records
    return records[0].storage_id if records else 0


def _carried(context: dg.SensorEvaluationContext, found: drops.DropFile, kvonce: KvonceSettings,
             budget: ScanBudget) -> list[str]:
    """The installed domains the payload names, or the one its name names for an NDJSON event log
    (``<stem>.<domain>.ndjson``). A file that cannot be scanned (gone, over a limit, a broken gzip) is
    routed to KvOnce's run, whose failure names the file and what is wrong, as before. Raises
    :class:`OverBudget` when this tick's scan budget runs out in the file."""
    try:
        named = ndjson_drop_domain(found.path, found.name, kvonce.limits(), kvonce.input_format)
        if named is not None:
            return [named]
        return mentioned_within(found.path, kvonce.limits(), budget)
    except (InputError, OSError) as exc:
        why = str(exc).replace(str(found.path), found.location)  # an object's local copy: name the object
        context.log.warning(f"{found.label}: cannot scan for its domains ({why}); routed as a KvOnce payload")
        return []


@dg.sensor(
    name="kvonce_drop_sensor",
    jobs=[kvonce_drop_job, kvonce_store_job, trace_drop_job],
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches KVONCE_DROP_DIR (default drops/): one partition and one run per new payload, limited "
                "to the domains it carries; refolds the cross-payload store after new KvOnce results.",
)
def kvonce_drop_sensor(context: dg.SensorEvaluationContext, kvonce: KvonceSettings) -> dg.SensorResult:
    cursor = load_cursor(context.cursor)
    root = kvonce.drop_root()
    if not isinstance(root, str):
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return dg.SensorResult(skip_reason=f"drop folder {root} cannot be created: {exc.strerror or exc}",
                                   cursor=orjson.dumps(cursor).decode())
    with tempfile.TemporaryDirectory(prefix="kvonce-drop-tick-") as staging:
        try:
            return _tick(context, kvonce, cursor, root, Path(staging))
        except InputError as error:  # a drop folder URL that cannot be listed: said on the tick, retried next one
            return dg.SensorResult(skip_reason=f"drop folder {error}", cursor=orjson.dumps(cursor).decode())


def _tick(context: dg.SensorEvaluationContext, kvonce: KvonceSettings, cursor: dict[str, Any],
          root: Path | str, staging: Path) -> dg.SensorResult:
    """One tick over ``root``; a URL's new objects are copied into ``staging`` (removed after the tick)."""
    known = {name: (entry[0], entry[1]) for name, entry in cursor["files"].items()}
    waited = {name: (entry[0], entry[1]) for name, entry in cursor["waiting"].items()}
    scan = drops.scan_drop_dir(root, limits=kvonce.limits(), known=known, waited=waited,
                               settle_seconds=kvonce.drop_settle_seconds, max_files=MAX_FILES_PER_TICK,
                               max_bytes=MAX_BYTES_PER_TICK, stage_dir=staging)
    files = {name: cursor["files"][name] for name in scan.unchanged}
    # Content is the identity: the sha256 prefix that ends every key built by drops.partition_key_for.
    # Per scope: the same bytes dropped into two scopes are two systems' payloads.
    by_content = {(drops.scope_of(key), key[-drops.SHA_PREFIX:]): key
                  for key in context.instance.get_dynamic_partitions(PARTITIONS_NAME)}
    new_keys: list[str] = []
    requests: list[dg.RunRequest] = []
    budget = ScanBudget(MAX_SCANNED_BYTES_PER_TICK)
    #: new files left for the next tick once the scan budget ran out (name -> [size, mtime_ns]): not
    #: registered, not in ``files``, so the next tick takes them again (as settled: ``waiting``)
    deferred: dict[str, list[int | str]] = {}
    for found in scan.ready:
        key = found.partition_key
        content = (found.scope, found.sha256[:drops.SHA_PREFIX])
        seen_as = by_content.get(content)
        if seen_as is not None:
            files[found.label] = [*found.fingerprint(), seen_as]
            context.log.info(f"{found.label}: same content as partition {seen_as}, already processed; no new run")
            continue
        if deferred:  # in name order: once one waits, the rest wait with it
            deferred[found.label] = list(found.fingerprint())
            continue
        try:
            carried = _carried(context, found, kvonce, budget)
        except OverBudget:
            deferred[found.label] = list(found.fingerprint())
            continue
        files[found.label] = [*found.fingerprint(), key]
        by_content[content] = key
        new_keys.append(key)
        tags = {TAG_NAME: found.name, TAG_SHA: found.sha256, TAG_BYTES: str(found.size),
                TAG_ARRIVED: found.arrived_at, TAG_SCOPE: found.scope}
        selection = selection_for(carried)
        if selection is None:  # no generic domain: KvOnce's run, exactly as before the domains existed
            requests.append(dg.RunRequest(job_name=kvonce_drop_job.name, partition_key=key, run_key=key, tags=tags))
        else:
            requests.append(dg.RunRequest(job_name=trace_drop_job.name, partition_key=key, run_key=key,
                                          asset_selection=selection.assets, asset_check_keys=selection.checks,
                                          tags={**tags, TAG_DOMAINS: ",".join(carried)}))
        context.log.info(f"{found.label}: new payload -> partition {key} (scope {found.scope}, {found.size} bytes; "
                         f"domains: {', '.join(carried) or 'none found, read as kvonce'})"
                         + ("" if carried else "; an NDJSON log of another domain is named <stem>.<domain>.ndjson"))
    refused: dict[str, list[int | str]] = {}
    for refusal in scan.refused:
        fingerprint = list(refusal.fingerprint())
        if cursor["refused"].get(refusal.name) != fingerprint:
            context.log.warning(f"refused {refusal.name}: {refusal.reason}")
        refused[refusal.name] = fingerprint
    store_seen = int(cursor.get("store_seen") or 0)
    latest = _latest_validation_storage_id(context.instance)
    if latest > store_seen:
        requests.append(dg.RunRequest(job_name=kvonce_store_job.name, run_key=f"store-{latest}"))
        store_seen = latest
    if deferred:
        context.log.info(f"{len(deferred)} new file(s) wait for the next tick: this tick's domain scans read "
                         f"{budget.read} inflated bytes (budget {MAX_SCANNED_BYTES_PER_TICK} after the first file)")
    waiting = {name: list(fingerprint) for name, fingerprint in scan.seen_waiting.items()} | deferred
    new_cursor = orjson.dumps({"v": CURSOR_VERSION, "files": files, "refused": refused, "waiting": waiting,
                               "store_seen": store_seen}).decode()
    if not requests:
        note = f"; {len(scan.waiting)} file(s) not settled yet" if scan.waiting else ""
        note += f"; {len(deferred)} file(s) wait for the next tick's scan budget" if deferred else ""
        return dg.SensorResult(skip_reason=f"no new payload in {root}{note}", cursor=new_cursor)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[drop_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=new_cursor,
    )
