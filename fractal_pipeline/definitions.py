"""``defs`` for the deployment the environment selects: merges what ``defs/`` defines, nothing else."""

from __future__ import annotations

import os

import dagster as dg

from fractal_pipeline.defs.assets import assets
from fractal_pipeline.defs.deployment import automation_for, deployment_name, resources_for


def build_definitions(deployment: str | None = None) -> dg.Definitions:
    """Definitions for ``deployment`` (default: from the environment; see :mod:`fractal_pipeline.defs.deployment`)."""
    deployment = deployment or deployment_name()
    bucket_configured = deployment != "local" and bool(os.environ.get("FRACTALS_BUCKET"))
    return dg.Definitions.merge(
        dg.Definitions(assets=assets),
        automation_for(bucket_configured, "lambda" if deployment == "aws" else "local"),
        dg.Definitions(resources=resources_for(deployment)),
    )


defs = build_definitions()
