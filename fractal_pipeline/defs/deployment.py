"""What each deployment gets: its resources, and the automation (jobs, sensors, schedule) it runs.

Deployments (``FRACTAL_DEPLOYMENT``; default ``s3`` when ``FRACTALS_BUCKET`` is
set, else ``local``):

- ``local``: PNGs in a local folder, specs pickled under ``$DAGSTER_HOME``,
  rendering in a process pool. Needs nothing but this package.
- ``s3``: PNGs and pickled specs in the ``FRACTALS_BUCKET`` bucket (AWS, or any
  S3-compatible server via ``AWS_ENDPOINT_URL`` / ``MINIO_ENDPOINT``),
  rendering in a process pool.
- ``aws``: as ``s3``, but ``fractal_images`` renders on the Lambda render
  function ``FRACTALS_LAMBDA_FUNCTION`` (chunks invoked with ``PipesLambdaClient``);
  what the ECS tasks of ``deploy/template.yaml`` run.

Every deployment has a ``started_workers`` resource (``workers.pool.StartedWorkers``): empty, unless
``fractal-pipeline run`` started the local render workers of its images run early, as Dagster creates it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from fractal_pipeline.defs.io_managers import PngIOManager
from fractal_pipeline.defs.jobs import random_fractals_job, render_job
from fractal_pipeline.defs.resources import FractalStoreResource, RenderBackendResource
from fractal_pipeline.defs.schedules import random_fractals_schedule
from fractal_pipeline.defs.sensors.after_schedule import render_after_schedule_sensor
from fractal_pipeline.defs.sensors.collage import collage_freshness_sensor
from fractal_pipeline.defs.sensors.spec_files import spec_files_sensor
from fractal_pipeline.defs.settings import (
    cost_settings_from_env,
    reconcile_seconds_from_env,
    schedule_cron_from_env,
    sensor_interval_from_env,
    specs_prefix_from_env,
    specs_queue_from_env,
)
from fractal_pipeline.store import default_local_dir, endpoint_from_env
from fractal_pipeline.workers.pool import StartedWorkers

DEPLOYMENTS = ("local", "s3", "aws")


def deployment_name() -> str:
    """The deployment the environment selects."""
    name = os.environ.get("FRACTAL_DEPLOYMENT") or ("s3" if os.environ.get("FRACTALS_BUCKET") else "local")
    if name not in DEPLOYMENTS:
        raise ValueError(f"FRACTAL_DEPLOYMENT: unknown deployment {name!r}; use one of {', '.join(DEPLOYMENTS)}")
    return name


def resources_for(deployment: str) -> Mapping[str, Any]:
    """Resources of one deployment; the assets never branch on where they run."""
    if deployment == "local":
        store = FractalStoreResource(local_dir=default_local_dir())
        return {
            "store": store,
            "png_io_manager": PngIOManager(store=store),
            "io_manager": dg.FilesystemIOManager(),
            "renderer": RenderBackendResource(),
            "started_workers": StartedWorkers(),
        }
    if not os.environ.get("FRACTALS_BUCKET"):
        raise ValueError(f"FRACTALS_BUCKET: the {deployment!r} deployment needs a bucket name; set FRACTALS_BUCKET")
    if deployment == "aws" and not os.environ.get("FRACTALS_LAMBDA_FUNCTION"):
        raise ValueError(
            "FRACTALS_LAMBDA_FUNCTION: the 'aws' deployment renders on Lambda; set it to the render "
            "function's name (`fractal-pipeline deploy` prints it)"
        )
    # dagster_aws is slow to import: only deployments with a bucket load it (every run's process pays).
    from dagster_aws.s3 import S3PickleIOManager, S3Resource

    endpoint = endpoint_from_env()
    region = os.environ.get("AWS_REGION")
    renderer = (
        RenderBackendResource(backend="lambda", function_name=dg.EnvVar("FRACTALS_LAMBDA_FUNCTION"), region_name=region)
        if deployment == "aws"
        else RenderBackendResource()
    )
    store = FractalStoreResource(bucket=dg.EnvVar("FRACTALS_BUCKET"), endpoint_url=endpoint, region_name=region)
    return {
        "store": store,
        "png_io_manager": PngIOManager(store=store),
        "io_manager": S3PickleIOManager(
            s3_resource=S3Resource(endpoint_url=endpoint, region_name=region),
            s3_bucket=dg.EnvVar("FRACTALS_BUCKET"),
            s3_prefix="dagster",
        ),
        "renderer": renderer,
        "started_workers": StartedWorkers(),
    }


def automation_for(bucket_configured: bool, backend: str = "local") -> dg.Definitions:
    """The jobs, sensors and schedule, configured from the environment.

    ``fractal_spec_files`` runs by default when a bucket is configured (uploads
    are picked up without a click in ``dagster dev``), else it ships stopped;
    the schedule always ships stopped. Both guard their batches with the budget
    (``FRACTALS_MAX_BATCH_SECONDS``), predicted for the ``backend`` that renders them.
    """
    interval = sensor_interval_from_env()
    cron = schedule_cron_from_env()
    cost = cost_settings_from_env(backend)
    status = dg.DefaultSensorStatus.RUNNING if bucket_configured else dg.DefaultSensorStatus.STOPPED
    spec_files = spec_files_sensor(
        specs_prefix_from_env(), interval, status, specs_queue_from_env(), reconcile_seconds_from_env(), cost
    )
    return dg.Definitions(
        jobs=[render_job, random_fractals_job],
        sensors=[spec_files, render_after_schedule_sensor(interval, cost), collage_freshness_sensor(interval)],
        schedules=[random_fractals_schedule(cron, cost)],
    )
