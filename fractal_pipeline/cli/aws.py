"""``fractal-pipeline deploy`` / ``destroy``: the CloudFormation stack of the AWS deployment.

``register(app)`` adds the two commands to the CLI's typer app; the work is
done by :mod:`fractal_pipeline.aws.deploy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fractal_pipeline.aws.backend import OUTPUT_ENV, aws_error_line, stack_name
from fractal_pipeline.aws.deploy import (
    DEFAULT_STACK,
    TEMPLATE_PATH,
    DeployError,
    client,
    default_network,
    deploy,
    destroy,
)
from fractal_pipeline.aws.session import AwsSettingsError, require_credentials, resolve_region
from fractal_pipeline.cli import console as term
from fractal_pipeline.cli.console import EXIT_FAILED, EXIT_USAGE, fail

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


def _echo(line: str) -> None:
    term.err.print(line, highlight=False, soft_wrap=True)


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
        raise fail(f"stack {name}: {aws_error_line(exc)}") from None
    for key, value in sorted(result.outputs.items()):
        term.console.print(f"{key}: {value}", highlight=False, soft_wrap=True)
    if result.outputs:
        exports = " ".join(f"{env}={result.outputs[key]}" for key, env in OUTPUT_ENV.items() if key in result.outputs)
        if exports:
            term.console.print(f"export {exports}", highlight=False, soft_wrap=True)


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
        raise fail(f"stack {name}: {aws_error_line(exc)}") from None


def register(app: typer.Typer) -> None:
    """Add ``deploy`` and ``destroy`` to the CLI."""
    app.command("deploy")(deploy_command)
    app.command("destroy")(destroy_command)
