"""``fractal_spec_files``: spec files uploaded to S3 become partitions, rendered by one run per file.

- ``fractal_spec_files`` (sensor): new ``.csv``/``.json`` files under
  ``s3://$FRACTALS_BUCKET/specs/`` are parsed (:mod:`fractal_pipeline.specfiles`);
  their valid specs become ``fractal_specs`` dynamic partitions and are rendered
  by one ``render_fractal_images`` run per file (a few at most); bad rows go to
  ``specs/_rejected/<file>.json`` and the sensor log.
- ``random_fractals_schedule``: daily (``FRACTALS_SCHEDULE_CRON``), materialises
  ``fractal_specs`` with a fresh seed (job ``random_fractals``); the
  ``render_random_fractals`` run-status sensor then launches the batched
  ``render_fractal_images`` run for the partitions that run registered.
- ``fractal_collage_freshness``: evaluates ``fractal_collage``'s automation
  condition, so the collage is rebuilt once after image partitions land.

Why partition-range runs: a run of ``fractal_images`` covers the range
``first...last`` of the dynamic partitions (the same tags a
``BackfillPolicy.single_run()`` backfill uses). Each file gets one run, planned
by :func:`fractal_pipeline.defs.batch_plan.plan_batch` as ``fractal-pipeline run``
plans its own: specs already stored are not rendered again, and the run covers
the smallest range that holds the rest, skipping (config ``only``) partitions
in it that are stored or not the file's. The sensor registers a file's new keys
in the same ``SensorResult`` and the daemon adds them before it launches the
runs, so they are consecutive at the end of the partition list.

Exactly once: the cursor (:class:`SpecFilesCursor`) is a LastModified
watermark plus the key and ETag of every file handled at or after it. The
watermark trails the newest handled file, and the S3 server's clock, by
:data:`SETTLE_SECONDS`, so files sharing a LastModified second, files
uploaded during a tick and files whose upload started before a newer one
finished are neither dropped nor handled twice, while the cursor stays small.
It advances only past files fully handled in that tick; a tick that fails
(bucket missing, S3 down) raises and leaves it where it was. Run keys are
``<file key>@<ETag>``: the daemon never launches the same key twice, so a
re-uploaded identical file is not re-run and an edited one is.

Queue mode (``FRACTALS_SPECS_QUEUE``, :mod:`fractal_pipeline.specfiles.queue`):
listing 10,000 keys takes seconds whatever is new, so the bucket's
``s3:ObjectCreated:*`` notifications go to an SQS queue and a tick handles the
files they announce, through the same per-file handling (:class:`_Tick`).
Their messages are deleted at the end of the tick; a file already in ``seen``
with the same ETag (a duplicate delivery) is skipped. Queue ticks add their
files to ``seen`` but never move the watermark: every
``FRACTALS_SPECS_RECONCILE_S`` seconds (``reconciled_at`` in the cursor) the
tick also runs the listing from the watermark, which handles whatever no
notification announced (a lost message, a tick result lost after its
messages were deleted, files uploaded before the queue existed) exactly once.
"""

import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import dagster as dg

from fractal_pipeline.defs import tags
from fractal_pipeline.defs.jobs import RENDER_JOB_NAME, render_job
from fractal_pipeline.defs.partitions import spec_partitions
from fractal_pipeline.defs.resources import FractalStoreResource
from fractal_pipeline.defs.sensors.cursor import SENSOR_NAME, SpecFilesCursor, etag, settle_horizon, utc
from fractal_pipeline.defs.sensors.plan import PartitionPlan
from fractal_pipeline.defs.sensors.reports import REJECTED_DIR, write_report
from fractal_pipeline.defs.settings import DEFAULT_INTERVAL_S, DEFAULT_PREFIX, DEFAULT_RECONCILE_S, CostSettings
from fractal_pipeline.specfiles.parse import SpecFile, file_format, oversize_error, parse_spec_file
from fractal_pipeline.specfiles.queue import QUEUE_ENV, QueueMessage, SpecQueue
from fractal_pipeline.store import S3Store, StoreError, aws_error_code, sqs_client

#: Bounds on one tick (Dagster times a sensor out after 60 s); the rest waits for the next tick.
MAX_FILES_PER_TICK = 100
TICK_BUDGET_S = 20.0


def _server_time(s3: S3Store) -> datetime | None:
    """The S3 server's clock (the HEAD bucket response's Date header), or None if it sent none.

    Raises :class:`StoreError` naming the setting to fix if the bucket is unusable: the tick
    fails and the cursor stays where it was.
    """
    try:
        response = s3.client.head_bucket(Bucket=s3.bucket)
    except Exception:
        s3.check()  # turns the failure into a StoreError naming the setting to fix
        raise
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date).astimezone(timezone.utc) if date else None
    except (TypeError, ValueError):
        return None


def _read(client: Any, bucket: str, obj: Mapping[str, Any]) -> bytes | None:
    """The object's bytes at the listed ETag; None if it was deleted or replaced since the listing."""
    try:
        response = client.get_object(Bucket=bucket, Key=obj["Key"], IfMatch=obj["ETag"])
    except Exception as exc:
        code = aws_error_code(exc)
        if code in {"NoSuchKey", "404", "PreconditionFailed", "412"}:
            return None
        raise
    data: bytes = response["Body"].read()
    return data


def _parse_object(client: Any, bucket: str, obj: Mapping[str, Any]) -> SpecFile | None:
    key = obj["Key"]
    if file_format(key) is None:
        return parse_spec_file(key, b"")
    too_big = oversize_error(int(obj.get("Size", 0)))
    if too_big:
        return SpecFile(name=key, format=file_format(key), error=too_big)
    try:
        data = _read(client, bucket, obj)
    except Exception as exc:
        if aws_error_code(exc) in {"AccessDenied", "403", "Forbidden"}:
            return SpecFile(name=key, format=file_format(key), error="file: access denied; check the bucket policy")
        raise
    return None if data is None else parse_spec_file(key, data)


class _Tick:
    """One evaluation of ``fractal_spec_files``: the handling of a file, shared by the listing and
    the queue, and the tick's limits (:data:`MAX_FILES_PER_TICK` files, :data:`TICK_BUDGET_S`)."""

    def __init__(
        self,
        context: dg.SensorEvaluationContext,
        s3: S3Store,
        prefix: str,
        cursor: SpecFilesCursor,
        max_files: int,
        budget_s: float,
        cost: CostSettings,
    ) -> None:
        self.context = context
        self.cost = cost
        self.store = s3
        self.client = s3.client
        self.bucket = s3.bucket
        self.prefix = prefix
        self.cursor = cursor
        self.max_files = max_files
        self.budget_s = budget_s
        self.started = time.monotonic()
        self.plan: PartitionPlan | None = None
        self.run_requests: list[dg.RunRequest] = []
        self.handled: list[Mapping[str, Any]] = []
        self.files = 0  # handled files that were read (not deleted meanwhile, not folders)
        #: Files refused over the budget: an identical upload of one is read again (the budget may be raised).
        self.refused: set[str] = set()
        self._done: set[tuple[str, str]] = set()

    def full(self) -> bool:
        """No more files this tick (at least one is always handled, whatever the time)."""
        return len(self.handled) >= self.max_files or (
            bool(self.handled) and time.monotonic() - self.started > self.budget_s
        )

    def is_new(self, obj: Mapping[str, Any]) -> bool:
        """Neither handled by an earlier tick (the cursor) nor by this one."""
        return self.cursor.is_new(obj) and (obj["Key"], etag(obj)) not in self._done

    def handle(self, obj: Mapping[str, Any]) -> None:
        """Read, parse and report one file, and request the renders of its new specs.

        Raises :class:`StoreError` if S3 fails: the tick fails and the file is retried.
        """
        self._handle(obj)
        self.handled.append(obj)
        self._done.add((obj["Key"], etag(obj)))

    def _plan(self) -> PartitionPlan:
        """The tick's partition plan, loaded with the first file that has specs."""
        if self.plan is None:
            self.plan = PartitionPlan.load(self.context.instance, self.store, self.cost)
        return self.plan

    def _handle(self, obj: Mapping[str, Any]) -> None:
        key = obj["Key"]
        if key.endswith("/"):  # a "folder" placeholder object
            return
        try:
            parsed = _parse_object(self.client, self.bucket, obj)
            if parsed is None:  # deleted or replaced since the listing: a new version is listed anew
                self.context.log.info(f"s3://{self.bucket}/{key} was deleted or replaced during the tick")
                return
            plan = self._plan() if parsed.specs else None
            prediction = plan.predict(parsed.keys) if plan is not None else None
            refused = plan.over_budget(prediction) if plan is not None and prediction is not None else None
            write_report(
                self.context, self.client, self.bucket, self.prefix, obj, parsed, prediction, refused,
                self.cost.max_batch_s,
            )  # fmt: skip
        except Exception as exc:
            raise StoreError(
                f"FRACTALS_BUCKET: cannot read or report s3://{self.bucket}/{key} ({type(exc).__name__}: {exc}); "
                "the file is retried on the next tick"
            ) from exc
        self.files += 1
        if refused is not None:
            self.refused.add(key)
            return
        if plan is not None:
            plan.register(parsed.keys)
            file_tags = {tags.SPEC_FILE: key[:200], tags.REJECTED_ROWS: str(len(parsed.rejected))}
            request = plan.render_request(parsed.keys, f"{key}@{etag(obj)}", file_tags)
            if request is not None:
                self.run_requests.append(request)

    def list_and_handle(self, s3: S3Store) -> tuple[SpecFilesCursor, bool]:
        """The listing path: new files under the prefix since the watermark. Returns the advanced
        cursor and whether every listed file was handled (none left for the next tick)."""
        server_now = _server_time(s3)  # before listing: anything not listed yet was stamped after it - SETTLE
        try:
            from dagster_aws.s3.sensor import get_objects  # slow to import; only where a bucket is watched

            listed = get_objects(self.bucket, self.prefix, since_last_modified=self.cursor.since(), client=self.client)
        except Exception as exc:
            raise StoreError(
                f"FRACTALS_BUCKET: cannot list s3://{self.bucket}/{self.prefix} ({type(exc).__name__}: {exc}); "
                "check the bucket, the endpoint and the credentials"
            ) from exc
        rejected_prefix = self.prefix + REJECTED_DIR
        pending = [obj for obj in listed if not obj["Key"].startswith(rejected_prefix) and self.is_new(obj)]
        handled: list[Mapping[str, Any]] = []
        for obj in pending:
            if self.full():
                self.context.log.info(f"{len(pending) - len(handled)} more files wait for the next tick")
                break
            self.handle(obj)
            handled.append(obj)
        horizon = settle_horizon(server_now) if server_now else None
        left = pending[len(handled) :]  # listed but left for the next tick
        if horizon is not None and left:
            horizon = min(horizon, min(utc(obj["LastModified"]) for obj in left))
        return self.cursor.advanced(handled, horizon, self.refused), not left

    def drain_queue(self, queue: SpecQueue) -> list[Mapping[str, Any]]:
        """The queue path: the files announced by notifications, handled as listed ones; returns them.

        Deletes the messages whose files were all handled (or handled before: a
        duplicate delivery), that announce nothing here, or that are malformed;
        a message with a file left for the next tick stays and comes back after
        its visibility timeout.
        """
        room = self.max_files - len(self.handled)
        if room <= 0 or self.full():
            return []
        warn = self.context.log.warning
        messages = queue.receive(
            self.bucket,
            self.prefix,
            max_files=room,
            deadline=self.started + self.budget_s,
            exclude=(self.prefix + REJECTED_DIR,),
            warn=warn,
        )
        handled: list[Mapping[str, Any]] = []
        finished: list[QueueMessage] = []
        left = duplicates = 0
        for message in messages:
            complete = True
            for obj in message.files:
                if not self.is_new(obj):
                    duplicates += 1
                elif self.full():
                    complete = False
                    left += 1
                else:
                    self.handle(obj)
                    handled.append(obj)
            if complete:
                finished.append(message)
        deleted = queue.delete(finished, warn=warn) if finished else 0
        if messages:
            self.context.log.info(
                f"{QUEUE_ENV}: {len(messages)} messages, {len(handled)} new files, {duplicates} already handled, "
                f"{deleted} messages deleted" + (f"; {left} files wait for the next tick" if left else "")
            )
        return handled


def evaluate_spec_files(
    context: dg.SensorEvaluationContext,
    store: FractalStoreResource,
    prefix: str = DEFAULT_PREFIX,
    max_files: int = MAX_FILES_PER_TICK,
    budget_s: float = TICK_BUDGET_S,
    queue: str | None = None,
    reconcile_s: float = DEFAULT_RECONCILE_S,
    cost: CostSettings | None = None,
) -> dg.SensorResult | dg.SkipReason:
    """One tick of ``fractal_spec_files`` (the sensor's body, callable from tests and benchmarks).

    Without ``queue``, every tick lists the prefix. With ``queue`` (an SQS queue
    URL, ARN or name receiving the bucket's event notifications), a tick
    handles the files the messages announce, and also lists the prefix when the
    last complete listing is ``reconcile_s`` seconds old (the first tick always). ``cost``: the batch
    budget and prices; a file whose batch is predicted over the budget renders nothing and is reported.
    """
    if not store.bucket:
        return dg.SkipReason(
            "FRACTALS_BUCKET is unset: this deployment stores images in a local folder, so there is "
            f"no s3://.../{prefix} to watch; set FRACTALS_BUCKET to watch spec files"
        )
    s3 = store.get_store()
    assert isinstance(s3, S3Store), "a store with a bucket is an S3Store"
    cursor = SpecFilesCursor.parse(context.cursor)
    tick = _Tick(context, s3, prefix, cursor, max_files, budget_s, cost or CostSettings())
    now = time.time()
    reconcile = queue is None or cursor.reconciled_at is None or now - cursor.reconciled_at >= reconcile_s
    new_cursor = cursor
    if reconcile:
        new_cursor, complete = tick.list_and_handle(s3)
        if queue is not None and complete:
            new_cursor = replace(new_cursor, reconciled_at=now)
    if queue is not None:
        client = sqs_client(s3.config.endpoint_url, s3.config.region_name)
        new_cursor = new_cursor.remembered(
            tick.drain_queue(SpecQueue(client, queue, s3.config.endpoint_url)), tick.refused
        )

    plan = tick.plan
    partitions = [spec_partitions.build_add_request(plan.added)] if plan and plan.added else []
    if tick.run_requests:
        return dg.SensorResult(
            run_requests=tick.run_requests, dynamic_partitions_requests=partitions, cursor=new_cursor.dump()
        )
    reason = (
        f"{tick.files} new spec files, nothing new to render"
        if tick.files
        else f"no new spec files under s3://{s3.bucket}/{prefix}"
    )
    if queue is not None:
        reason += " (notifications" + (" and a reconciling listing)" if reconcile else ")")
    return dg.SensorResult(skip_reason=reason, dynamic_partitions_requests=partitions, cursor=new_cursor.dump())


def spec_files_sensor(
    prefix: str = DEFAULT_PREFIX,
    minimum_interval_seconds: int = DEFAULT_INTERVAL_S,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    queue: str | None = None,
    reconcile_s: int = DEFAULT_RECONCILE_S,
    cost: CostSettings | None = None,
) -> dg.SensorDefinition:
    """The ``fractal_spec_files`` sensor watching ``s3://$FRACTALS_BUCKET/<prefix>``
    (through the SQS ``queue`` of the bucket's notifications, if given)."""
    how = (
        f" Notified through the SQS queue {queue} ({QUEUE_ENV}); the prefix is listed every {reconcile_s} s "
        "to catch missed notifications."
        if queue
        else ""
    )

    @dg.sensor(
        name=SENSOR_NAME,
        job=render_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"New .csv/.json spec files under s3://$FRACTALS_BUCKET/{prefix} become fractal_specs partitions, "
            f"rendered by one {RENDER_JOB_NAME} run per file; bad rows are reported in {prefix}{REJECTED_DIR}.{how}"
        ),
    )
    def fractal_spec_files(
        context: dg.SensorEvaluationContext, store: FractalStoreResource
    ) -> dg.SensorResult | dg.SkipReason:
        return evaluate_spec_files(context, store, prefix, queue=queue, reconcile_s=reconcile_s, cost=cost)

    return fractal_spec_files
