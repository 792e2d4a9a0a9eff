"""Dagster resources: where PNGs are stored and how rendering fans out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import dagster as dg
from pydantic import Field

from fractal_pipeline.rendering import RenderFailure, RenderResult, default_workers, render_many
from fractal_pipeline.store import FractalStore, StoreConfig


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
        return self.store_config().open()


class RenderBackendResource(dg.ConfigurableResource):
    """How ``fractal_images`` renders a batch: a local process pool (default).

    The asset only calls :meth:`render`; which backend runs the work is this
    resource's business, chosen per deployment in ``definitions.py``.
    """

    backend: str = Field(default="local", description="'local' (process pool)")
    workers: int = Field(default=0, ge=0, description="Worker processes; 0 = one per CPU")

    def render(
        self,
        context: dg.AssetExecutionContext,
        keys: Sequence[str],
        store: StoreConfig,
        workers: int = 0,
    ) -> Iterator[RenderResult | RenderFailure]:
        """Render and store ``keys``, yielding each outcome as soon as it is stored."""
        count = workers or self.workers or default_workers()
        context.log.info(f"rendering {len(keys)} partitions with {min(count, len(keys))} local worker processes")
        yield from render_many(keys, store, count)
