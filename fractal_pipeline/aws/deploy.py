"""Create, update and delete the CloudFormation stack of ``deploy/template.yaml`` with boto3.

Deploying is idempotent and can be previewed:

- no stack yet: ``create_stack`` (parameters not given use the template's defaults,
  plus ``create_parameters()``, e.g. the default VPC);
- stack exists: an UPDATE change set, executed; when CloudFormation says it
  "didn't contain changes" the deploy reports ``unchanged`` and does nothing;
  parameters not given keep their previous values;
- ``dry_run``: a CREATE or UPDATE change set is described (each resource to add,
  modify or remove) and deleted again; nothing is executed.

Progress (change set, then every new stack event until the stack settles) goes
to the ``echo`` callback. The endpoint comes from botocore's own settings
(``AWS_ENDPOINT_URL_CLOUDFORMATION`` / ``AWS_ENDPOINT_URL``), so tests run against
moto's server on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from fractal_pipeline.store import aws_error_code, aws_error_message

DEFAULT_STACK = "fractal-pipeline"
TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "deploy" / "template.yaml"
CAPABILITIES = ["CAPABILITY_IAM"]
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
BUSY_SUFFIX = "_IN_PROGRESS"
#: Stacks that exist but can only be deleted (a first create that failed or was only previewed).
DEAD_STATUSES = {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "REVIEW_IN_PROGRESS"}
OK_STATUSES = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}

Echo = Callable[[str], None]


class DeployError(RuntimeError):
    """The stack cannot be deployed or destroyed; the message says why and what to do."""


@dataclass
class DeployResult:
    """What :func:`deploy` did: ``created``, ``updated``, ``unchanged`` or ``dry-run``."""

    stack: str
    action: str
    outputs: dict[str, str] = field(default_factory=dict)
    changes: list[tuple[str, str, str]] = field(default_factory=list)


class _TemplateLoader(yaml.SafeLoader):
    """Reads CloudFormation YAML: short-form intrinsic tags (``!Ref``, ``!Sub``...) become plain mappings."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}": value}


_TemplateLoader.add_multi_constructor("!", _intrinsic)


def load_template(body: str) -> dict[str, Any]:
    """The template as plain data (intrinsic functions in their long form)."""
    data = yaml.load(body, Loader=_TemplateLoader)  # a SafeLoader subclass
    if not isinstance(data, dict) or "Resources" not in data:
        raise DeployError("--template: not a CloudFormation template (no Resources section)")
    return data


def client(service: str, region_name: str | None = None) -> Any:
    """A boto3 client; endpoint and credentials from the environment (botocore's rules)."""
    import boto3

    return boto3.client(service, region_name=region_name)


def describe_stack(cfn: Any, stack: str) -> dict[str, Any] | None:
    """The stack's description, or None if there is no such (live) stack."""
    from botocore.exceptions import ClientError

    try:
        stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if aws_error_code(exc) == "ValidationError" and "does not exist" in aws_error_message(exc):
            return None
        raise
    if not stacks or stacks[0]["StackStatus"] == "DELETE_COMPLETE":
        return None
    description: dict[str, Any] = stacks[0]
    return description


def stack_outputs(description: Mapping[str, Any]) -> dict[str, str]:
    return {item["OutputKey"]: item["OutputValue"] for item in description.get("Outputs", [])}


def default_network(ec2: Any) -> tuple[str, list[str]]:
    """The default VPC and its default subnets (what ``deploy`` uses without ``--vpc``/``--subnets``)."""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise DeployError("--vpc: this region has no default VPC; pass --vpc VPC_ID and --subnets SUBNET_A,SUBNET_B")
    vpc = vpcs[0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    ids = sorted(subnet["SubnetId"] for subnet in subnets if subnet.get("DefaultForAz", True))
    if len(ids) < 2:
        raise DeployError(f"--subnets: the default VPC {vpc} has {len(ids)} subnets; pass --subnets with two or more")
    return vpc, ids


def _wait_for_change_set(cfn: Any, stack: str, change_set: str, timeout_s: float, poll_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        description: dict[str, Any] = cfn.describe_change_set(StackName=stack, ChangeSetName=change_set)
        if description["Status"] in {"CREATE_COMPLETE", "FAILED"}:
            return description
        if time.monotonic() > deadline:
            raise DeployError(f"stack {stack}: change set still {description['Status']} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def _changes(description: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for change in description.get("Changes", []):
        resource = change.get("ResourceChange", {})
        action = resource.get("Action", "?")
        if resource.get("Replacement") == "True":
            action += " (replace)"
        rows.append((action, resource.get("ResourceType", "?"), resource.get("LogicalResourceId", "?")))
    return rows


def _event_line(event: Mapping[str, Any]) -> str:
    stamp = event.get("Timestamp")
    when = stamp.strftime("%H:%M:%S") if isinstance(stamp, datetime) else ""
    reason = event.get("ResourceStatusReason") or ""
    line = (
        f"{when} {event.get('ResourceStatus', '')} {event.get('ResourceType', '')} {event.get('LogicalResourceId', '')}"
    )
    return f"{line} - {reason}" if reason else line


def _new_events(cfn: Any, stack: str, seen: set[str]) -> list[dict[str, Any]]:
    """Stack events not seen before, oldest first."""
    fresh = []
    for page in cfn.get_paginator("describe_stack_events").paginate(StackName=stack):
        for event in page["StackEvents"]:
            if event["EventId"] in seen:
                continue
            seen.add(event["EventId"])
            fresh.append(event)
    return sorted(fresh, key=lambda event: event.get("Timestamp") or datetime.min)


def _seen_events(cfn: Any, stack: str) -> set[str]:
    from botocore.exceptions import ClientError

    try:
        return {event["EventId"] for event in _new_events(cfn, stack, set())}
    except ClientError:
        return set()


def wait_for_stack(
    cfn: Any, stack: str, echo: Echo, seen: set[str], *, timeout_s: float = 3600, poll_s: float = 5
) -> str | None:
    """Print new stack events until the stack is no longer ``*_IN_PROGRESS``; its final status (None = gone)."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            for event in _new_events(cfn, stack, seen):
                echo(_event_line(event))
        except ClientError as exc:
            if "does not exist" not in aws_error_message(exc):
                raise
        description = describe_stack(cfn, stack)
        status = description["StackStatus"] if description else None
        if status is None or not status.endswith(BUSY_SUFFIX) or status == "REVIEW_IN_PROGRESS":
            return status
        if time.monotonic() > deadline:
            raise DeployError(f"stack {stack}: still {status} after {timeout_s:.0f} s; watch it in the console")
        time.sleep(poll_s)


def _failure_reason(cfn: Any, stack: str) -> str:
    from botocore.exceptions import ClientError

    try:
        for page in cfn.get_paginator("describe_stack_events").paginate(StackName=stack):
            for event in page["StackEvents"]:
                if event.get("ResourceStatus", "").endswith("_FAILED") and event.get("ResourceStatusReason"):
                    return f"{event['LogicalResourceId']}: {event['ResourceStatusReason']}"
    except ClientError:
        pass
    return "see the stack's events"


def deploy(
    stack: str,
    template_body: str,
    parameters: Mapping[str, str],
    *,
    cfn: Any,
    echo: Echo = print,
    dry_run: bool = False,
    create_parameters: Callable[[], Mapping[str, str]] | None = None,
    timeout_s: float = 3600,
    poll_s: float = 5,
) -> DeployResult:
    """Create or update ``stack`` from the template through a change set (see the module docstring).

    ``parameters`` are the ones given explicitly. On create, ``create_parameters()``
    supplies more (e.g. the default VPC); on update, every other parameter the stack
    already has keeps its previous value.
    """
    description = describe_stack(cfn, stack)
    status = description["StackStatus"] if description else None
    if status in DEAD_STATUSES:
        if dry_run:
            raise DeployError(f"stack {stack} is {status} and must be deleted first; run `fractal-pipeline destroy`")
        echo(f"stack {stack} is {status} (a failed first deploy); deleting it before creating it again")
        destroy(stack, cfn=cfn, echo=echo, timeout_s=timeout_s, poll_s=poll_s)
        status = description = None
    elif status is not None and status.endswith(BUSY_SUFFIX):
        raise DeployError(f"stack {stack} is busy ({status}); wait until it finishes, then deploy again")
    kind = "CREATE" if status is None else "UPDATE"
    values = _parameter_values(template_body, parameters, kind, description, create_parameters)
    seen = _seen_events(cfn, stack) if status is not None else set()
    if kind == "CREATE" and not dry_run:
        echo(f"creating stack {stack}")
        cfn.create_stack(
            StackName=stack, TemplateBody=template_body, Parameters=values, Capabilities=CAPABILITIES, Tags=STACK_TAGS
        )
        return _finish(cfn, stack, "created", [], echo, seen, timeout_s, poll_s)
    change_set = f"fractal-pipeline-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1_000_000:06d}"
    echo(f"{'previewing' if dry_run else 'updating'} stack {stack}: change set {change_set}")
    if not _create_change_set(cfn, stack, change_set, kind, template_body, values):
        echo(f"stack {stack} is up to date: no changes")
        return DeployResult(stack, "unchanged", stack_outputs(description or {}))
    described = _wait_for_change_set(cfn, stack, change_set, timeout_s, poll_s)
    if described["Status"] == "FAILED":
        return _failed_change_set(cfn, stack, change_set, kind, str(described.get("StatusReason", "")), echo)
    changes = _changes(described)
    for action, resource_type, logical_id in changes:
        echo(f"  {action:<10} {resource_type:<45} {logical_id}")
    if dry_run:
        cfn.delete_change_set(StackName=stack, ChangeSetName=change_set)
        if kind == "CREATE":
            cfn.delete_stack(StackName=stack)
        echo(f"dry run: {len(changes)} changes to stack {stack}; nothing was executed")
        return DeployResult(stack, "dry-run", changes=changes)
    cfn.execute_change_set(StackName=stack, ChangeSetName=change_set)
    return _finish(cfn, stack, "updated", changes, echo, seen, timeout_s, poll_s)


#: Tags every stack this CLI creates carries.
STACK_TAGS = [{"Key": "project", "Value": "fractal-pipeline"}]


def _parameter_values(
    template_body: str,
    parameters: Mapping[str, str],
    kind: str,
    description: Mapping[str, Any] | None,
    create_parameters: Callable[[], Mapping[str, str]] | None,
) -> list[dict[str, Any]]:
    """The stack's parameters: those given; on create, ``create_parameters()``; on update, the previous values."""
    declared = set(load_template(template_body).get("Parameters") or {})
    unknown = sorted(set(parameters) - declared)
    if unknown:
        raise DeployError(
            f"--param: the template has no parameter {unknown[0]!r}; it has {', '.join(sorted(declared)) or 'none'}"
        )
    values: list[dict[str, Any]] = [{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()]
    if kind == "CREATE" and create_parameters is not None:
        extra = {key: value for key, value in create_parameters().items() if key in declared and key not in parameters}
        values += [{"ParameterKey": key, "ParameterValue": value} for key, value in extra.items()]
    elif kind == "UPDATE" and description is not None:
        previous = {item["ParameterKey"] for item in description.get("Parameters", [])}
        values += [
            {"ParameterKey": key, "UsePreviousValue": True} for key in sorted((previous & declared) - set(parameters))
        ]
    return values


def _create_change_set(
    cfn: Any, stack: str, change_set: str, kind: str, template_body: str, values: list[dict[str, Any]]
) -> bool:
    """Create the change set; False if the server refuses an empty update up front (some implementations do)."""
    from botocore.exceptions import ClientError

    try:
        cfn.create_change_set(
            StackName=stack,
            ChangeSetName=change_set,
            ChangeSetType=kind,
            TemplateBody=template_body,
            Parameters=values,
            Capabilities=CAPABILITIES,
            Tags=STACK_TAGS,
        )
    except ClientError as exc:
        if kind == "UPDATE" and any(text in aws_error_message(exc) for text in NO_CHANGES):
            return False
        raise
    return True


def _failed_change_set(cfn: Any, stack: str, change_set: str, kind: str, reason: str, echo: Echo) -> DeployResult:
    """A change set that failed: "no changes" is an up-to-date stack; anything else is a DeployError."""
    cfn.delete_change_set(StackName=stack, ChangeSetName=change_set)
    if kind == "UPDATE" and any(text in reason for text in NO_CHANGES):
        echo(f"stack {stack} is up to date: no changes")
        return DeployResult(stack, "unchanged", stack_outputs(describe_stack(cfn, stack) or {}))
    if kind == "CREATE":
        cfn.delete_stack(StackName=stack)  # the empty REVIEW_IN_PROGRESS stack the change set made
    raise DeployError(f"stack {stack}: change set failed: {reason}")


def _finish(
    cfn: Any,
    stack: str,
    action: str,
    changes: list[tuple[str, str, str]],
    echo: Echo,
    seen: set[str],
    timeout_s: float,
    poll_s: float,
) -> DeployResult:
    final = wait_for_stack(cfn, stack, echo, seen, timeout_s=timeout_s, poll_s=poll_s)
    if final not in OK_STATUSES:
        raise DeployError(f"stack {stack}: {final}: {_failure_reason(cfn, stack)}")
    outputs = stack_outputs(describe_stack(cfn, stack) or {})
    echo(f"stack {stack}: {final}")
    return DeployResult(stack, action, outputs, changes)


def destroy(stack: str, *, cfn: Any, echo: Echo = print, timeout_s: float = 3600, poll_s: float = 5) -> bool:
    """Delete ``stack``; False (and a message) if it was already gone. Retained resources are listed."""
    description = describe_stack(cfn, stack)
    if description is None:
        echo(f"stack {stack} does not exist: already gone")
        return False
    status = description["StackStatus"]
    if status.endswith(BUSY_SUFFIX) and status != "REVIEW_IN_PROGRESS":
        raise DeployError(f"stack {stack} is busy ({status}); wait until it finishes, then destroy again")
    kept = retained_resources(cfn, stack)
    seen = _seen_events(cfn, stack)
    echo(f"deleting stack {stack} ({status})")
    cfn.delete_stack(StackName=stack)
    final = wait_for_stack(cfn, stack, echo, seen, timeout_s=timeout_s, poll_s=poll_s)
    if final is not None:
        raise DeployError(f"stack {stack}: {final}: {_failure_reason(cfn, stack)}")
    echo(f"stack {stack} deleted")
    for policy, resource_type, physical_id in kept:
        what = "a final snapshot of" if policy == "Snapshot" else "kept"
        echo(f"{what} {resource_type} {physical_id} (DeletionPolicy {policy}); delete it when no longer needed")
    return True


def retained_resources(cfn: Any, stack: str) -> list[tuple[str, str, str]]:
    """(DeletionPolicy, type, physical id) of the stack's resources that deleting it keeps."""
    body = cfn.get_template(StackName=stack)["TemplateBody"]
    template = body if isinstance(body, dict) else load_template(body)
    policies = {
        logical_id: resource.get("DeletionPolicy")
        for logical_id, resource in (template.get("Resources") or {}).items()
        if resource.get("DeletionPolicy") in ("Retain", "RetainExceptOnCreate", "Snapshot")
    }
    kept = []
    for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack):
        for resource in page["StackResourceSummaries"]:
            policy = policies.get(resource.get("LogicalResourceId", ""))
            if policy and resource.get("PhysicalResourceId"):
                kept.append((policy, resource.get("ResourceType", "?"), resource["PhysicalResourceId"]))
    return kept
