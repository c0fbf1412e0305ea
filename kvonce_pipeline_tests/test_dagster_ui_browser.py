"""The Dagster UI in a real browser: each dropped payload shows its own verdict, on its partition.

Starts the real ``dagster dev`` on loopback (the helpers of :mod:`.test_dagster_dev_e2e`), drops a
payload that violates KvOnce and, once its run has failed, a valid one (the order in which a
verdict not tied to its partition turned the violating payload green), then reads what the UI
renders in headless Chromium (Debian's ``chromium``, driven by Playwright; no browser is
downloaded): the drops lineage, the validation asset's Partitions tab and partition pages, the
verdict check's per-partition view, the catalog, and the failed run's page; and asks the GraphQL
API the same questions. With ``KVONCE_SCREENSHOT_DIR`` set it saves the README's screenshots there.
Chromium starts while ``dagster dev`` loads; the sensor ticks on every pass of the daemon's loop and
the run queue is polled every second, as in :mod:`.test_dagster_dev_e2e`. About 40 s on a quiet
two-core machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_dagster_dev_e2e import UP_POLL_S, Dagit, _drop, _finished, _key, _wait, running_dagster_dev

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: Read at import: the suite's autouse fixture clears every KVONCE_* variable before a test runs.
SCREENSHOT_DIR = os.environ.get("KVONCE_SCREENSHOT_DIR")
CHROMIUM = shutil.which("chromium")
#: What Chromium needs to run headless as root in a container, with nothing of its own going online.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEADLINE_S = 300
VALIDATION = "drops/kvonce_validation"

VALID = (b'{"timestamp":"2025-10-04T06:00:00.000Z","type":"success","key":"alpha","value":"v1"}\n'
         b'{"timestamp":"2025-10-04T06:00:01.000Z","type":"retry","key":"beta"}\n'
         b'{"timestamp":"2025-10-04T06:00:02.000Z","type":"success","key":"beta","value":"v2"}\n')
#: Three violations: ``gamma`` written twice, ``delta`` retried four times, ``epsilon`` written without a value.
VIOLATING = b"".join(
    f'{{"timestamp":"2025-10-04T07:00:{second:02d}.000Z",{body}}}\n'.encode()
    for second, body in enumerate([
        '"type":"success","key":"gamma","value":"v1"',
        '"type":"success","key":"gamma","value":"v2"',
        *['"type":"retry","key":"delta"'] * 4,
        '"type":"success","key":"epsilon"',
    ]))


def _require_chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed, so the browser test of the Dagster UI did not run "
                    "(`apt-get install chromium`; .ci/run installs it)")
    return CHROMIUM


def _statuses(dagit: Dagit) -> dict[str, Any]:
    """The validation asset's partition statuses and its verdict check's, as the UI queries them."""
    data = dagit.query("""query { assetNodeOrError(assetKey: {path: ["drops", "kvonce_validation"]}) {
        ... on AssetNode {
          assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } }
          assetCheckOrError(checkName: "kvonce_conformance") { ... on AssetCheck {
            partitionStatuses { ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions } }
          } } } } }""")
    return data["assetNodeOrError"]


def _run_of(dagit: Dagit, partition: str) -> dict[str, Any]:
    return next(r for r in dagit.drop_runs() if r["partition"] == partition)


def _until(page: Any, what: str, deadline: float, read: Callable[[], Any]) -> Any:
    """Poll ``read`` (the rendered page) until it returns something truthy: the UI loads in steps."""
    last: Any = None
    while time.monotonic() < deadline:
        last = read()
        if last:
            return last
        page.wait_for_timeout(500)
    raise AssertionError(f"the page never showed {what}; it shows:\n{page.locator('body').inner_text()[:3000]}")


#: The innermost element whose text holds all of ``needles``: an asset node of the lineage graph.
_INNERMOST_WITH = """needles => {
    let best = null;
    for (const el of document.querySelectorAll('div')) {
        const text = el.innerText || '';
        if (needles.every(n => text.includes(n)) && (!best || best.contains(el))) best = el;
    }
    return best ? best.innerText : '';
}"""

#: The status dot beside a partition key in a partition list: its CSS background.
_DOT_OF = """key => {
    for (const label of document.querySelectorAll(`[data-tooltip="${key}"]`)) {
        const dot = label.parentElement.querySelector('div[style*="border-radius: 100%"]');
        if (dot) return dot.style.background || dot.style.backgroundColor;
    }
    return '';
}"""


#: The bounding boxes (left, top, right, bottom) of the lineage's asset nodes named, or null.
_NODE_BOXES = """names => {
    const out = [];
    for (const name of names) {
        let best = null;
        for (const el of document.querySelectorAll('div')) {
            const text = el.innerText || '';
            if (text.includes(name) && text.includes('Asset checks') && (!best || best.contains(el))) best = el;
        }
        if (!best) return null;
        const r = best.getBoundingClientRect();
        out.push([r.left, r.top, r.right, r.bottom]);
    }
    return out;
}"""
LINEAGE_NODES = ["collected_kvonce_otlp", "kvonce_events", "kvonce_projection", "kvonce_validation", "kvonce_store"]


def _shot(page: Any, name: str, clip: dict[str, float] | None = None) -> None:
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / name), clip=clip)


def _shot_lineage(page: Any, name: str) -> None:
    """The drops graph, zoomed in one step (Ctrl+wheel, as a person would) and cut to its nodes, so
    that its text can be read at the README's width."""
    if not SCREENSHOT_DIR:
        return
    boxes = page.evaluate(_NODE_BOXES, LINEAGE_NODES)
    if boxes:
        page.mouse.move((boxes[0][0] + boxes[-1][2]) / 2, (min(b[1] for b in boxes) + max(b[3] for b in boxes)) / 2)
        page.keyboard.down("Control")
        page.mouse.wheel(0, -40)
        page.keyboard.up("Control")
        page.wait_for_timeout(1500)
        boxes = page.evaluate(_NODE_BOXES, LINEAGE_NODES)
    if not boxes:
        _shot(page, name)
        return
    left, top = min(b[0] for b in boxes) - 16, min(b[1] for b in boxes) - 16
    right, bottom = max(b[2] for b in boxes) + 16, max(b[3] for b in boxes) + 40
    _shot(page, name, {"x": max(left, 0), "y": max(top, 0), "width": right - max(left, 0),
                       "height": bottom - max(top, 0)})


@contextlib.contextmanager
def browser_page(chromium: str) -> Iterator[Any]:
    """A page of headless Chromium in a throwaway profile, closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="kvonce-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


def test_each_payload_shows_its_own_verdict_on_its_partition(tmp_path: Path) -> None:
    chromium = _require_chromium()  # skip before anything is started
    # dagster dev first: Chromium starts on the other core while it loads its code location
    with running_dagster_dev(tmp_path) as (dagit, drop_dir, reports), browser_page(chromium) as page:
        deadline = time.monotonic() + DEADLINE_S
        _wait(dagit, "the webserver", deadline, dagit.up, poll=UP_POLL_S)
        bad, good = _key("violating.ndjson", VIOLATING), _key("valid.ndjson", VALID)
        _drop(drop_dir, "violating.ndjson", VIOLATING)
        _wait(dagit, "the violating payload's run", deadline, lambda: _finished(dagit.drop_runs(), {bad}))
        _drop(drop_dir, "valid.ndjson", VALID)  # after the failure: it must not turn the violation green
        _wait(dagit, "the valid payload's run", deadline, lambda: _finished(dagit.drop_runs(), {bad, good}))
        assert (_run_of(dagit, bad)["status"], _run_of(dagit, good)["status"]) == ("FAILURE", "SUCCESS")

        # The API: the violating partition failed, the valid one is materialized; the check agrees.
        expected = ({"materializedPartitions": [good], "failedPartitions": [bad]},
                    {"succeededPartitions": [good], "failedPartitions": [bad]})
        seen: list[Any] = []

        def statuses_settled() -> bool:
            statuses = _statuses(dagit)
            seen[:] = [statuses["assetPartitionStatuses"], statuses["assetCheckOrError"]["partitionStatuses"]]
            return tuple(seen) == expected

        try:
            _wait(dagit, "the partition statuses", min(deadline, time.monotonic() + 30), statuses_settled)
        except AssertionError:
            pass
        assert tuple(seen) == expected  # the asset's partitions and the verdict check's

        base = dagit.url
        # The drops lineage: the validation node counts one failed partition and one failed verdict.
        page.goto(f"{base}/locations/kvonce_pipeline/asset-groups/kvonce_drops/lineage")
        node = _until(page, "the kvonce_validation node with its partitions", deadline, lambda: page.evaluate(
            _INNERMOST_WITH, ["kvonce_validation", "Asset checks", "filled"]))
        assert "50% filled (1 failed)" in node, node
        assert "1 / 2 Passed" in node, node
        _shot_lineage(page, "drops-lineage.png")

        # The Partitions tab: "Failed (1)", a red dot on the violating partition, a green one on the valid one.
        page.goto(f"{base}/assets/{VALIDATION}?view=partitions")
        _until(page, "the partition counts", deadline, lambda: "Failed (1)" in page.locator("body").inner_text())
        assert "Materialized (1)" in page.locator("body").inner_text()
        assert "accent-red" in _until(page, "the violating partition's dot", deadline,
                                      lambda: page.evaluate(_DOT_OF, bad))
        assert "accent-green" in page.evaluate(_DOT_OF, good)

        # The partition pages: the violating one names its failed run, the valid one is materialized.
        page.goto(f"{base}/assets/{VALIDATION}?view=partitions&partition={bad}")
        banner = _until(page, "the failed partition's banner", deadline, lambda: re.search(
            r"Run (\w+) failed, and did not materialize this asset", page.locator("body").inner_text()))
        assert _run_of(dagit, bad)["runId"].startswith(banner.group(1))
        _shot(page, "drops-partition-failed.png")
        page.goto(f"{base}/assets/{VALIDATION}?view=partitions&partition={good}")
        _until(page, "the valid partition's materialization", deadline, lambda: re.search(
            rf"{good}\s+Materialized\s", page.locator("body").inner_text()))
        assert "did not materialize" not in page.locator("body").inner_text()

        # The verdict check, partition by partition (its own tab).
        page.goto(f"{base}/assets/{VALIDATION}?view=checks")
        _until(page, "the verdict check", deadline, lambda: "kvonce_conformance" in page.locator("body").inner_text())
        page.get_by_text("Partitions", exact=True).last.click()
        _until(page, "the check's partition counts", deadline,
               lambda: "Failed (1)" in (t := page.locator("body").inner_text()) and "Passed (1)" in t)
        assert "accent-red" in _until(page, "the check's dot", deadline, lambda: page.evaluate(_DOT_OF, bad))
        assert "accent-green" in page.evaluate(_DOT_OF, good)

        # The catalog: the validation asset's row counts, in the UI's fixed order (materialized,
        # missing, failed, materializing), one materialized and one failed partition.
        page.goto(f"{base}/assets")
        # one row: while the catalog (other domains' assets too) is still loading its counts, the
        # innermost element holding all three can be the whole list; wait for the row itself
        row = _until(page, "the catalog row", deadline, lambda: (t := page.evaluate(
            _INNERMOST_WITH, ["drops / kvonce_validation", "kvonce_drops", "2 partitions"])) and
            t.count("partitions") == 1 and t)
        assert re.search(r"\n1\n0\n1\n0\n2 partitions$", row), row

        # The failed run's page opens on the verdict: how many violations, in which file, the findings.
        page.goto(f"{base}/runs/{_run_of(dagit, bad)['runId']}")
        text = _until(page, "the run's failure", deadline,
                      lambda: "RUN_FAILURE" in (t := page.locator("body").inner_text()) and t)
        assert f"3 violations in {drop_dir / 'violating.ndjson'}:" in text
        assert "multiple-success" in text and "retry-bound-exceeded" in text and "success-missing-value" in text
        if SCREENSHOT_DIR:
            page.wait_for_timeout(1500)  # the step chart's colours come last (only the picture needs them)
        _shot(page, "failed-run-verdict.png")
        assert (reports / "trace" / bad / "kvonce-validation.json").is_file()  # the report is written all the same
