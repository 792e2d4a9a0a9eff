"""Automation end to end: `dagster dev` picks up an uploaded spec file; the schedule's chain; collage freshness."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, TypeVar

import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from fractal_pipeline.definitions import build_definitions
from fractal_pipeline.defs.jobs import RANDOM_JOB_NAME, RENDER_JOB_NAME
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.defs.schedules import RENDER_AFTER_SCHEDULE_NAME, SCHEDULE_NAME

from ..conftest import QUIET, asset_job, materialize_images, materialize_specs, s3_client

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
COLLAGE = dg.AssetKey("fractal_collage")
T = TypeVar("T")

#: Instance settings for `dagster dev`: dequeue queued runs every second (default 5 s).
DAGSTER_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
telemetry:
  enabled: false
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def dagster_dev(env: Mapping[str, str], home: Path, log: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster dev` on 127.0.0.1 with its own DAGSTER_HOME, stopped by process group on exit."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    (home / ".nux").mkdir(exist_ok=True)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    command = [str(BIN / "dagster"), "dev", "-m", "fractal_pipeline.definitions", "-h", "127.0.0.1"]
    command += ["-p", str(free_port())]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **env, "DAGSTER_HOME": str(home)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue


def wait_for(predicate: Callable[[], T | None], timeout_s: float, every_s: float = 0.25) -> T | None:
    """Poll ``predicate`` until it returns something truthy or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


def listed(endpoint: str, bucket: str, prefix: str) -> set[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


@pytest.mark.slow
@pytest.mark.s3
def test_uploaded_spec_file_is_rendered_by_dagster_dev(s3_env: dict[str, str], tmp_path: Path) -> None:
    endpoint, bucket = s3_env["AWS_ENDPOINT_URL"], s3_env["FRACTALS_BUCKET"]
    env = {**s3_env, "FRACTALS_SENSOR_INTERVAL": "5"}
    log_path = tmp_path / "dagster_dev.log"
    with log_path.open("wb") as log, dagster_dev(env, tmp_path / "home", log) as process:
        body = "kind,depth,size,palette\ndragon,9,128,\nlevy_c,7,128,fire\nnot_a_kind,3,,\nsierpinski,4,128,\n"
        s3_client(endpoint).put_object(Bucket=bucket, Key="specs/e2e.csv", Body=body.encode())
        expected = {
            "fractals/dragon_9-128px.png",
            "fractals/levy_c_7-128px-fire.png",
            "fractals/sierpinski_4-128px.png",
        }

        def pngs_stored() -> bool:
            assert process.poll() is None, "dagster dev exited"
            return expected <= listed(endpoint, bucket, "fractals/")

        stored = wait_for(pngs_stored, timeout_s=90, every_s=0.5)
        tail = log_path.read_text(errors="replace")[-3000:]
        assert stored, f"PNGs not stored within 90 s; dagster dev log tail:\n{tail}"
        assert listed(endpoint, bucket, "fractals/") == expected  # the bad row rendered nothing
        assert "specs/_rejected/e2e.csv.json" in listed(endpoint, bucket, "specs/_rejected/")
        # the collage follows the images (fractal_collage_freshness), once
        collage = wait_for(lambda: "collages/fractal_collage.png" in listed(endpoint, bucket, "collages/"), 60, 0.5)
        assert collage, f"collage not refreshed; dagster dev log tail:\n{log_path.read_text(errors='replace')[-3000:]}"


def _success_event(instance: dg.DagsterInstance, run_id: str) -> Any:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_SUCCESS).records
    return records[0].event_log_entry.dagster_event


def test_schedule_runs_specs_then_the_new_partitions_render_in_one_run(
    local_env: Path, instance: dg.DagsterInstance
) -> None:
    defs = build_definitions("local")
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    tick = datetime(2026, 3, 1, 6, 0, tzinfo=timezone.utc)
    request = schedule.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))
    assert request.run_requests is not None and len(request.run_requests) == 1
    run_config = request.run_requests[0].run_config
    seed = run_config["ops"]["fractal_specs"]["config"]["seed"]
    assert seed == int(tick.timestamp()) & 0xFFFFFFFF  # fresh each tick, repeated if the tick is retried
    config = {"ops": {"fractal_specs": {"config": {"seed": seed, "count": 4, "size": 48}}}}
    specs_run = defs.resolve_job_def(RANDOM_JOB_NAME).execute_in_process(
        instance=instance, run_config={**QUIET, **config}, tags=request.run_requests[0].tags
    )
    keys = [spec.key for spec in specs_run.output_for_node("fractal_specs")]

    sensor = defs.resolve_sensor_def(RENDER_AFTER_SCHEDULE_NAME)
    context = dg.build_run_status_sensor_context(
        sensor_name=RENDER_AFTER_SCHEDULE_NAME,
        dagster_event=_success_event(instance, specs_run.run_id),
        dagster_instance=instance,
        dagster_run=specs_run.dagster_run,
        resources={"store": defs.resources["store"]},
    )
    run = sensor(context)
    assert isinstance(run, dg.RunRequest)  # one batched run for the new partitions
    assert run.run_config == {"ops": {"fractal_images": {"config": {"workers": 0}}}}  # nothing to skip: no `only`
    assert run.job_name == RENDER_JOB_NAME and run.run_key == f"{RANDOM_JOB_NAME}:{specs_run.run_id}"
    assert (run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG]) == (keys[0], keys[-1])

    images = defs.resolve_job_def(RENDER_JOB_NAME).execute_in_process(
        instance=instance, tags=run.tags, run_config={**QUIET, "ops": {"fractal_images": {"config": {"workers": 1}}}}
    )
    assert images.success
    assert sorted(p.name for p in (local_env / "fractals").glob("*.png")) == sorted(f"{k}.png" for k in keys)
    # evaluated again (e.g. after a restart), nothing is left to render
    again = sensor(context)
    assert isinstance(again, dg.SkipReason) and "already stored" in (again.skip_message or "")


def test_collage_is_requested_once_after_image_partitions_land(local_env: Path, instance: dg.DagsterInstance) -> None:
    defs = build_definitions("local")

    def evaluate(cursor: Any) -> Any:
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)

    result = evaluate(None)
    assert result.get_num_requested(COLLAGE) == 0  # no images yet: nothing to tile
    assert materialize_specs(defs, instance, count=6, seed=2, size=32).success
    keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    result = evaluate(result.cursor)
    assert result.get_num_requested(COLLAGE) == 0  # partitions registered, no image landed yet

    for first, last in [(keys[0], keys[1]), (keys[2], keys[3]), (keys[4], keys[4])]:  # several image runs
        assert materialize_images(defs, instance, first, last, workers=1).success
    result = evaluate(result.cursor)
    assert result.get_num_requested(COLLAGE) == 1  # one collage for the three image runs
    result = evaluate(result.cursor)
    assert result.get_num_requested(COLLAGE) == 0  # requested once, not again on the next tick

    assert materialize_images(defs, instance, keys[5], keys[5], workers=1).success
    in_progress = instance.create_run_for_job(  # another image run still going on
        defs.resolve_job_def(RENDER_JOB_NAME),
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[1]},
        status=dg.DagsterRunStatus.STARTED,
    )
    result = evaluate(result.cursor)
    assert result.get_num_requested(COLLAGE) == 0  # waits while images are being rendered...
    instance.report_run_failed(in_progress)
    result = evaluate(result.cursor)
    assert result.get_num_requested(COLLAGE) == 1  # ...then one collage for what landed meanwhile


def test_images_whose_launcher_tiles_the_collage_do_not_request_another(
    local_env: Path, instance: dg.DagsterInstance
) -> None:
    from fractal_pipeline.defs.tags import COLLAGE_BY_LAUNCHER as COLLAGE_BY_LAUNCHER_TAG

    defs = build_definitions("local")

    def evaluate(cursor: Any) -> Any:
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)

    result = evaluate(None)
    assert materialize_specs(defs, instance, count=4, seed=3, size=32).success
    keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    result = evaluate(result.cursor)
    tagged = asset_job(defs).execute_in_process(  # what `fractal-pipeline run` launches, then it tiles the collage
        instance=instance,
        asset_selection=[dg.AssetKey("fractal_images")],
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[1],
              COLLAGE_BY_LAUNCHER_TAG: "true"},
        run_config={**QUIET, "ops": {"fractal_images": {"config": {"workers": 1}}}},
    )  # fmt: skip
    assert tagged.success
    result = evaluate(result.cursor)
    assert result.get_num_requested(COLLAGE) == 0  # left to the launcher: no second collage
    assert materialize_images(defs, instance, keys[2], keys[3], workers=1).success  # e.g. a UI backfill
    result = evaluate(result.cursor)
    assert result.get_num_requested(COLLAGE) == 1  # an untagged batch: the daemon tiles it
