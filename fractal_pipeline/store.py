"""FractalStore: where PNGs live. One abstraction, two backends (local folder, S3).

Used by the images step (and its worker processes), the PNG IO manager, the
Lambda handler and the CLI, so "where does a PNG go" is decided only here.
No Dagster imports: worker processes and the Lambda handler stay light.

Object keys are relative, ``/``-separated and validated before they touch a
path or a bucket: ``fractals/<spec key>.png`` and ``collages/<name>.png``.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fractal_pipeline.fractals import FractalSpec

IMAGES_PREFIX = "fractals/"
COLLAGES_PREFIX = "collages/"
SPECS_PREFIX = "specs/"

# Lower-case ASCII words separated by single slashes; no dot-segments, no
# backslashes, no absolute paths, no look-alike unicode.
_OBJECT_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_.-]*)*")
MAX_OBJECT_KEY = 200
#: S3's bucket naming rules (also those of MinIO and other S3-compatible servers).
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class StoreError(RuntimeError):
    """The store cannot be used as configured; the message says which setting to fix.

    ``transient`` is true when the store could not be reached (an outage worth
    retrying), false when the configuration itself is wrong.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def image_key(spec_key: str) -> str:
    """Object key of a spec's PNG; the spec key is validated (canonical, safe)."""
    return f"{IMAGES_PREFIX}{FractalSpec.from_key(spec_key).key}.png"


def collage_key(name: str) -> str:
    """Object key of a collage PNG."""
    return validate_object_key(f"{COLLAGES_PREFIX}{name}.png")


def validate_object_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ValueError."""
    if (
        not isinstance(key, str)
        or len(key) > MAX_OBJECT_KEY
        or not _OBJECT_KEY_RE.fullmatch(key)
        or any(part in {".", ".."} or part.startswith("..") for part in key.split("/"))
    ):
        raise ValueError(f"key: {key!r} is not a safe object key (lower-case a-z0-9_-. words separated by '/')")
    return key


@dataclass(frozen=True)
class StoreConfig:
    """Picklable description of a store, to rebuild it in a worker process."""

    bucket: str | None = None
    local_dir: str | None = None
    endpoint_url: str | None = None
    region_name: str | None = None

    def open(self) -> FractalStore:
        """Build the store this config describes."""
        if self.bucket:
            return S3Store(self.bucket, endpoint_url=self.endpoint_url, region_name=self.region_name)
        return LocalStore(self.local_dir or default_local_dir())

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


class FractalStore:
    """Put, get and list PNG bytes by object key."""

    config: StoreConfig

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` atomically under ``key``; returns its location (path or s3:// URL)."""
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        """Bytes stored under ``key``; KeyError if there are none."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, in lexicographic order."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def location(self, key: str) -> str:
        """Where ``key`` is (a path or an s3:// URL), for metadata and the CLI."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise StoreError with the setting to fix if the store is unusable."""
        raise NotImplementedError

    def stored_images(self, spec_keys: Iterable[str]) -> set[str]:
        """Those of ``spec_keys`` whose PNG is stored (one listing; a key that is not a valid spec key never is)."""
        present = set(self.list(IMAGES_PREFIX))
        stored = set()
        for key in spec_keys:
            try:
                if image_key(key) in present:
                    stored.add(key)
            except ValueError:  # InvalidSpec: no PNG can be stored under it
                continue
        return stored


@functools.cache
def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (``mkstemp`` makes them 0600)."""
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


class LocalStore(FractalStore):
    """PNGs in a local folder. Writes go to a temp file, then rename: a crash
    never leaves a half-written PNG under its final name."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.config = StoreConfig(local_dir=str(self.root))

    def _path(self, key: str) -> Path:
        return self.root / validate_object_key(key)

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        # The writer's pid in the temp name lets an interrupted batch clean up after its workers.
        temp_file = functools.partial(tempfile.mkstemp, dir=path.parent, prefix=f".tmp-{os.getpid()}-", suffix=".part")
        try:
            try:
                fd, tmp = temp_file()
            except FileNotFoundError:  # the folder is made on the first write into it, not checked for each PNG
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = temp_file()
        except (FileExistsError, NotADirectoryError) as exc:
            raise StoreError(f"key: {key!r} lies under an existing object in {self.root}; use another key") from exc
        try:
            os.fchmod(fd, _new_file_mode())
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except IsADirectoryError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StoreError(f"key: {key!r} is a folder in {self.root}; use another key") from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        if not base.is_dir():
            return
        found = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        yield from sorted(found)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def remove_partials(self, writer_pids: set[int]) -> int:
        """Delete temp files left by the given (dead) writer processes; returns how many."""
        removed = 0
        if self.root.is_dir():
            for pid in writer_pids:
                for path in self.root.rglob(f".tmp-{pid}-*.part"):
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def location(self, key: str) -> str:
        return str(self._path(key).resolve())

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"FRACTALS_DIR: cannot create {self.root}: {exc.strerror}; point it at a writable folder"
            ) from exc
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"FRACTALS_DIR: {self.root} is not writable; point it at a writable folder")


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


def _aws_client(service: str, endpoint_url: str | None, region_name: str | None, attempts: int = 8) -> Any:
    """A boto3 client with adaptive retries (outages are retried with backoff, ~30 s for 8 attempts)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": attempts, "mode": "adaptive"}, connect_timeout=5, read_timeout=30)
    return boto3.client(service, endpoint_url=endpoint_url, region_name=region_name or "us-east-1", config=config)


def s3_client(endpoint_url: str | None = None, region_name: str | None = None) -> Any:
    """A boto3 S3 client with adaptive retries (outages are retried with backoff)."""
    return _aws_client("s3", endpoint_url, region_name)


def sqs_client(endpoint_url: str | None = None, region_name: str | None = None) -> Any:
    """A boto3 SQS client for the store's endpoint and region (the spec-file notifications queue)."""
    return _aws_client("sqs", endpoint_url, region_name)


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
        return _aws_client("s3", self.config.endpoint_url, self.config.region_name, attempts=2)

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

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=validate_object_key(key))
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
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

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
        except ClientError as exc:
            code = aws_error_code(exc) or "no error code"
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise StoreError(
                    f"FRACTALS_BUCKET: bucket {self.bucket!r} does not exist{where}; create it or fix FRACTALS_BUCKET"
                ) from exc
            if code in {"400", "InvalidBucketName"} and not _BUCKET_RE.fullmatch(self.bucket):
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
