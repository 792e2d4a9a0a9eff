"""PNGs in an S3 bucket (AWS or any S3-compatible server)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from fractal_pipeline.store.base import FractalStore
from fractal_pipeline.store.clients import CREDENTIAL_ERRORS, aws_client, aws_error_code, s3_client
from fractal_pipeline.store.config import StoreConfig, StoreError, endpoint_variable
from fractal_pipeline.store.keys import BUCKET_RE, validate_object_key


class S3Store(FractalStore):
    """PNGs in an S3 bucket (AWS or any S3-compatible server). One PUT per
    object, so a key holds either the old bytes or the new, never half."""

    def __init__(
        self, bucket: str, *, endpoint_url: str | None = None, region_name: str | None = None, client: Any = None
    ) -> None:
        self.bucket = bucket
        self.config = StoreConfig(bucket=bucket, endpoint_url=endpoint_url, region_name=region_name)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.config.endpoint_url, self.config.region_name)
        return self._client

    @functools.cached_property
    def check_client(self) -> Any:
        """What :meth:`check` asks with: the given client, else one with few retries, so that a store that is
        down says so in seconds instead of after the ~30 s an upload retries for."""
        if self._client is not None:
            return self._client
        return aws_client("s3", self.config.endpoint_url, self.config.region_name, attempts=2)

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=validate_object_key(key), Body=data, ContentType="image/png")
        return self.location(key)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=validate_object_key(key))
        except ClientError as exc:
            if aws_error_code(exc) in {"NoSuchKey", "404"}:
                raise KeyError(key) from None
            raise
        data: bytes = response["Body"].read()
        return data

    def exists(self, key: str, *, quick: bool = False) -> bool:
        from botocore.exceptions import ClientError

        client = self.check_client if quick else self.client
        try:
            client.head_object(Bucket=self.bucket, Key=validate_object_key(key))
        except ClientError as exc:
            if aws_error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
                return False
            raise
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=validate_object_key(key))

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _denied_code(self) -> str:
        """Why S3 refused a HEAD request (a 403 without a body): the error code a GET is refused with,
        if it is about the credentials or access; else ""."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except ClientError as exc:
            code = aws_error_code(exc)
            return code if code in CREDENTIAL_ERRORS or code == "AccessDenied" else ""
        except BotoCoreError:
            return ""
        return ""

    def check(self) -> None:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            ParamValidationError,
            PartialCredentialsError,
        )

        where = f" at {self.config.endpoint_url}" if self.config.endpoint_url else ""
        invalid = StoreError(
            f"FRACTALS_BUCKET: {self.bucket!r} is not a valid bucket name; use 3-63 lower-case letters, digits, "
            "dots and hyphens, starting and ending with a letter or digit"
        )
        try:
            self.check_client.head_bucket(Bucket=self.bucket)
        except ParamValidationError as exc:
            raise invalid from exc
        except NoCredentialsError as exc:
            raise StoreError(
                "AWS_ACCESS_KEY_ID: no AWS credentials found; "
                "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            ) from exc
        except PartialCredentialsError as exc:  # one of the pair set, the other missing or empty
            missing = str(getattr(exc, "kwargs", {}).get("cred_var") or "aws_secret_access_key").upper()
            raise StoreError(
                f"{missing}: missing or empty while the other AWS key is set; "
                "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither"
            ) from exc
        except ClientError as exc:
            code = aws_error_code(exc) or "no error code"
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise StoreError(
                    f"FRACTALS_BUCKET: bucket {self.bucket!r} does not exist{where}; create it or fix FRACTALS_BUCKET"
                ) from exc
            if code in {"400", "InvalidBucketName"} and not BUCKET_RE.fullmatch(self.bucket):
                raise invalid from exc
            if code in {"403", "Forbidden"}:
                code = self._denied_code() or code
            if code in CREDENTIAL_ERRORS:
                raise StoreError(CREDENTIAL_ERRORS[code].format(code=code, where=where)) from exc
            if code in {"403", "AccessDenied", "Forbidden"}:
                raise StoreError(
                    f"AWS_ACCESS_KEY_ID: access to bucket {self.bucket!r}{where} denied ({code}); "
                    "check the credentials and the bucket policy"
                ) from exc
            raise StoreError(f"FRACTALS_BUCKET: bucket {self.bucket!r}{where} is not usable ({code})") from exc
        except BotoCoreError as exc:
            variable = endpoint_variable(self.config.endpoint_url)
            raise StoreError(
                f"{variable}: cannot reach S3{where} ({type(exc).__name__}); check the endpoint and network",
                transient=True,
            ) from exc
