"""Dagster's `dg` CLI on the project, and `fractal-pipeline ui` on the CLI's instance: each run as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest
from playwright.sync_api import BrowserContext, expect

from ..cli.test_cli_truth import BIN, REPO, cli, cli_env, image_runs
from ..conftest import group_processes
from .test_browser import _free_port, _shot, browser  # noqa: F401  (the browser fixture)

KEYS = ["dragon_3-32px", "levy_c_4-32px", "moore_2-32px"]


def dg_cli(args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "dg"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_dg_checks_and_lists_the_definitions(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    checked = dg_cli(["check", "defs"], env)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    # Dagster's beta notices (backfill_policy) are nothing a user of the `dagster` CLI can act on.
    listed_assets = subprocess.run(
        [str(BIN / "dagster"), "asset", "list", "-m", "fractal_pipeline.definitions"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert listed_assets.returncode == 0, listed_assets.stderr[-2000:]
    assert "fractal_images" in listed_assets.stdout
    assert "Warning" not in listed_assets.stderr, listed_assets.stderr[-2000:]
    listed = dg_cli(["list", "defs", "--json"], env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    defs = json.loads(listed.stdout)
    assert {asset["asset_key"] for asset in defs["assets"]} == {"fractal_specs", "fractal_images", "fractal_collage"}
    assert {sensor["name"] for sensor in defs["sensors"]} == {
        "fractal_spec_files",
        "render_random_fractals",
        "fractal_collage_freshness",
    }
    assert {job["name"] for job in defs["jobs"]} >= {"render_fractal_images", "random_fractals"}


def test_dg_launches_a_partition_range_on_the_cli_instance(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home, FRACTALS_DIR=str(tmp_path / "pngs"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("fractal_specs", KEYS)
    launched = dg_cli(["launch", "--assets", "fractal_images", "--partition-range", f"{KEYS[0]}...{KEYS[-1]}"], env)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "pngs" / "fractals").glob("*.png")) == sorted(f"{k}.png" for k in KEYS)
    (run,) = image_runs(home)  # recorded in the CLI's instance, as `fractal-pipeline runs` shows it
    assert run.status == dg.DagsterRunStatus.SUCCESS
    reversed_range = dg_cli(
        ["launch", "--assets", "fractal_images", "--partition-range", f"{KEYS[-1]}...{KEYS[0]}"], env
    )
    assert reversed_range.returncode != 0
    output = reversed_range.stdout + reversed_range.stderr
    assert f"--partition-range: {KEYS[-1]}...{KEYS[0]} selects no fractal_specs partition" in output


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    log: Path

    def graphql(self, query: str) -> Any:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["data"]


def _serve(command: list[str], env: dict[str, str], cwd: Path, port: int, log: Path) -> Server:
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                if response.status == 200:
                    return Server(process, url, log)
        except OSError:
            pass
        assert time.monotonic() < deadline, "the UI did not answer /server_info within 120 s"
        time.sleep(0.5)


def _ctrl_c(server: Server) -> None:
    """SIGINT to the command, as Ctrl-C does; it and every process it started must be gone within 60 s."""
    descendants = psutil.Process(server.process.pid).children(recursive=True)
    server.process.send_signal(signal.SIGINT)
    try:
        assert server.process.wait(60) == 0, server.log.read_text()[-3000:]
        _, alive = psutil.wait_procs([p for p in descendants if p.is_running()], timeout=30)
        assert not alive, f"processes left running after Ctrl-C: {alive}"
    finally:
        if group_processes(server.process.pid):
            os.killpg(server.process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_dg_dev_serves_the_definitions_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    env = cli_env(tmp_path / "home")
    server = _serve([str(BIN / "dg"), "dev", "--port", str(port)], env, REPO, port, tmp_path / "dg-dev.log")
    try:
        nodes = server.graphql("{ assetNodes { assetKey { path } } }")["assetNodes"]
        assert {node["assetKey"]["path"][0] for node in nodes} == {"fractal_specs", "fractal_images", "fractal_collage"}
    finally:
        _ctrl_c(server)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str], Path]]:
    """`fractal-pipeline ui` on a home the CLI has used, started from a folder without workspace.yaml."""
    folder = tmp_path_factory.mktemp("ui")
    home = folder / "home"
    # The collage sensor ticks every 2 s here, so that it has ticked between the CLI's runs below.
    env = cli_env(home, FRACTALS_SENSOR_INTERVAL="2")
    first = cli(["run", "-n", "3", "--seed", "1", "--size", "32"], env)
    assert first.returncode == 0, first.stderr
    port = _free_port()
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    server = _serve([str(BIN / "fractal-pipeline"), "ui", "--port", str(port)], env, elsewhere, port, folder / "ui.log")
    try:
        yield server, env, home
    finally:
        _ctrl_c(server)


@pytest.mark.browser
@pytest.mark.slow
def test_fractal_pipeline_ui_shows_the_cli_runs(
    ui: tuple[Server, dict[str, str], Path],
    browser: BrowserContext,  # noqa: F811
) -> None:
    server, _, home = ui
    assert f"Dagster UI on {server.url} (DAGSTER_HOME={home}); Ctrl-C stops it" in server.log.read_text()
    (images_run, *_) = image_runs(home)
    page = browser.new_page()
    page.goto(f"{server.url}/runs")
    expect(page.get_by_text(images_run.run_id[:8]).first).to_be_visible(timeout=90_000)
    _shot(page, "ui-runs")
    page.goto(f"{server.url}/runs/{images_run.run_id}")  # the full id the CLI printed opens the run
    expect(page.get_by_text("fractal_images").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Success").first).to_be_visible(timeout=60_000)


@pytest.mark.slow
def test_the_cli_and_the_ui_daemon_share_the_home(ui: tuple[Server, dict[str, str], Path]) -> None:
    server, env, home = ui

    def collage_runs() -> list[dg.DagsterRun]:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            return [run for run in instance.get_runs() if run.asset_selection == {dg.AssetKey("fractal_collage")}]

    def sensor_ticks() -> list[dict[str, Any]]:
        data = server.graphql(
            '{ sensorOrError(sensorSelector: {repositoryLocationName: "fractal_pipeline.definitions", '
            'repositoryName: "__repository__", sensorName: "fractal_collage_freshness"}) '
            "{ ... on Sensor { sensorState { ticks(limit: 200) { status error { message } } } } } }"
        )
        return list(data["sensorOrError"]["sensorState"]["ticks"])

    deadline = time.monotonic() + 60
    while not sensor_ticks():  # the daemon runs the collage sensor on this home
        assert time.monotonic() < deadline, "the collage sensor never ticked"
        time.sleep(1)
    before = len(collage_runs())
    for seed in (2, 3):  # the CLI writes to the SQLite home while the daemon does
        result = cli(["run", "-n", "4", "--seed", str(seed), "--size", "32"], env)
        assert result.returncode == 0, result.stderr
        assert "collages/fractal_collage.png" in result.stdout.splitlines()
    ticked = len(sensor_ticks())
    deadline = time.monotonic() + 60
    while len(sensor_ticks()) < ticked + 3:  # the sensor has seen what the CLI did
        assert time.monotonic() < deadline, "the collage sensor stopped ticking"
        time.sleep(1)
    assert len(collage_runs()) == before + 2  # one collage per CLI run, none again from the daemon
    failed = [tick for tick in sensor_ticks() if tick["status"] == "FAILURE"]
    assert not failed, f"sensor ticks failed while the CLI wrote to the home: {failed}"

    # Images landed by something that does not tile the collage itself: the daemon tiles it, once.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("fractal_specs", KEYS)
    launched = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "fractal_pipeline.definitions", "--select",
         "fractal_images", "--partition-range", f"{KEYS[0]}...{KEYS[-1]}"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-2000:]
    deadline = time.monotonic() + 120
    while len(collage_runs()) < before + 3:
        assert time.monotonic() < deadline, "the daemon did not tile the collage of the new images"
        time.sleep(1)
    runs = collage_runs()
    deadline = time.monotonic() + 60
    while not all(run.is_finished for run in runs):
        assert time.monotonic() < deadline, "the daemon's collage run did not finish"
        time.sleep(1)
        runs = collage_runs()
    assert len(runs) == before + 3 and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
