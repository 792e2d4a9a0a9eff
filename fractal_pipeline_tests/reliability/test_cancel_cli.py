"""`fractal-pipeline cancel`: a run on a code server stops CANCELED within seconds, leaving only complete PNGs.

The running run is launched as `dagster dev` launches one: `dagster job launch` hands it to a
code server (a `dagster api grpc` process) whose run worker renders in spawned worker processes;
`cancel` reaches it through the instance's DefaultRunLauncher, as the UI's Terminate button does.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from PIL import Image

from fractal_pipeline.defs.jobs import RENDER_JOB_NAME
from fractal_pipeline.fractals import random_specs, render_png, spec_of_png

from ..cli.test_observability_cli import _env, _invoke
from ..conftest import group_processes, render_workers, spawned
from .test_cancel import BIN, REPO

# Launch at once, as the daemon dequeues a run under `dagster dev` (nothing else in this test dequeues).
DEFAULT_COORDINATOR = "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"


@pytest.mark.reliability(
    "cancellation",
    "`fractal-pipeline cancel` mid-batch of a run on a code server (`dagster job launch`): CANCELED, "
    "no retry, run worker and render workers gone within 5 s, only complete PNGs",
)
def test_cancel_stops_a_run_on_a_code_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _env(home)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + DEFAULT_COORDINATOR)
    folder = tmp_path / "fractals"
    env["FRACTALS_DIR"] = str(folder)
    # ~0.1-0.3 s per 4096 px image: two workers need half a minute for the batch, far longer than
    # it takes to notice the first PNGs and start `fractal-pipeline cancel`.
    keys = [spec.key for spec in random_specs(160, seed=31, palette=None, size=4096)]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("fractal_specs", keys)
    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    launch = subprocess.Popen(
        [BIN / "dagster", "job", "launch", "-m", "fractal_pipeline.definitions", "-j", RENDER_JOB_NAME,
         "--tags", json.dumps(tags),
         "--config-json", json.dumps({"ops": {"fractal_images": {"config": {"workers": 2}}}})],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(list((folder / "fractals").glob("*.png"))) < 3:
            assert launch.poll() in (None, 0), launch.stderr.read().decode()[-2000:] if launch.stderr else ""
            time.sleep(0.1)
        assert launch.wait(60) == 0
        # The code server (left behind by `dagster job launch`) runs the run worker, a spawned
        # process; the render workers are its children.
        run_workers = spawned(group_processes(launch.pid))
        workers = [p for p in render_workers(group_processes(launch.pid)) if p.ppid() in {q.pid for q in run_workers}]
        assert len(run_workers) == 1 and workers, "no run worker with render workers was running"
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED

        cancel = subprocess.run(
            [BIN / "fractal-pipeline", "cancel", run.run_id[:8]],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        canceled = time.monotonic()
        assert cancel.returncode == 0, cancel.stderr[-2000:]
        assert re.fullmatch(rf"run {run.run_id[:8]} CANCELED after \d+\.\d s\n", cancel.stdout), cancel.stdout
        _, alive = psutil.wait_procs([*run_workers, *workers], timeout=5)
        assert not alive, f"run processes still running 5 s after the run was canceled: {[p.pid for p in alive]}"
        assert time.monotonic() - canceled < 5
        # The code server itself exits once it has no run left (`dagster job launch` asked it to).
        deadline = time.monotonic() + 30
        while group_processes(launch.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not group_processes(launch.pid), "processes of the run's code server outlived it"
    finally:
        if group_processes(launch.pid):
            os.killpg(launch.pid, signal.SIGKILL)
        launch.wait(10)

    stored = sorted((folder / "fractals").glob("*.png"))
    assert 3 <= len(stored) < len(keys)  # it really was cut short
    assert not [p for p in folder.rglob("*") if p.is_file() and p.suffix != ".png"]  # no .part temp files
    for path in stored:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        spec = spec_of_png(data)
        assert spec is not None and path.name == f"{spec.key}.png"
    assert stored[0].read_bytes() == render_png(spec_of_png(stored[0].read_bytes()))  # type: ignore[arg-type]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        final = instance.get_run_by_id(run.run_id)
        assert final is not None and final.status == dg.DagsterRunStatus.CANCELED
        records = instance.get_records_for_run(run.run_id, limit=100_000).records
        materialized = instance.get_materialized_partitions(dg.AssetKey("fractal_images"))
    events = [r.event_log_entry.dagster_event for r in records if r.event_log_entry.dagster_event is not None]
    kinds = [event.event_type_value for event in events]
    assert "STEP_UP_FOR_RETRY" not in kinds and "STEP_RESTARTED" not in kinds  # the RetryPolicy did not restart it
    (failure,) = [event for event in events if event.event_type_value == "STEP_FAILURE"]
    assert "run canceled: " in str(failure.event_specific_data.error.message)  # type: ignore[union-attr]
    assert dg.DagsterEventType.RUN_CANCELED.value in kinds
    assert len(materialized) >= 3
    assert {f"{key}.png" for key in materialized} <= {p.name for p in stored}  # never marked without its PNG


@dg.op
def noop() -> None:
    pass


@dg.job
def tiny() -> None:
    noop()


def _queued_run(instance: dg.DagsterInstance) -> str:
    """A render run submitted as the UI's Launch button submits it: QUEUED until a daemon launches it."""
    from dagster._core.test_utils import in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    from fractal_pipeline.definitions import defs

    target = LoadableTargetOrigin(module_name="fractal_pipeline.definitions", attribute="defs")
    with in_process_test_workspace(instance, target) as workspace:
        location = workspace.get_code_location(workspace.code_location_names[0])
        remote_job = next(iter(location.get_repositories().values())).get_full_job(RENDER_JOB_NAME)
        run = instance.create_run_for_job(
            defs.resolve_job_def(RENDER_JOB_NAME),
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
        )
        instance.submit_run(run.run_id, workspace)
    queued = instance.get_run_by_id(run.run_id)
    assert queued is not None and queued.status == dg.DagsterRunStatus.QUEUED
    return run.run_id


def test_cancel_queued_unlaunched_finished_in_process_and_unknown_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _env(home)  # the instance's default QueuedRunCoordinator: queued runs wait for a daemon
    with dg.DagsterInstance.from_config(str(home)) as instance:
        queued = _queued_run(instance)
        unlaunched = instance.create_run_for_job(tiny).run_id  # NOT_STARTED
        # STARTED without a code server: what `fractal-pipeline run` records for its in-process runs.
        in_process = instance.create_run_for_job(tiny, status=dg.DagsterRunStatus.STARTED).run_id
        finished = tiny.execute_in_process(instance=instance).run_id

    for run_id in (queued, unlaunched):
        code, out, err = _invoke(home, "cancel", run_id[:8])
        assert code == 0, err
        assert re.fullmatch(rf"run {run_id[:8]} CANCELED after \d+\.\d s\n", out)

    code, out, err = _invoke(home, "cancel", finished[:10])
    assert (code, out) == (1, "")
    assert err == f"error: run {finished[:8]} already SUCCESS; nothing to cancel\n"
    code, _, err = _invoke(home, "cancel", queued)
    assert code == 1 and err == f"error: run {queued[:8]} already CANCELED; nothing to cancel\n"

    code, _, err = _invoke(home, "cancel", in_process[:8])
    assert code == 1 and err.count("\n") == 1
    assert "press Ctrl-C there" in err and f"fractal-pipeline cancel {in_process[:8]} --force" in err
    code, out, err = _invoke(home, "cancel", in_process[:8], "--force")
    assert code == 0 and out.startswith(f"run {in_process[:8]} CANCELED"), err

    code, out, err = _invoke(home, "cancel", "ffff0000")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "no run starts with 'ffff0000'; `fractal-pipeline runs` lists them" in err

    with dg.DagsterInstance.from_config(str(home)) as instance:
        statuses = {run_id: instance.get_run_by_id(run_id).status for run_id in (queued, unlaunched, in_process)}  # type: ignore[union-attr]
    assert set(statuses.values()) == {dg.DagsterRunStatus.CANCELED}


def test_cancel_force_stops_a_run_executing_in_fractal_pipeline_run_and_it_stays_canceled(tmp_path: Path) -> None:
    """`cancel --force` on a run that is still executing (in `fractal-pipeline run`): the run stops as on
    Ctrl-C and ends CANCELED, with every stored PNG materialized; its process does not turn it into FAILURE."""
    home = tmp_path / "home"
    env = _env(home)
    folder = tmp_path / "fractals"
    env["FRACTALS_DIR"] = str(folder)
    run = subprocess.Popen(
        [BIN / "fractal-pipeline", "run", "--count", "60", "--size", "4096", "--seed", "5", "--workers", "1",
         "--no-collage", "--yes"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while len(list((folder / "fractals").glob("*.png"))) < 2:  # the known point: the images run is storing
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "no PNG was stored"
            time.sleep(0.1)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (images,) = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.STARTED]
        code, out, err = _invoke(home, "cancel", images.run_id[:8], "--force")
        assert code == 0 and out.startswith(f"run {images.run_id[:8]} CANCELED after "), (out, err)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
    assert run.returncode == 1 and "run canceled: " in stderr.splitlines()[-1], stderr
    assert f"images run {images.run_id}: CANCELED" in stderr.splitlines(), stderr  # as recorded, not FAILED
    with dg.DagsterInstance.from_config(str(home)) as instance:
        final = instance.get_run_by_id(images.run_id)
        assert final is not None and final.status == dg.DagsterRunStatus.CANCELED
        kinds = [
            r.event_log_entry.dagster_event.event_type_value
            for r in instance.get_records_for_run(images.run_id, limit=100_000).records
            if r.event_log_entry.dagster_event is not None
        ]
        materialized = instance.get_materialized_partitions(dg.AssetKey("fractal_images"))
    assert dg.DagsterEventType.RUN_FAILURE.value not in kinds
    assert kinds.count(dg.DagsterEventType.RUN_CANCELED.value) == 1
    stored = {p.name for p in (folder / "fractals").glob("*.png")}
    assert {f"{key}.png" for key in materialized} == stored  # every stored PNG is recorded, none without its PNG
