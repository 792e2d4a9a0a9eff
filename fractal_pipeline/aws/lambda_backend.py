"""The ``lambda`` render backend: chunks of specs rendered by the Lambda render function.

``render_with_lambda`` splits the keys into chunks of ``chunk_size``, invokes the
function once per chunk with ``PipesLambdaClient`` (at most ``concurrency`` at a
time, from threads), and yields the :class:`RenderResult` / :class:`RenderFailure`
objects the function reported for each chunk as soon as that chunk returns —
the same objects the local process pool yields, so ``fractal_images`` does not
know which backend ran.

Retries: a chunk whose invocation fails (function error, timeout, crash,
throttling that outlived botocore's retries) is retried, up to ``max_attempts``
in all, with only the keys it had not reported yet: results already reported
(and stored) are kept and never rendered twice. A spec the function reports as
failed (bad spec, render error) is final, like in the local pool. (An invocation
that fails before the function opened its pipes session costs ~10 s more: the
time dagster's message reader waits for messages after the session closes.)

Messages come back through S3 (``PipesS3MessageWriter`` in the function,
:class:`PrefixedS3MessageReader` here) under ``pipes/`` in the store's bucket;
see :mod:`fractal_pipeline.aws.lambda_handler` for why not the log tail.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster_aws.pipes import PipesLambdaClient, PipesS3MessageReader

from fractal_pipeline.aws.lambda_handler import FAILURE_MESSAGE, RESULT_MESSAGE
from fractal_pipeline.store import StoreConfig, s3_client
from fractal_pipeline.workers.results import RenderFailure, RenderResult

#: Prefix of the pipes message chunks in the bucket (the function may write here).
PIPES_PREFIX = "pipes/"
#: Seconds between polls of S3 for message chunks while a chunk renders.
READ_INTERVAL_S = 1.0
#: Lambda's own limit for a synchronous invocation is 900 s.
INVOKE_READ_TIMEOUT_S = 910


class PrefixedS3MessageReader(PipesS3MessageReader):
    """``PipesS3MessageReader`` that puts message chunks under ``prefix`` and keeps its handler.

    The prefix lets the function's IAM policy allow exactly ``pipes/*``; the
    handler lets the caller read what a failed invocation reported before it
    failed. One reader per invocation (a reader counts chunks for one session).
    """

    def __init__(self, *, bucket: str, client: Any, prefix: str = PIPES_PREFIX, interval: float = READ_INTERVAL_S):
        super().__init__(bucket=bucket, client=client, interval=interval)
        self.prefix = prefix
        self.handler: dg.PipesMessageHandler | None = None

    @contextmanager
    def get_params(self) -> Iterator[Mapping[str, Any]]:
        with super().get_params() as params:
            yield {**params, "key_prefix": f"{self.prefix}{params['key_prefix']}"}

    @contextmanager
    def read_messages(self, handler: dg.PipesMessageHandler) -> Iterator[Mapping[str, Any]]:
        self.handler = handler
        with super().read_messages(handler) as params:
            yield params

    def custom_messages(self) -> Sequence[Any]:
        """Custom messages received so far (all of them once the session has closed)."""
        return self.handler.get_custom_messages() if self.handler is not None else ()


def lambda_client(region_name: str | None = None) -> Any:
    """A boto3 Lambda client for synchronous invocations of up to 15 minutes.

    The endpoint comes from botocore's own settings (``AWS_ENDPOINT_URL_LAMBDA``
    or ``AWS_ENDPOINT_URL``), so a local Lambda emulator can stand in for AWS.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 6, "mode": "adaptive"}, connect_timeout=10, read_timeout=INVOKE_READ_TIMEOUT_S
    )
    return boto3.client("lambda", region_name=region_name, config=config)


def outcomes_from_messages(messages: Sequence[Any]) -> list[RenderResult | RenderFailure]:
    """The render outcomes carried by the function's custom pipes messages (others are ignored)."""
    outcomes: list[RenderResult | RenderFailure] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("type") == RESULT_MESSAGE:
            outcomes.append(RenderResult.from_json(message["result"]))
        elif message.get("type") == FAILURE_MESSAGE:
            outcomes.append(RenderFailure(str(message["key"]), str(message["error"])))
    return outcomes


@dataclass
class ChunkOutcome:
    """What one invocation of one chunk produced."""

    keys: list[str]
    attempt: int
    outcomes: list[RenderResult | RenderFailure] = field(default_factory=list)
    error: str | None = None

    @property
    def unreported(self) -> list[str]:
        """Keys of the chunk the function did not report (to retry)."""
        reported = {outcome.key for outcome in self.outcomes}
        return [key for key in self.keys if key not in reported]


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if text.startswith("Lambda Function Error"):  # PipesLambdaClient: header line, then the JSON payload
        header, _, payload = text.partition("\n")
        try:
            details = json.loads(payload)
            text = f"{header.rstrip(':')}: {details.get('errorType', '')}: {details.get('errorMessage', '')}"
        except (ValueError, AttributeError):
            text = header
    first = text.splitlines()[0] if text else type(error).__name__
    return first[:300]


def invoke_chunk(
    context: dg.AssetExecutionContext,
    client: Any,
    s3: Any,
    function_name: str,
    bucket: str,
    keys: list[str],
    attempt: int,
) -> ChunkOutcome:
    """Invoke the function once for ``keys``; never raises (the error is in the outcome)."""
    reader = PrefixedS3MessageReader(bucket=bucket, client=s3)
    pipes = PipesLambdaClient(client=client, message_reader=reader)
    outcome = ChunkOutcome(keys=keys, attempt=attempt)
    try:
        pipes.run(function_name=function_name, event={"keys": keys, "bucket": bucket}, context=context)
    except Exception as exc:
        outcome.error = _one_line(exc)
    outcome.outcomes = outcomes_from_messages(reader.custom_messages())
    if outcome.error is None and outcome.unreported:
        outcome.error = f"the function returned without reporting {len(outcome.unreported)} keys"
    return outcome


@contextmanager
def _pipes_sessions_allowed(context: dg.AssetExecutionContext) -> Iterator[None]:
    """Let ``fractal_images`` keep yielding per-partition materializations around pipes sessions.

    Opening a pipes session switches the step to "typed event stream" mode, in
    which every output must be yielded as an ``Output``/``MaterializeResult``;
    for a multi-partition step that would be one materialization of *every*
    partition of the run. The asset reports each partition with its own
    ``AssetMaterialization`` instead (exactly as with the local backend), so the
    mode is restored to what it was once the sessions are over.
    """
    step = context.get_step_execution_context()
    before = (step.requires_typed_event_stream, step.typed_event_stream_error_message)
    try:
        yield
    finally:
        step._requires_typed_event_stream, step._typed_event_stream_error_message = before


def chunked(keys: Sequence[str], size: int) -> list[list[str]]:
    """``keys`` (de-duplicated, in order) in chunks of ``size``."""
    unique = list(dict.fromkeys(keys))
    return [unique[i : i + size] for i in range(0, len(unique), size)]


def lambda_bucket(store: StoreConfig) -> str:
    """The store's bucket; the function can only write to S3 (ValueError naming the variable otherwise)."""
    if not store.bucket:
        raise ValueError("FRACTALS_BUCKET: the lambda render backend stores PNGs in S3; set FRACTALS_BUCKET")
    return store.bucket


def render_with_lambda(
    context: dg.AssetExecutionContext,
    keys: Sequence[str],
    store: StoreConfig,
    *,
    function_name: str,
    client: Any,
    chunk_size: int = 8,
    concurrency: int = 16,
    max_attempts: int = 3,
    heartbeat_s: float | None = None,
    on_stop: Callable[[dict[str, str]], None] | None = None,
) -> Iterator[RenderResult | RenderFailure | None]:
    """Render ``keys`` on Lambda into ``store`` (an S3 store), yielding each chunk's outcomes as it returns.

    With ``heartbeat_s``, ``None`` is yielded whenever that long passes without a chunk returning.
    Closed early (the run is stopping), it lets the invocations already running finish, starts no
    more, and calls ``on_stop`` with the PNGs stored that it did not yield (key to location), as
    ``workers.pool.render_many`` does, so that the caller can record them.
    """
    bucket = lambda_bucket(store)
    chunks = chunked(keys, chunk_size)
    if not chunks:
        return
    s3 = s3_client(store.endpoint_url, store.region_name)
    workers = max(1, min(concurrency, len(chunks)))
    context.log.info(
        f"rendering {len(keys)} partitions on Lambda {function_name!r}: "
        f"{len(chunks)} chunks of up to {chunk_size}, {workers} concurrent invocations"
    )
    executor = ThreadPoolExecutor(workers, thread_name_prefix="lambda-render")

    def invoke(chunk: list[str], attempt: int) -> Future[ChunkOutcome]:
        return executor.submit(invoke_chunk, context, client, s3, function_name, bucket, chunk, attempt)

    unyielded: list[RenderResult | RenderFailure] = []
    with _pipes_sessions_allowed(context):
        pending: set[Future[ChunkOutcome]] = {invoke(chunk, 1) for chunk in chunks}
        try:
            while pending:
                done, pending = wait(pending, timeout=heartbeat_s, return_when=FIRST_COMPLETED)
                if not done and heartbeat_s is not None:
                    yield None
                for future in done:
                    outcome = future.result()
                    unyielded.extend(outcome.outcomes)
                    remaining = outcome.unreported
                    if outcome.error is None or not remaining:
                        continue
                    if outcome.attempt < max_attempts:
                        context.log.warning(
                            f"chunk {remaining[0]}..{remaining[-1]} failed (attempt {outcome.attempt}/{max_attempts}): "
                            f"{outcome.error}; retrying its {len(remaining)} unreported keys"
                        )
                        pending.add(invoke(remaining, outcome.attempt + 1))
                    else:
                        why = f"lambda {function_name}: {outcome.error} (after {max_attempts} attempts)"
                        unyielded.extend(RenderFailure(key, why) for key in remaining)
                while unyielded:
                    yield unyielded.pop(0)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            stored = _stored_not_yielded(unyielded, pending)
            if stored and on_stop is not None:
                on_stop(stored)


def _stored_not_yielded(
    unyielded: list[RenderResult | RenderFailure], pending: set[Future[ChunkOutcome]]
) -> dict[str, str]:
    """Where the PNGs are that a batch closed early stored and did not yield: those it held, and those of
    the invocations that were still running (they finish before this is asked)."""
    finished = [
        future.result() for future in pending if future.done() and not future.cancelled() and future.exception() is None
    ]
    left = [*unyielded, *(result for outcome in finished for result in outcome.outcomes)]
    return {result.key: result.location for result in left if isinstance(result, RenderResult)}
