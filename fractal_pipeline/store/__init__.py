"""Where PNGs live: one abstraction (:class:`FractalStore`), two backends (a local folder, S3).

The images step and its workers, the PNG IO manager, the Lambda handler and the CLI all use it,
so "where does a PNG go" is decided only here. No Dagster imports: worker processes and the
Lambda handler stay light.
"""

from __future__ import annotations

from fractal_pipeline.store.base import FractalStore
from fractal_pipeline.store.clients import (
    CREDENTIAL_ERRORS,
    CREDENTIAL_VARIABLES,
    aws_error_code,
    aws_error_message,
    s3_client,
    sqs_client,
)
from fractal_pipeline.store.config import (
    ENDPOINT_VARIABLES,
    StoreConfig,
    StoreError,
    default_local_dir,
    endpoint_from_env,
    endpoint_variable,
    store_config_from_env,
)
from fractal_pipeline.store.keys import (
    COLLAGES_PREFIX,
    IMAGES_PREFIX,
    MAX_OBJECT_KEY,
    SPECS_PREFIX,
    collage_key,
    image_key,
    validate_object_key,
)
from fractal_pipeline.store.local import LocalStore
from fractal_pipeline.store.s3 import S3Store


def open_store(config: StoreConfig) -> FractalStore:
    """Build the store ``config`` describes: the bucket if it names one, else the folder."""
    if config.bucket:
        return S3Store(config.bucket, endpoint_url=config.endpoint_url, region_name=config.region_name)
    return LocalStore(config.local_dir or default_local_dir())


__all__ = [
    "COLLAGES_PREFIX",
    "CREDENTIAL_ERRORS",
    "CREDENTIAL_VARIABLES",
    "ENDPOINT_VARIABLES",
    "IMAGES_PREFIX",
    "MAX_OBJECT_KEY",
    "SPECS_PREFIX",
    "FractalStore",
    "LocalStore",
    "S3Store",
    "StoreConfig",
    "StoreError",
    "aws_error_code",
    "aws_error_message",
    "collage_key",
    "default_local_dir",
    "endpoint_from_env",
    "endpoint_variable",
    "image_key",
    "open_store",
    "s3_client",
    "sqs_client",
    "store_config_from_env",
    "validate_object_key",
]
