"""What ``run --backend lambda`` needs from the deployed stack: its function and bucket, in the environment."""

from __future__ import annotations

import os
from typing import Any

from fractal_pipeline.aws.deploy import DEFAULT_STACK, client, describe_stack, stack_outputs
from fractal_pipeline.aws.session import AwsSettingsError, require_credentials, resolve_region
from fractal_pipeline.store import aws_error_code, aws_error_message

#: Stack states in which the render function and bucket exist and can be used.
USABLE_STATUSES = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}
#: Where the stack's outputs go in the environment of a run (and of the ECS tasks).
OUTPUT_ENV = {"BucketName": "FRACTALS_BUCKET", "RenderFunctionName": "FRACTALS_LAMBDA_FUNCTION"}


def stack_name(stack: str | None = None) -> str:
    """The stack to use: ``stack``, else ``FRACTALS_STACK``, else the default name."""
    return stack or os.environ.get("FRACTALS_STACK") or DEFAULT_STACK


def aws_error_line(exc: Exception) -> str:
    """An AWS error as ``Code: message``."""
    return f"{aws_error_code(exc) or type(exc).__name__}: {aws_error_message(exc)}"


def use_backend(backend: str, stack: str | None = None, region: str | None = None) -> str | None:
    """Point this process at a render backend for ``run --backend``; a line saying what was chosen.

    ``local`` changes nothing. ``lambda`` reads the deployed stack's outputs and
    sets ``FRACTAL_DEPLOYMENT=aws``, ``FRACTALS_LAMBDA_FUNCTION`` and
    ``FRACTALS_BUCKET`` (the function may only write to the stack's bucket).
    Raises ValueError, naming the option, when that is not possible.
    """
    if backend == "local":
        return None
    if backend != "lambda":
        raise ValueError(f"--backend: unknown backend {backend!r}; use local or lambda")
    from botocore.exceptions import BotoCoreError, ClientError

    name = stack_name(stack)
    try:
        region = resolve_region(region)
        require_credentials()
    except AwsSettingsError as exc:
        raise ValueError(str(exc)) from None
    cfn: Any = client("cloudformation", region)
    where = cfn.meta.region_name
    try:
        description = describe_stack(cfn, name)
    except (ClientError, BotoCoreError) as exc:
        raise ValueError(f"--backend lambda: cannot read stack {name!r} in {where} ({aws_error_line(exc)})") from None
    if description is None:
        raise ValueError(
            f"--backend lambda: stack {name!r} is not deployed in {where}; "
            "run `fractal-pipeline deploy` first, or use --backend local"
        )
    if description["StackStatus"] not in USABLE_STATUSES:
        raise ValueError(f"--backend lambda: stack {name!r} is {description['StackStatus']}; deploy it again first")
    outputs = stack_outputs(description)
    missing = [key for key in OUTPUT_ENV if not outputs.get(key)]
    if missing:
        raise ValueError(f"--backend lambda: stack {name!r} has no {missing[0]} output; deploy deploy/template.yaml")
    for key, env in OUTPUT_ENV.items():
        os.environ[env] = outputs[key]
    os.environ["FRACTAL_DEPLOYMENT"] = "aws"
    os.environ["AWS_REGION"] = region  # the run's Lambda and S3 clients use the stack's region
    return f"rendering on Lambda {outputs['RenderFunctionName']} (stack {name}), PNGs in s3://{outputs['BucketName']}"
