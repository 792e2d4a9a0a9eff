"""Interrupting a rendering run (Ctrl-C on `dagster asset materialize`) stops its workers and leaves no debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.instance.ref import InstanceRef

from fractal_pipeline.fractals import random_specs, render_png, spec_of_png

from ..conftest import group_processes, render_workers, spawned

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.reliability(
    "cancellation",
    "Ctrl-C (SIGINT to the process group) mid-batch of a `dagster asset materialize` run: workers gone "
    "within 5 s, no orphans, no partial objects",
)
def test_interrupted_run_stops_workers_and_leaves_only_complete_pngs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    folder = tmp_path / "fractals"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRACTALS_", "FRACTAL_", "MINIO"))}
    env.update({"DAGSTER_HOME": str(home), "FRACTALS_DIR": str(folder)})
    keys = [spec.key for spec in random_specs(40, seed=31, palette=None, size=3072)]
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        instance.add_dynamic_partitions("fractal_specs", keys)

    process = subprocess.Popen(
        [BIN / "dagster", "asset", "materialize", "-m", "fractal_pipeline.definitions",
         "--select", "fractal_images", "--partition-range", f"{keys[0]}...{keys[-1]}"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list((folder / "fractals").glob("*.png"))) < 3:
            assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
            time.sleep(0.1)
        # The step runs in a spawned process of Dagster's multiprocess executor; the render
        # workers are its children.
        steps = {p.pid for p in spawned(group_processes(process.pid))}
        workers = [p for p in render_workers(group_processes(process.pid)) if p.ppid() in steps]
        assert workers, "no render workers were running"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        interrupted = time.monotonic()
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"workers still running 5 s after the interrupt: {[p.pid for p in alive]}"
        worker_stop_s = time.monotonic() - interrupted
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            left = [f"{p.pid} {p.status()} {' '.join(p.cmdline())[:120]}" for p in group_processes(process.pid)]
            raise AssertionError(f"the run's processes did not exit 60 s after Ctrl-C: {left}") from None
        time.sleep(0.5)
        assert not group_processes(process.pid), "processes of the run outlived it"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    stored = sorted((folder / "fractals").glob("*.png"))
    assert 3 <= len(stored) < len(keys)  # it really was cut short
    assert not [p for p in (folder / "fractals").iterdir() if not p.name.endswith(".png")]  # no temp files
    for path in stored:
        data = path.read_bytes()
        spec = spec_of_png(data)
        assert spec is not None and path.name == f"{spec.key}.png" and data == render_png(spec)
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        (run,) = instance.get_runs()
        assert run.status in {DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE}
        materialized = instance.get_materialized_partitions(__import__("dagster").AssetKey("fractal_images"))
    assert {f"{k}.png" for k in materialized} <= {p.name for p in stored}  # never marked without its object
    assert worker_stop_s < 5
