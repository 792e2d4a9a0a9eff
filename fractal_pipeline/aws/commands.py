"""``fractal-pipeline deploy`` / ``destroy``, and what ``run --backend lambda`` needs from the stack.

``register(app)`` adds the two commands to the CLI's typer app; the work is
done by :mod:`fractal_pipeline.aws.deploy`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fractal_pipeline.aws.deploy import (
    DEFAULT_STACK,
    TEMPLATE_PATH,
    DeployError,
    client,
    default_network,
    deploy,
    describe_stack,
    destroy,
    stack_outputs,
)
from fractal_pipeline.aws.session import AwsSettingsError, require_credentials, resolve_region
from fractal_pipeline.console import EXIT_FAILED, EXIT_USAGE, fail
from fractal_pipeline.store import aws_error_code, aws_error_message

console = Console()
err = Console(stderr=True)

#: Stack states in which the render function and bucket exist and can be used.
USABLE_STATUSES = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}
#: Where the stack's outputs go in the environment of a run (and of the ECS tasks).
OUTPUT_ENV = {"BucketName": "FRACTALS_BUCKET", "RenderFunctionName": "FRACTALS_LAMBDA_FUNCTION"}

StackOption = Annotated[
    str | None, typer.Option("--stack", help=f"Stack name (default: $FRACTALS_STACK or {DEFAULT_STACK})")
]
RegionOption = Annotated[
    str | None,
    typer.Option("--region", help="AWS region (default: AWS_REGION, then AWS_DEFAULT_REGION, then the profile's)"),
]


def aws_settings(region: str | None) -> str:
    """The region to use, with credentials checked: one line and exit 2 if either is missing."""
    try:
        chosen = resolve_region(region)
        require_credentials()
    except AwsSettingsError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    return chosen


def stack_name(stack: str | None = None) -> str:
    return stack or os.environ.get("FRACTALS_STACK") or DEFAULT_STACK


def _aws_error(exc: Exception) -> str:
    return f"{aws_error_code(exc) or type(exc).__name__}: {aws_error_message(exc)}"


def _echo(line: str) -> None:
    err.print(line, highlight=False, soft_wrap=True)


def _parameters(
    bucket: str | None,
    app_tag: str | None,
    render_tag: str | None,
    ui_cidr: str | None,
    vpc: str | None,
    subnets: str | None,
    params: list[str],
) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DeployError(f"--param: expected KEY=VALUE, got {item!r}")
        values[key] = value
    named = {
        "BucketName": bucket,
        "AppImageTag": app_tag,
        "RenderImageTag": render_tag,
        "UiCidr": ui_cidr,
        "VpcId": vpc,
        "SubnetIds": subnets,
    }
    values.update({key: value for key, value in named.items() if value is not None})
    if ("VpcId" in values) != ("SubnetIds" in values):
        raise DeployError("--vpc: pass --vpc and --subnets together (or neither, for the default VPC)")
    return values


def deploy_command(
    stack: StackOption = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="Bucket name (default: generated)")] = None,
    app_image_tag: Annotated[str | None, typer.Option(help="Tag of the Dagster image in the ECR repository")] = None,
    render_image_tag: Annotated[str | None, typer.Option(help="Tag of the render function image")] = None,
    ui_cidr: Annotated[
        str | None, typer.Option(help="Network allowed to open the Dagster UI, e.g. 203.0.113.7/32")
    ] = None,
    vpc: Annotated[str | None, typer.Option(help="VPC id (default: the region's default VPC)")] = None,
    subnets: Annotated[str | None, typer.Option(help="Comma-separated subnet ids, two or more AZs")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Any template parameter, KEY=VALUE")] = None,
    template: Annotated[Path, typer.Option(help="CloudFormation template")] = TEMPLATE_PATH,
    region: RegionOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the change set, execute nothing")] = False,
) -> None:
    """Create or update the AWS stack (deploy/template.yaml); re-running with no change does nothing."""
    from botocore.exceptions import BotoCoreError, ClientError

    name = stack_name(stack)
    try:
        body = template.read_text()
    except OSError as exc:
        raise fail(f"--template: cannot read {template}: {exc.strerror}", EXIT_USAGE) from None
    region = aws_settings(region)
    try:
        parameters = _parameters(bucket, app_image_tag, render_image_tag, ui_cidr, vpc, subnets, param or [])

        def network() -> dict[str, str]:
            vpc_id, subnet_ids = default_network(client("ec2", region))
            _echo(f"using the default VPC {vpc_id} and its subnets {', '.join(subnet_ids)}")
            return {"VpcId": vpc_id, "SubnetIds": ",".join(subnet_ids)}

        result = deploy(
            name,
            body,
            parameters,
            cfn=client("cloudformation", region),
            echo=_echo,
            dry_run=dry_run,
            create_parameters=network,
        )
    except DeployError as exc:
        raise fail(str(exc), EXIT_USAGE if str(exc).startswith("--") else EXIT_FAILED) from None
    except (ClientError, BotoCoreError) as exc:
        raise fail(f"stack {name}: {_aws_error(exc)}") from None
    for key, value in sorted(result.outputs.items()):
        console.print(f"{key}: {value}", highlight=False, soft_wrap=True)
    if result.outputs:
        exports = " ".join(f"{env}={result.outputs[key]}" for key, env in OUTPUT_ENV.items() if key in result.outputs)
        if exports:
            console.print(f"export {exports}", highlight=False, soft_wrap=True)


def destroy_command(stack: StackOption = None, region: RegionOption = None) -> None:
    """Delete the AWS stack; the bucket and a final database snapshot are kept. Already gone: exits 0."""
    from botocore.exceptions import BotoCoreError, ClientError

    name = stack_name(stack)
    region = aws_settings(region)
    try:
        destroy(name, cfn=client("cloudformation", region), echo=_echo)
    except DeployError as exc:
        raise fail(str(exc)) from None
    except (ClientError, BotoCoreError) as exc:
        raise fail(f"stack {name}: {_aws_error(exc)}") from None


def register(app: typer.Typer) -> None:
    """Add ``deploy`` and ``destroy`` to the CLI."""
    app.command("deploy")(deploy_command)
    app.command("destroy")(destroy_command)


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
        raise ValueError(f"--backend lambda: cannot read stack {name!r} in {where} ({_aws_error(exc)})") from None
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
