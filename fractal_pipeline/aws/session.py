"""The AWS region and credentials of a command that talks to AWS (``deploy``, ``destroy``, ``run --backend lambda``).

The region comes from ``--region``, then ``AWS_REGION``, then ``AWS_DEFAULT_REGION``,
then the profile's ``region``: the order the AWS CLI v2 uses (botocore alone reads
only ``AWS_DEFAULT_REGION`` and the profile). Both are checked before anything
is sent, so a missing one is a one-line error naming the variable to set.
"""

from __future__ import annotations

import os
import re
from typing import Any

#: e.g. us-east-1, eu-central-2, us-gov-west-1, cn-north-1, ap-southeast-5.
_REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")


class AwsSettingsError(ValueError):
    """The AWS region or credentials are missing or unusable; the message names the variable to fix."""


def resolve_region(option: str | None = None) -> str:
    """The region a command uses (see the module docstring); :class:`AwsSettingsError` if there is none."""
    for name, value in (
        ("--region", option),
        ("AWS_REGION", os.environ.get("AWS_REGION")),
        ("AWS_DEFAULT_REGION", os.environ.get("AWS_DEFAULT_REGION")),
    ):
        if value is not None and value.strip():
            return _checked(name, value.strip())
    region = _session().region_name
    if not region:
        raise AwsSettingsError(
            "AWS_REGION: no AWS region is set; pass --region, or set AWS_REGION (or a region in your AWS profile)"
        )
    return _checked("the AWS profile's region", region)


def require_credentials() -> None:
    """:class:`AwsSettingsError` unless botocore finds credentials (variables, profile, SSO, instance role)."""
    from botocore.exceptions import BotoCoreError

    try:
        credentials = _session().get_credentials()
    except BotoCoreError as exc:
        raise AwsSettingsError(f"AWS_PROFILE: the AWS credentials cannot be loaded ({exc}); fix the profile") from None
    if credentials is None:
        raise AwsSettingsError(
            "AWS_ACCESS_KEY_ID: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(and AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE"
        )


def _checked(name: str, region: str) -> str:
    if not _REGION_RE.fullmatch(region):
        raise AwsSettingsError(f"{name}: {region!r} is not an AWS region; use one such as us-east-1 or eu-west-1")
    return region


def _session() -> Any:
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.session.Session()
    except ProfileNotFound:
        profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or ""
        raise AwsSettingsError(
            f"AWS_PROFILE: profile {profile!r} is not in the AWS config; fix AWS_PROFILE or unset it"
        ) from None
