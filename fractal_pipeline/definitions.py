"""The one place everything is wired: assets, checks, resources per deployment.

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
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from fractal_pipeline.assets import fractal_collage, fractal_images, fractal_specs
from fractal_pipeline.automation import automation_for
from fractal_pipeline.io_managers import PngIOManager
from fractal_pipeline.resources import FractalStoreResource, RenderBackendResource
from fractal_pipeline.store import default_local_dir, endpoint_from_env

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
        }
    if not os.environ.get("FRACTALS_BUCKET"):
        raise ValueError(f"FRACTALS_BUCKET: the {deployment!r} deployment needs a bucket name; set FRACTALS_BUCKET")
    if deployment == "aws" and not os.environ.get("FRACTALS_LAMBDA_FUNCTION"):
        raise ValueError(
            "FRACTALS_LAMBDA_FUNCTION: the 'aws' deployment renders on Lambda; set it to the render "
            "function's name (`fractal-pipeline deploy` prints it)"
        )
    # dagster_aws costs ~1 s of import: only deployments with a bucket load it (every run's process pays).
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
    }


def build_definitions(deployment: str | None = None) -> dg.Definitions:
    """Definitions for ``deployment`` (default: from the environment)."""
    deployment = deployment or deployment_name()
    automation = automation_for(bucket_configured=deployment != "local" and bool(os.environ.get("FRACTALS_BUCKET")))
    return dg.Definitions(
        assets=[fractal_specs, fractal_images, fractal_collage],
        jobs=automation.jobs,
        sensors=automation.sensors,
        schedules=automation.schedules,
        resources=resources_for(deployment),
    )


defs = build_definitions()
