"""The Dagster UI end to end: real `dagster dev`, real Chromium (Debian's, driven by playwright).

Starts ``dagster dev`` on a free port with a temporary ``DAGSTER_HOME``, then in
the browser: the asset graph shows the three assets; ``fractal_specs`` is
materialised from the Launchpad with ``count: 4``; the new ``fractal_images``
partitions are launched from the partition dialog as one backfill (one run,
``BackfillPolicy.single_run``); a partition's thumbnail is displayed. Screenshots
go to ``test-artifacts/``. ``dagster dev`` is stopped by process group and no
process of it may survive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from fractal_pipeline.instance.home import instance_yaml

from ..conftest import group_processes

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ASSETS = ("fractal_specs", "fractal_images", "fractal_collage")
SPECS_CONFIG = "ops:\n  fractal_specs:\n    config:\n      count: 4\n      seed: 7\n"
#: No telemetry; the queued-run coordinator polls every second instead of every 5 s (the backfill
#: daemon's 30 s loop cannot be shortened).
DAGSTER_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
"""


@dataclass
class DagsterDev:
    url: str
    home: Path
    fractals: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_group(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the whole group, then SIGKILL what is left; every process of it must be gone."""
    pgid = process.pid  # start_new_session=True: the group id is the leader's pid
    descendants = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_processes(pgid) and time.monotonic() < deadline:
        time.sleep(0.25)
    if group_processes(pgid):
        os.killpg(pgid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 10
    while group_processes(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_processes(pgid) == [], "dagster dev left processes behind"
    survivors = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], f"processes escaped the group: {survivors}"


@pytest.fixture
def dagster_dev(tmp_path: Path) -> Iterator[DagsterDev]:
    home = tmp_path / "home"
    (home / ".nux").mkdir(parents=True)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")  # what the UI writes once its first-visit modal was seen
    # The instance `fractal-pipeline run` creates (whose runs `dagster dev` then shows), plus a run queue.
    (home / "dagster.yaml").write_text(instance_yaml(home) + DAGSTER_YAML)
    fractals = tmp_path / "fractals"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRACTALS_", "FRACTAL_", "MINIO", "AWS_ENDPOINT"))}
    env.update(DAGSTER_HOME=str(home), FRACTALS_DIR=str(fractals))
    port = _free_port()
    log = (tmp_path / "dagster-dev.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "dagster-dev.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "dagster dev did not answer /server_info within 120 s"
            time.sleep(0.5)
        yield DagsterDev(url, home, fractals)
    finally:
        try:
            _stop_group(process)
        finally:
            log.close()


def chromium_executable(playwright: Any) -> str:
    """Debian's chromium, else Playwright's own build; neither is one line saying how to install one."""
    if CHROMIUM.exists():
        return str(CHROMIUM)
    own = Path(playwright.chromium.executable_path)
    if own.exists():
        return str(own)
    pytest.fail(
        "chromium: neither Debian's (/usr/bin/chromium) nor Playwright's own is installed; "
        "apt-get install chromium, or python -m playwright install chromium",
        pytrace=False,
    )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
            executable_path=chromium_executable(playwright),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"))


def _wait(what: str, condition: Callable[[], bool], page: Page, timeout_s: float, reload_every_s: float = 0) -> None:
    """Poll ``condition`` (reloading the page every ``reload_every_s``), with a screenshot on timeout."""
    deadline = time.monotonic() + timeout_s
    last_reload = time.monotonic()
    while not condition():
        if time.monotonic() > deadline:
            _shot(page, f"timeout-{what.replace(' ', '-')}")
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        if reload_every_s and time.monotonic() - last_reload > reload_every_s:
            page.reload()
            last_reload = time.monotonic()
        page.wait_for_timeout(500)


def _run_status(page: Page) -> str | None:
    for status in ("Success", "Failure", "Canceled"):
        if page.locator(f"[aria-label=run_{status.lower()}]").count():
            return status
    return None


def test_materialise_from_the_ui_and_see_a_thumbnail(dagster_dev: DagsterDev, browser: BrowserContext) -> None:
    page = browser.new_page()

    # 1. The asset graph shows the three assets.
    page.goto(f"{dagster_dev.url}/asset-groups")
    for name in ASSETS:
        expect(page.locator(f'[data-tooltip="{name}"]').first).to_be_visible(timeout=90_000)
    _shot(page, "1-asset-graph")

    # 2. fractal_specs from the Launchpad with count: 4 (typed into the config editor, then Materialize).
    page.goto(f"{dagster_dev.url}/assets/fractal_specs")
    # The page re-renders while its data loads: a click too early can be swallowed, so retry the menu.
    for attempt in range(6):
        page.locator("button:has([aria-label=arrow_drop_down])").first.click()
        try:
            expect(page.get_by_text("Open launchpad")).to_be_visible(timeout=5_000)
            break
        except AssertionError:
            page.keyboard.press("Escape")
            if attempt == 5:
                raise
    _shot(page, "2a-materialize-menu")
    page.get_by_text("Open launchpad").click()
    editor = page.locator(".CodeMirror").first
    expect(editor).to_be_visible()
    _wait("the scaffolded config", lambda: "count:" in editor.inner_text(), page, 30)
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(SPECS_CONFIG)
    _wait("the edited config", lambda: "count: 4" in editor.inner_text(), page, 10)
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("No errors")).to_be_visible()
    _shot(page, "2-launchpad")
    dialog.get_by_role("button", name="Materialize").click()
    page.wait_for_url("**/runs/*", timeout=60_000)
    _wait("the specs run to finish", lambda: _run_status(page) is not None, page, 150)
    assert _run_status(page) == "Success"

    with dg.DagsterInstance.from_config(str(dagster_dev.home)) as instance:
        keys = list(instance.get_dynamic_partitions("fractal_specs"))
    assert len(keys) == 4

    # 3. The four new partitions of fractal_images: Materialize… -> Missing -> Launch backfill (one run).
    page.goto(f"{dagster_dev.url}/assets/fractal_images")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="Missing", exact=True).click()
    expect(dialog.get_by_text("4 partitions")).to_be_visible()
    expect(dialog.get_by_text("Backfills all partitions in a single run.")).to_be_visible()
    _shot(page, "3-backfill-dialog")
    dialog.get_by_role("button", name="Launch backfill").click()
    expect(page.get_by_text("Created backfill")).to_be_visible()

    page.goto(f"{dagster_dev.url}/assets/fractal_images?view=partitions")
    _wait(
        "4 materialized partitions",
        lambda: page.get_by_text("Materialized (4)").count() > 0,
        page,
        180,
        reload_every_s=4,
    )
    with dg.DagsterInstance.from_config(str(dagster_dev.home)) as instance:
        backfill_runs = [
            record.dagster_run
            for record in instance.get_run_records()
            if record.dagster_run.tags.get("dagster/backfill")
        ]
        assert instance.get_materialized_partitions(dg.AssetKey("fractal_images")) == set(keys)
    assert len(backfill_runs) == 1, "BackfillPolicy.single_run(): one run for the whole backfill"
    assert backfill_runs[0].tags["dagster/asset_partition_range_start"] == keys[0]
    assert backfill_runs[0].tags["dagster/asset_partition_range_end"] == keys[-1]
    for key in keys:
        assert (dagster_dev.fractals / "fractals" / f"{key}.png").is_file()

    # 4. Open a partition: its thumbnail (markdown metadata) is displayed and decoded.
    key = keys[0]
    page.get_by_text(key, exact=True).first.click()
    expect(page.get_by_text("Latest materialization")).to_be_visible()
    page.get_by_text("[Show Markdown]").first.click()
    thumbnail = page.get_by_role("dialog").locator(f'img[alt="{key}"]')
    expect(thumbnail).to_be_visible()
    _wait("the thumbnail to decode", lambda: bool(thumbnail.evaluate("img => img.complete")), page, 10)
    assert thumbnail.evaluate("img => img.naturalWidth") > 0
    assert thumbnail.evaluate("img => img.src").startswith("data:image/png;base64,")
    _shot(page, "4-partition-thumbnail")

    # 5. The images run's page (Gantt chart of the step), for the record.
    page.goto(f"{dagster_dev.url}/runs/{backfill_runs[0].run_id}")
    _wait("the images run page", lambda: _run_status(page) == "Success", page, 30)
    _shot(page, "5-images-run")


def test_chromium_decodes_a_rendered_png(browser: BrowserContext) -> None:
    """The PNGs the core writes itself (zlib-ng deflate, tEXt chunks) display in a browser."""
    import base64

    from fractal_pipeline.fractals import FractalSpec, render_png

    data = base64.b64encode(render_png(FractalSpec("dragon", 10))).decode()
    page = browser.new_page()
    page.set_content(f'<img id="png" src="data:image/png;base64,{data}">')
    image = page.locator("#png")
    _wait("the PNG to decode", lambda: bool(image.evaluate("img => img.complete")), page, 10)
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [1024, 1024]
    lit = page.evaluate(
        """() => { const img = document.getElementById('png'); const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) { if (d[i] || d[i + 1] || d[i + 2]) n++; } return n; }"""
    )
    assert lit > 1000  # the drawing, not a blank or broken image
