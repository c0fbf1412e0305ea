"""The drop folder's core rules: partition keys, what a scan reads or refuses, finding a payload again."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from kvonce_pipeline.engine import drops
from kvonce_pipeline.engine.errors import InputError
from kvonce_pipeline.engine.limits import Limits

LINE = b'{"timestamp":"2025-10-04T06:00:00.000Z","type":"success","key":"alpha","value":"v1"}\n'
LATER = time.time_ns() + 3600 * 1_000_000_000  # "now" for scans: every file has settled


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def drop(folder: Path, name: str, data: bytes = LINE) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("name", "stem"), [
    ("otlp-20251004T060000-000001.pb", "otlp-20251004T060000-000001"),
    ("trace.json.gz", "trace.json"),
    ("my file (1).json", "myfile1"),
    ("ünïcode–name.ndjson", "ncodename"),
    ("..json", "json"),
    ("noext", "noext"),
    ("$$$.json", "payload"),
    ("a" * 200 + ".json", "a" * drops.MAX_STEM),
])
def test_stem_is_the_name_without_its_last_extension_reduced_to_safe_characters(name: str, stem: str) -> None:
    assert drops.stem_of(name) == stem
    key = drops.partition_key_for(name, sha(b"x"))
    assert key == f"{stem}-{sha(b'x')[:12]}"
    assert drops.is_partition_key(key)
    assert "/" not in key and key not in (".", "..")


@pytest.mark.parametrize("key", ["../evil", "a/b", "", "x-123", "x-" + "A" * 12, ".hidden-0123456789ab",
                                 "a" * 90 + "-0123456789ab"])
def test_keys_not_built_here_are_rejected(key: str) -> None:
    assert not drops.is_partition_key(key)


def test_partition_key_needs_a_real_digest() -> None:
    with pytest.raises(ValueError):
        drops.partition_key_for("a.json", "not-a-sha")


def test_scan_reads_settled_files_and_skips_temporary_and_dot_files(tmp_path: Path) -> None:
    drop(tmp_path, "good.ndjson")
    for name in (".otlp-1.pb.x1y2.tmp", ".hidden", "upload.part", "copy.json.tmp", "download.crdownload", "edit~"):
        drop(tmp_path, name, b"half")
    result = drops.scan_drop_dir(tmp_path, now_ns=LATER)
    assert [f.name for f in result.ready] == ["good.ndjson"]
    assert result.ready[0].sha256 == sha(LINE)
    assert result.ready[0].partition_key == f"good-{sha(LINE)[:12]}"
    assert result.ignored == 6
    assert result.refused == []


def test_a_file_waits_until_it_has_settled(tmp_path: Path) -> None:
    path = drop(tmp_path, "fresh.ndjson")
    mtime = path.stat().st_mtime_ns
    early = drops.scan_drop_dir(tmp_path, now_ns=mtime + 500_000_000, settle_seconds=2)
    assert early.ready == [] and early.waiting == ["fresh.ndjson"]
    late = drops.scan_drop_dir(tmp_path, now_ns=mtime + 2_000_000_000, settle_seconds=2)
    assert [f.name for f in late.ready] == ["fresh.ndjson"]


def test_a_file_with_a_future_mtime_settles_once_it_stops_changing(tmp_path: Path) -> None:
    path = drop(tmp_path, "skewed.ndjson")
    future = time.time_ns() + 10 * 365 * 24 * 3600 * 1_000_000_000
    os.utime(path, ns=(future, future))
    first = drops.scan_drop_dir(tmp_path)
    assert first.ready == [] and first.seen_waiting == {"skewed.ndjson": (len(LINE), future)}
    second = drops.scan_drop_dir(tmp_path, waited=first.seen_waiting)
    assert [f.name for f in second.ready] == ["skewed.ndjson"]
    path.write_bytes(LINE + LINE)  # still being written: changed since it was seen waiting
    os.utime(path, ns=(future + 1, future + 1))
    assert drops.scan_drop_dir(tmp_path, waited=first.seen_waiting).ready == []


def test_known_files_are_not_hashed_again_but_a_rewrite_is(tmp_path: Path) -> None:
    path = drop(tmp_path, "a.ndjson")
    first = drops.scan_drop_dir(tmp_path, now_ns=LATER).ready[0]
    again = drops.scan_drop_dir(tmp_path, now_ns=LATER, known={"a.ndjson": first.fingerprint()})
    assert again.ready == [] and again.unchanged == ["a.ndjson"]
    path.write_bytes(LINE + LINE)
    os.utime(path, ns=(first.mtime_ns + 10**9, first.mtime_ns + 10**9))
    changed = drops.scan_drop_dir(tmp_path, now_ns=LATER, known={"a.ndjson": first.fingerprint()})
    assert [f.partition_key for f in changed.ready] == [f"a-{sha(LINE + LINE)[:12]}"]
    assert changed.ready[0].partition_key != first.partition_key


def test_symlinks_out_of_the_folder_are_refused_inside_ones_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "drops"
    folder.mkdir()
    secret = drop(tmp_path, "secret.ndjson")
    (folder / "escape.ndjson").symlink_to(secret)
    (folder / "up.ndjson").symlink_to(Path("..") / "secret.ndjson")
    inside = drop(folder, "inside.ndjson")
    (folder / "alias.ndjson").symlink_to(inside.name)
    result = drops.scan_drop_dir(folder, now_ns=LATER)
    assert sorted(f.name for f in result.ready) == ["alias.ndjson", "inside.ndjson"]
    reasons = {r.name: r.reason for r in result.refused}
    assert set(reasons) == {"escape.ndjson", "up.ndjson"}
    assert all("outside the drop folder" in reason for reason in reasons.values())


def test_files_above_the_size_limit_folders_and_fifos_are_refused(tmp_path: Path) -> None:
    drop(tmp_path, "big.ndjson", LINE * 10)
    drop(tmp_path, "small.ndjson")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)  # a scope's own subfolders are not scanned
    (tmp_path / "not a scope").mkdir()
    (tmp_path / "default").mkdir()  # the default scope is the drop folder itself
    os.mkfifo(tmp_path / "pipe.ndjson")
    result = drops.scan_drop_dir(tmp_path, limits=Limits(max_drop_file_bytes=len(LINE) * 2), now_ns=LATER)
    assert [f.name for f in result.ready] == ["small.ndjson"]
    reasons = {r.name: r.reason for r in result.refused}
    assert "KVONCE_MAX_DROP_FILE_BYTES" in reasons["big.ndjson"]
    assert "subfolders are not scanned" in reasons["sub/deeper"]
    assert "not a store scope" in reasons["not a scope"] and "not a store scope" in reasons["default"]
    assert "not a regular file" in reasons["pipe.ndjson"]


def test_a_scope_subfolder_gives_its_files_scoped_partition_keys(tmp_path: Path) -> None:
    drop(tmp_path, "top.ndjson")
    (tmp_path / "orders").mkdir()
    drop(tmp_path / "orders", "top.ndjson")  # the same bytes in another scope: another system's payload
    result = drops.scan_drop_dir(tmp_path, now_ns=LATER)
    by_label = {f.label: f for f in result.ready}
    assert set(by_label) == {"top.ndjson", "orders/top.ndjson"}
    default, scoped = by_label["top.ndjson"], by_label["orders/top.ndjson"]
    assert default.scope == "default" and drops.KEY_PATTERN.match(default.partition_key)
    assert scoped.partition_key == "orders~" + default.partition_key
    assert drops.scope_of(scoped.partition_key) == "orders" and drops.scope_of(default.partition_key) == "default"
    assert drops.split_partition_key(scoped.partition_key) == drops.split_partition_key(default.partition_key)
    found = drops.locate_payload(tmp_path, scoped.partition_key, name="top.ndjson")
    assert found.path == tmp_path / "orders" / "top.ndjson" and found.scope == "orders"
    with pytest.raises(ValueError):
        drops.partition_key_for("x.json", default.sha256, "../etc")


def test_work_per_scan_is_bounded_and_the_rest_waits(tmp_path: Path) -> None:
    for index in range(5):
        drop(tmp_path, f"p{index}.ndjson", LINE * (index + 1))
    first = drops.scan_drop_dir(tmp_path, now_ns=LATER, max_files=2)
    assert [f.name for f in first.ready] == ["p0.ndjson", "p1.ndjson"]
    assert first.waiting == ["p2.ndjson", "p3.ndjson", "p4.ndjson"]
    known = {f.name: f.fingerprint() for f in first.ready}
    second = drops.scan_drop_dir(tmp_path, now_ns=LATER, max_files=2, known=known)
    assert [f.name for f in second.ready] == ["p2.ndjson", "p3.ndjson"]


def test_a_missing_folder_scans_as_empty(tmp_path: Path) -> None:
    result = drops.scan_drop_dir(tmp_path / "nope", now_ns=LATER)
    assert (result.ready, result.refused, result.waiting) == ([], [], [])


def test_locate_finds_the_payload_by_content_not_by_the_hint(tmp_path: Path) -> None:
    drop(tmp_path, "a.ndjson")
    key = drops.partition_key_for("a.ndjson", sha(LINE))
    found = drops.locate_payload(tmp_path, key, name="../../etc/passwd", sha256=sha(LINE))
    assert found.name == "a.ndjson" and found.sha256 == sha(LINE)
    (tmp_path / "a.ndjson").rename(tmp_path / "renamed.ndjson")  # a copy under another name still counts
    assert drops.locate_payload(tmp_path, key, name="a.ndjson").name == "renamed.ndjson"


def test_locate_refuses_changed_content_and_foreign_keys(tmp_path: Path) -> None:
    path = drop(tmp_path, "a.ndjson")
    key = drops.partition_key_for("a.ndjson", sha(LINE))
    path.write_bytes(LINE + LINE)
    with pytest.raises(InputError, match="rewritten after it was seen"):
        drops.locate_payload(tmp_path, key, name="a.ndjson", sha256=sha(LINE))
    with pytest.raises(InputError, match="not a drop partition key"):
        drops.locate_payload(tmp_path, "../evil", name="a.ndjson")
    with pytest.raises(InputError, match="does not belong"):
        drops.locate_payload(tmp_path, key, sha256=sha(b"other"))


def test_a_file_name_names_an_ndjson_logs_domain_as_its_next_to_last_part() -> None:
    installed = {"kvonce", "inventory"}
    assert drops.domain_in_name("orders.inventory.ndjson", installed) == "inventory"
    assert drops.domain_in_name("orders.inventory.NDJSON.GZ", installed) == "inventory"
    assert drops.domain_in_name("a.b.kvonce.jsonl", installed) == "kvonce"
    for name in ["inventory.ndjson", "orders.ndjson", "orders.billing.ndjson", "orders.inventory", ".x.inventory.ndjson",
                 "orders.Inventory.ndjson"]:
        assert drops.domain_in_name(name, installed) is None, name
