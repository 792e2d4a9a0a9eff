"""Which store the environment asks for: the bucket ``FRACTALS_BUCKET`` names, else a local folder."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path


class StoreError(RuntimeError):
    """The store cannot be used as configured; the message says which setting to fix.

    ``transient`` is true when the store could not be reached (an outage worth
    retrying), false when the configuration itself is wrong.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class StoreConfig:
    """Picklable description of a store, to rebuild it in a worker process."""

    bucket: str | None = None
    local_dir: str | None = None
    endpoint_url: str | None = None
    region_name: str | None = None

    @property
    def description(self) -> str:
        """Human-readable location, e.g. ``s3://bucket`` or a folder path."""
        if self.bucket:
            suffix = f" at {self.endpoint_url}" if self.endpoint_url else ""
            return f"s3://{self.bucket}{suffix}"
        return str(Path(self.local_dir or default_local_dir()).resolve())


def default_local_dir() -> str:
    """``FRACTALS_DIR``, else ``$DAGSTER_HOME/fractals``, else ``./.fractals``."""
    if os.environ.get("FRACTALS_DIR"):
        return os.environ["FRACTALS_DIR"]
    if os.environ.get("DAGSTER_HOME"):
        return str(Path(os.environ["DAGSTER_HOME"]) / "fractals")
    return ".fractals"


ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "MINIO_ENDPOINT")


def endpoint_from_env() -> str | None:
    """S3 endpoint override: ``AWS_ENDPOINT_URL``, or ``MINIO_ENDPOINT`` as an alias.

    ValueError, naming the variable that is set, if it is not an http(s) URL.
    """
    for name in ENDPOINT_VARIABLES:
        value = (os.environ.get(name) or "").strip()
        if value:
            parsed = urllib.parse.urlsplit(value)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"{name}: {value!r} is not an http(s) URL; use e.g. http://127.0.0.1:9000")
            return value
    return None


def endpoint_variable(endpoint: str | None) -> str:
    """The environment variable that set ``endpoint`` (for errors about it)."""
    for name in ENDPOINT_VARIABLES:
        if endpoint and (os.environ.get(name) or "").strip() == endpoint:
            return name
    return ENDPOINT_VARIABLES[0]


def store_config_from_env() -> StoreConfig:
    """The store the environment asks for: S3 if ``FRACTALS_BUCKET`` is set, else a folder."""
    bucket = os.environ.get("FRACTALS_BUCKET") or None
    if bucket:
        return StoreConfig(bucket=bucket, endpoint_url=endpoint_from_env(), region_name=os.environ.get("AWS_REGION"))
    return StoreConfig(local_dir=default_local_dir())
