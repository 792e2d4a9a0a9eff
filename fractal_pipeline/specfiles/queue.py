"""S3 event notifications for the spec-file sensor: an SQS queue instead of a listing every tick.

Listing a prefix costs one request per 1,000 keys whatever is new, so with
10,000 spec files a listing tick takes seconds. With ``FRACTALS_SPECS_QUEUE``
set, the bucket sends an ``s3:ObjectCreated:*`` notification for each new
``specs/*.csv`` / ``specs/*.json`` object to an SQS queue and a tick only
receives those messages; the listing still runs every
``FRACTALS_SPECS_RECONCILE_S`` seconds to catch what a notification missed
(see :mod:`fractal_pipeline.automation`).

This module turns notification messages into the object dicts the listing
gives (``Key``, ``ETag``, ``Size``, ``LastModified``) and talks to the queue.
No Dagster imports.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote_plus

from fractal_pipeline.store import (
    CREDENTIAL_VARIABLES,
    StoreError,
    aws_error_code,
    aws_error_message,
    endpoint_variable,
)

QUEUE_ENV = "FRACTALS_SPECS_QUEUE"
#: Messages per ReceiveMessage request (SQS's maximum).
BATCH = 10
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,80}(\.fifo)?")
_ARN_RE = re.compile(r"arn:[a-z-]+:sqs:[a-z0-9-]+:(\d{12}):([A-Za-z0-9_-]{1,80}(\.fifo)?)")
_MISSING = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
_DENIED = {"AccessDenied", "AccessDeniedException", "403", "Forbidden"}


def validate_queue(value: str) -> str:
    """``value`` if it is an SQS queue URL, ARN or name; else a ValueError naming the variable."""
    if value.startswith(("https://", "http://")) or _ARN_RE.fullmatch(value) or _NAME_RE.fullmatch(value):
        return value
    raise ValueError(
        f"{QUEUE_ENV}: {value!r} is not an SQS queue URL, ARN or name "
        "(e.g. https://sqs.us-east-1.amazonaws.com/123456789012/fractal-specs, or fractal-specs)"
    )


def _error(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a failed SQS call. A server that answers the JSON protocol with a query-protocol
    XML error (moto, some SQS look-alikes) leaves botocore with the HTTP status as the code and the XML
    as the message: the code and message are then read from the XML."""
    code, message = aws_error_code(exc), aws_error_message(exc)
    if code.isdigit() and (found := re.search(r"<Code>([^<]+)</Code>", message)):
        text = re.search(r"<Message>([^<]*)</Message>", message)
        return found.group(1), text.group(1) if text else ""
    return code, message


def queue_error(exc: BaseException, queue: str, endpoint: str | None = None) -> StoreError:
    """A one-line :class:`StoreError` naming the setting to fix for a failed SQS call."""
    where = f" at {endpoint}" if endpoint else ""
    from botocore.exceptions import BotoCoreError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StoreError(
            "AWS_ACCESS_KEY_ID: no AWS credentials found for the spec-file queue; "
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    code, message = _error(exc)
    if code in _MISSING:
        return StoreError(
            f"{QUEUE_ENV}: queue {queue!r} does not exist{where}; create it "
            f"(deploy/template.yaml does) or fix {QUEUE_ENV}"
        )
    if code in CREDENTIAL_VARIABLES:
        variable = CREDENTIAL_VARIABLES[code]
        return StoreError(
            f"{variable}: SQS{where} refused the credentials ({code}); fix {variable} "
            "(or AWS_PROFILE) so that the sensor can read the spec-file queue"
        )
    if code in _DENIED:
        return StoreError(
            f"{QUEUE_ENV}: access to queue {queue!r}{where} denied ({code}); allow sqs:ReceiveMessage, "
            "sqs:DeleteMessage, sqs:GetQueueUrl and sqs:GetQueueAttributes on it"
        )
    if isinstance(exc, BotoCoreError):
        return StoreError(
            f"{endpoint_variable(endpoint)}: cannot reach SQS{where} ({type(exc).__name__}); "
            "check the endpoint and network",
            transient=True,
        )
    detail = " ".join(message.split())[:200]
    return StoreError(f"{QUEUE_ENV}: queue {queue!r}{where} is not usable ({code or type(exc).__name__}: {detail})")


def _event_time(value: Any) -> datetime:
    when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def announced_files(body: str, bucket: str, prefix: str, exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The objects an S3 event notification announces under ``s3://bucket/prefix``.

    Each is a dict like a listing's (``Key``, ``ETag`` in quotes, ``Size``,
    ``LastModified`` = the event's time, never earlier than the object's
    LastModified). ``s3:TestEvent``, events other than ``ObjectCreated:*``, other
    buckets and keys outside ``prefix`` or under one of ``exclude`` give nothing.
    Also accepts the notification wrapped in an SNS message (S3 -> SNS -> SQS).
    Raises ValueError for a body that is not an S3 notification.
    """
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
            data = json.loads(data["Message"])
    except ValueError:
        raise ValueError(f"not JSON: {body[:80]!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object: {body[:80]!r}")
    if data.get("Event") == "s3:TestEvent":
        return []
    records = data.get("Records")
    if not isinstance(records, list):
        raise ValueError(f"no Records: {body[:80]!r}")
    found = []
    for index, record in enumerate(records):
        try:
            event = str(record.get("eventName", ""))
            if not event.removeprefix("s3:").startswith("ObjectCreated:"):
                continue
            s3 = record["s3"]
            if s3["bucket"]["name"] != bucket:
                continue
            key = unquote_plus(str(s3["object"]["key"]))
            if not key.startswith(prefix) or key.startswith(tuple(exclude)):
                continue
            etag = str(s3["object"]["eTag"]).strip('"')
            if not etag:
                raise ValueError("empty eTag")
            found.append(
                {
                    "Key": key,
                    "ETag": f'"{etag}"',
                    "Size": int(s3["object"].get("size", 0)),
                    "LastModified": _event_time(record["eventTime"]),
                }
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"record {index}: {type(exc).__name__}: {exc}") from None
    return found


@dataclass
class QueueMessage:
    """A received message and the spec-file objects it announces (none: ignorable or malformed)."""

    message_id: str
    receipt: str
    files: list[dict[str, Any]] = field(default_factory=list)


class SpecQueue:
    """The spec-file notifications queue: ``queue`` is its URL, ARN or name (resolved with GetQueueUrl)."""

    def __init__(self, client: Any, queue: str, endpoint_url: str | None = None) -> None:
        self.client = client
        self.queue = queue
        self.endpoint_url = endpoint_url
        self.where = f" at {endpoint_url}" if endpoint_url else ""
        self._url: str | None = None

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, operation)(**kwargs)
        except Exception as exc:
            raise queue_error(exc, self.queue, self.endpoint_url) from exc

    @property
    def url(self) -> str:
        if self._url is None:
            if self.queue.startswith(("https://", "http://")):
                self._url = self.queue
            elif match := _ARN_RE.fullmatch(self.queue):
                response = self._call("get_queue_url", QueueName=match.group(2), QueueOwnerAWSAccountId=match.group(1))
                self._url = str(response["QueueUrl"])
            else:
                self._url = str(self._call("get_queue_url", QueueName=self.queue)["QueueUrl"])
        return self._url

    def receive(
        self,
        bucket: str,
        prefix: str,
        *,
        max_files: int,
        deadline: float,
        exclude: Sequence[str] = (),
        warn: Callable[[str], None] = print,
    ) -> list[QueueMessage]:
        """Receive batches of :data:`BATCH` (no long polling) until the queue answers empty, the
        messages announce ``max_files`` files, or ``time.monotonic()`` passes ``deadline``.

        A message that is not an S3 notification is logged with ``warn`` and
        returned without files, so that it is deleted with the handled ones.
        """
        messages: list[QueueMessage] = []
        files = 0
        while files < max_files and time.monotonic() < deadline:
            response = self._call("receive_message", QueueUrl=self.url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=0)
            batch = response.get("Messages") or []
            for raw in batch:
                message = QueueMessage(str(raw["MessageId"]), str(raw["ReceiptHandle"]))
                try:
                    message.files = announced_files(str(raw.get("Body", "")), bucket, prefix, exclude)
                except ValueError as exc:
                    warn(f"{QUEUE_ENV}: message {message.message_id} is not an S3 event notification ({exc}); deleted")
                files += len(message.files)
                messages.append(message)
            if not batch:
                break
        return messages

    def delete(self, messages: Iterable[QueueMessage], warn: Callable[[str], None] = print) -> int:
        """Delete ``messages`` (batches of :data:`BATCH`); the number deleted. A message SQS fails to
        delete is logged: it comes back after its visibility timeout and is then a duplicate."""
        pending = list(messages)
        deleted = 0
        for start in range(0, len(pending), BATCH):
            chunk = pending[start : start + BATCH]
            entries = [{"Id": str(i), "ReceiptHandle": m.receipt} for i, m in enumerate(chunk)]
            response = self._call("delete_message_batch", QueueUrl=self.url, Entries=entries)
            failed = response.get("Failed") or []
            deleted += len(chunk) - len(failed)
            for failure in failed:
                warn(
                    f"{QUEUE_ENV}: could not delete message {chunk[int(failure['Id'])].message_id} "
                    f"({failure.get('Code')}: {failure.get('Message')}); it will be received again and skipped"
                )
        return deleted
