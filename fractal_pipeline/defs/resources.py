"""Dagster resources: where PNGs are stored and how rendering fans out."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import dagster as dg
from pydantic import Field

from fractal_pipeline.store import FractalStore, StoreConfig, open_store
from fractal_pipeline.workers.pool import (
    MAX_WORKERS_PER_CPU,
    StartedWorkers,
    default_workers,
    max_workers,
    render_many,
)
from fractal_pipeline.workers.results import RenderFailure, RenderResult


class FractalStoreResource(dg.ConfigurableResource):
    """The PNG store: an S3 bucket when ``bucket`` is set, else a local folder.

    The same store is used by the images step, its worker processes, the PNG
    IO manager and the CLI.
    """

    bucket: str | None = Field(default=None, description="S3 bucket (FRACTALS_BUCKET); unset = local folder")
    local_dir: str | None = Field(
        default=None, description="Folder for PNGs when no bucket is set (FRACTALS_DIR; default $DAGSTER_HOME/fractals)"
    )
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (AWS_ENDPOINT_URL or MINIO_ENDPOINT); unset = AWS"
    )
    region_name: str | None = Field(default=None, description="AWS region of the bucket")

    def store_config(self) -> StoreConfig:
        """Picklable description of this store, for worker processes."""
        return StoreConfig(
            bucket=self.bucket or None,
            local_dir=None if self.bucket else self.local_dir,
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
        )

    def get_store(self) -> FractalStore:
        """Open the store (builds a boto3 client for S3)."""
        return open_store(self.store_config())


class RenderBackendResource(dg.ConfigurableResource):
    """How ``fractal_images`` renders a batch: a local process pool (default) or Lambda.

    The asset only calls :meth:`render`; which backend runs the work is this
    resource's business, chosen per deployment in ``definitions.py``. Both
    backends render and store with the same ``render_spec``/``store_rendered``
    (``workers.results.render_and_store``) and yield the same
    ``RenderResult``/``RenderFailure`` objects.
    """

    backend: str = Field(
        default="local", description="'local' (process pool) or 'lambda' (chunks invoked with PipesLambdaClient)"
    )
    workers: int = Field(default=0, ge=0, description="Worker processes; 0 = one per CPU")
    function_name: str | None = Field(
        default=None, description="Lambda render function (FRACTALS_LAMBDA_FUNCTION); backend 'lambda' only"
    )
    chunk_size: int = Field(default=8, ge=1, le=1000, description="Specs per Lambda invocation")
    concurrency: int = Field(default=16, ge=1, le=1000, description="Concurrent Lambda invocations per step")
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="Invocations per chunk; failed chunks only are retried"
    )
    region_name: str | None = Field(default=None, description="AWS region of the Lambda function")

    def lambda_client(self) -> Any:
        """The boto3 Lambda client the ``lambda`` backend invokes through."""
        from fractal_pipeline.aws.lambda_backend import lambda_client

        return lambda_client(self.region_name)

    def render(
        self,
        context: dg.AssetExecutionContext,
        keys: Sequence[str],
        store: StoreConfig,
        workers: int = 0,
        heartbeat_s: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        started: StartedWorkers | None = None,
        on_stop: Callable[[dict[str, str]], None] | None = None,
    ) -> Generator[RenderResult | RenderFailure | None, None, None]:
        """Render and store ``keys``, yielding each outcome as soon as it is stored.

        With ``heartbeat_s``, also ``None`` whenever that long passes without an outcome. Once
        ``should_stop()`` says so, no more work is started and local workers are stopped.
        ``started``: local workers started ahead of the batch (:class:`StartedWorkers`), used when they fit.
        ``on_stop``: see :func:`render_many`.
        """
        if self.backend != "local" and started is not None:
            started.close()
        if self.backend == "lambda":
            from fractal_pipeline.aws.lambda_backend import lambda_bucket, render_with_lambda

            if not self.function_name:
                raise ValueError(
                    "FRACTALS_LAMBDA_FUNCTION: the lambda backend needs the render function's name; "
                    "set FRACTALS_LAMBDA_FUNCTION (`fractal-pipeline deploy` prints it)"
                )
            lambda_bucket(store)  # before building a client: a local store is a config error
            yield from render_with_lambda(
                context,
                keys,
                store,
                function_name=self.function_name,
                client=self.lambda_client(),
                chunk_size=self.chunk_size,
                concurrency=self.concurrency,
                max_attempts=self.max_attempts,
                heartbeat_s=heartbeat_s,
                on_stop=on_stop,
            )
            return
        if self.backend != "local":
            raise ValueError(f"renderer.backend: unknown backend {self.backend!r}; use 'local' or 'lambda'")
        count = workers or self.workers or default_workers()
        if count > max_workers():
            context.log.warning(f"workers: {count} is more than {MAX_WORKERS_PER_CPU} per CPU; using {max_workers()}")
            count = max_workers()
        context.log.info(f"rendering {len(keys)} partitions with {min(count, len(keys))} local worker processes")
        yield from render_many(
            keys, store, count, heartbeat_s=heartbeat_s, should_stop=should_stop, started=started, on_stop=on_stop
        )
