"""boto3 clients with retries, and the mapping of AWS error codes to the setting a user fixes."""

from __future__ import annotations

from typing import Any


def aws_error_code(exc: BaseException) -> str:
    """The error code of a botocore ``ClientError`` (e.g. ``NoSuchKey``, ``404``), or "" for other errors."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def aws_error_message(exc: BaseException) -> str:
    """The service's error message of a botocore ``ClientError``, else the exception's text."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Message", exc))


#: AWS error codes (S3, SQS, STS-style) that mean the credentials themselves are wrong: the variable to fix.
CREDENTIAL_VARIABLES = {
    "InvalidAccessKeyId": "AWS_ACCESS_KEY_ID",
    "InvalidClientTokenId": "AWS_ACCESS_KEY_ID",
    "UnrecognizedClientException": "AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "AWS_SECRET_ACCESS_KEY",
    "IncompleteSignature": "AWS_SECRET_ACCESS_KEY",
    "ExpiredToken": "AWS_SESSION_TOKEN",
    "ExpiredTokenException": "AWS_SESSION_TOKEN",
    "InvalidToken": "AWS_SESSION_TOKEN",
}

#: The S3 ones, as one-line messages.
CREDENTIAL_ERRORS = {
    "InvalidAccessKeyId": (
        "AWS_ACCESS_KEY_ID: S3{where} does not accept the access key id ({code}: deleted, deactivated "
        "or mistyped); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, to a valid key"
    ),
    "SignatureDoesNotMatch": (
        "AWS_SECRET_ACCESS_KEY: the secret access key does not belong to the access key id ({code}){where}; "
        "fix AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    ),
    "ExpiredToken": (
        "AWS_SESSION_TOKEN: the temporary credentials have expired ({code}){where}; "
        "refresh them (AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN)"
    ),
    "InvalidToken": (
        "AWS_SESSION_TOKEN: the session token is not valid ({code}){where}; "
        "refresh the credentials (AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN)"
    ),
}


def aws_client(service: str, endpoint_url: str | None, region_name: str | None, attempts: int = 8) -> Any:
    """A boto3 client with adaptive retries (outages are retried with backoff, ~30 s for 8 attempts)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": attempts, "mode": "adaptive"}, connect_timeout=5, read_timeout=30)
    return boto3.client(service, endpoint_url=endpoint_url, region_name=region_name or "us-east-1", config=config)


def s3_client(endpoint_url: str | None = None, region_name: str | None = None) -> Any:
    """A boto3 S3 client with adaptive retries (outages are retried with backoff)."""
    return aws_client("s3", endpoint_url, region_name)


def sqs_client(endpoint_url: str | None = None, region_name: str | None = None) -> Any:
    """A boto3 SQS client for the store's endpoint and region (the spec-file notifications queue)."""
    return aws_client("sqs", endpoint_url, region_name)
