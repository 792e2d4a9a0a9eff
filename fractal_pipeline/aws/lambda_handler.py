"""The Lambda render function: render a chunk of specs into the S3 store, report each through dagster-pipes.

Event (built by :mod:`fractal_pipeline.aws.lambda_backend` through ``PipesLambdaClient``)::

    {"keys": ["dragon_12", ...], "bucket": "my-fractals",
     "DAGSTER_PIPES_CONTEXT": "...", "DAGSTER_PIPES_MESSAGES": "..."}

Each key is rendered and stored with :func:`fractal_pipeline.workers.results.render_and_store`
(the same code as the local process pool, so the bytes are identical) and its
:class:`~fractal_pipeline.workers.results.RenderResult` is reported at once as a pipes
custom message; a spec that fails is reported as a failure and does not stop the
chunk. The Dagster side turns these messages back into ``RenderResult`` /
``RenderFailure`` objects.

Why S3 for the messages: ``PipesLambdaClient``'s default reader only sees the
4 KB tail of the invocation's logs, and one result (with its inline thumbnail)
is already several KB. Messages are therefore written to S3 (a
``PipesS3MessageWriter`` whose channel does not idle a billed second at close,
:class:`PromptS3MessageWriter`) into the store's bucket under ``pipes/`` (the
prefix chosen by the reader; the function's IAM policy allows writing there, to
``fractals/`` and to nothing else in the bucket).

This module imports no Dagster: only dagster-pipes, the core, the store and
``rendering`` (and boto3, which the Lambda runtime provides).
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster_pipes import (
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    PipesContext,
    PipesMappingParamsLoader,
    PipesS3MessageWriter,
    PipesS3MessageWriterChannel,
    open_dagster_pipes,
)

from fractal_pipeline.fractals import tune_allocator
from fractal_pipeline.store import S3Store, endpoint_from_env
from fractal_pipeline.workers.results import render_and_store

#: ``type`` of the custom message that carries one ``RenderResult.to_json()``.
RESULT_MESSAGE = "fractal_pipeline/render_result"
#: ``type`` of the custom message that carries one ``{"key", "error"}`` failure.
FAILURE_MESSAGE = "fractal_pipeline/render_failure"
#: Most keys one invocation accepts (a chunk is a few; this only bounds bad input).
MAX_KEYS = 1000
#: Seconds between uploads of buffered pipes messages while the chunk renders.
MESSAGE_INTERVAL_S = 1.0


class BadEvent(ValueError):
    """The invocation event is malformed; the message names the field."""


class PromptS3MessageWriterChannel(PipesS3MessageWriterChannel):
    """``PipesS3MessageWriterChannel`` whose upload thread wakes up at close instead of sleeping whole seconds.

    The stock channel's thread sleeps 1 s between checks, so closing a session
    takes 1-2 s: on Lambda that is billed time on every invocation, more than
    rendering a chunk (``benchmarks/bench_lambda_cost.py`` measures both). Chunks
    are numbered and named exactly as by the stock channel (``<prefix>/1.json``,
    ``2.json``...), so ``PipesS3MessageReader`` reads them unchanged.
    """

    def __init__(self, client: Any, bucket: str, key_prefix: str | None, *, interval: float) -> None:
        super().__init__(client, bucket, key_prefix, interval=interval)
        self.upload_interval = interval

    @contextmanager
    def buffered_upload_loop(self) -> Iterator[None]:
        closed = threading.Event()
        thread = threading.Thread(target=self._upload_until, args=(closed,), daemon=True)
        thread.start()
        try:
            yield
        finally:
            closed.set()
            thread.join(timeout=60)

    def _upload_until(self, closed: threading.Event) -> None:
        index = 1
        while True:
            done = closed.wait(self.upload_interval)
            payload = "\n".join(json.dumps(message) for message in self.flush_messages())
            if payload:
                self.upload_messages_chunk(io.StringIO(payload), index)
                index += 1
            if done:
                return


class PromptS3MessageWriter(PipesS3MessageWriter):
    """``PipesS3MessageWriter`` with :class:`PromptS3MessageWriterChannel` (no idle second at close)."""

    def __init__(self, client: Any, *, interval: float = MESSAGE_INTERVAL_S) -> None:
        super().__init__(client, interval=interval)
        self.client = client

    def make_channel(self, params: Mapping[str, Any]) -> PromptS3MessageWriterChannel:
        bucket, key_prefix = params.get("bucket"), params.get("key_prefix")
        if not isinstance(bucket, str) or not (key_prefix is None or isinstance(key_prefix, str)):
            raise BadEvent(
                f"{DAGSTER_PIPES_MESSAGES_ENV_VAR}: expected an S3 bucket and key_prefix from PipesS3MessageReader"
            )
        return PromptS3MessageWriterChannel(self.client, bucket, key_prefix, interval=self.interval)


def parse_event(event: Any) -> tuple[list[str], str]:
    """The ``keys`` and ``bucket`` of an invocation event, validated."""
    if not isinstance(event, dict):
        raise BadEvent(f"event: expected a JSON object, got {type(event).__name__}")
    keys = event.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(key, str) for key in keys):
        raise BadEvent('keys: expected a non-empty list of spec keys, e.g. ["dragon_12"]')
    if len(keys) > MAX_KEYS:
        raise BadEvent(f"keys: {len(keys)} keys in one invocation; send at most {MAX_KEYS}")
    bucket = event.get("bucket")
    if not isinstance(bucket, str) or not bucket:
        raise BadEvent("bucket: expected the name of the S3 bucket to store the PNGs in")
    return keys, bucket


@contextmanager
def _pipes(event: dict[str, Any], client: Any) -> Iterator[PipesContext]:
    """``open_dagster_pipes`` for one invocation.

    ``open_dagster_pipes`` keeps a process-wide singleton and never clears it on
    close; a warm Lambda container would hand the next invocation the previous
    (closed) context. Clear it once this invocation's context is closed.
    """
    try:
        with open_dagster_pipes(
            params_loader=PipesMappingParamsLoader(event),
            message_writer=PromptS3MessageWriter(client, interval=MESSAGE_INTERVAL_S),
        ) as pipes:
            yield pipes
    finally:
        PipesContext._instance = None


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """Lambda entry point (``fractal_pipeline.aws.lambda_handler.handler``)."""
    keys, bucket = parse_event(event)
    tune_allocator()  # a warm Lambda process renders chunk after chunk (see fractals.allocator)
    store = S3Store(bucket, endpoint_url=endpoint_from_env(), region_name=os.environ.get("AWS_REGION"))
    request_id = str(getattr(context, "aws_request_id", "") or f"pid-{os.getpid()}")
    worker = f"lambda-{request_id[:8]}"
    ready_at = time.time()
    rendered: list[str] = []
    failed: list[str] = []
    with _pipes(event, store.client) as pipes:
        for key in keys:
            try:
                result = render_and_store(key, store, worker=worker, worker_started_at=ready_at)
            except Exception as exc:  # one bad spec must not stop the chunk
                failed.append(key)
                pipes.report_custom_message(
                    {"type": FAILURE_MESSAGE, "key": key, "error": f"{type(exc).__name__}: {exc}"}
                )
                continue
            rendered.append(result.key)
            pipes.report_custom_message({"type": RESULT_MESSAGE, "result": result.to_json()})
    return {"rendered": rendered, "failed": failed}
