"""The Lambda render function and the ``lambda`` render backend, against moto's S3 over HTTP.

The Lambda service is faked the way dagster-aws's own pipes tests do it: a
boto3-shaped client whose ``invoke()`` runs the real handler
(``fractal_pipeline.aws.lambda_handler.handler``) in a fresh Python subprocess
with the JSON payload as its event, and answers like Lambda (``Payload``,
``FunctionError``, a 4 KB ``LogResult`` tail). Everything else is real:
``PipesLambdaClient``, the S3 message writer/reader, moto's S3 server.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR, encode_param

from fractal_pipeline.aws.lambda_backend import chunked, outcomes_from_messages
from fractal_pipeline.aws.lambda_handler import FAILURE_MESSAGE, RESULT_MESSAGE, BadEvent, handler
from fractal_pipeline.definitions import build_definitions
from fractal_pipeline.defs import cancel
from fractal_pipeline.defs.assets import fractal_collage, fractal_images, fractal_specs
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.defs.resources import RenderBackendResource
from fractal_pipeline.fractals import FractalSpec, render_png
from fractal_pipeline.store import StoreConfig
from fractal_pipeline.workers.results import RenderFailure, RenderResult

from ..conftest import failure_message, materialize_images, materialize_specs, s3_client

pytestmark = pytest.mark.s3

HANDLER = "fractal_pipeline.aws.lambda_handler.handler"
LOG_TAIL_LIMIT = 4096

#: A minimal Lambda runtime: import the handler by its dotted path (as the image's CMD
#: names it), call it with the event, write the result or the error payload.
#: FAKE_LAMBDA_CRASH_KEY makes the sandbox die (SystemExit, which the handler does not
#: catch) when it reaches that key; with FAKE_LAMBDA_CRASH_ONCE (a marker path) only once.
RUNTIME = textwrap.dedent(
    """
    import importlib, json, os, sys, traceback
    target, in_path, out_path = sys.argv[1:4]
    module_name, _, name = target.rpartition(".")
    module = importlib.import_module(module_name)
    crash_key = os.environ.get("FAKE_LAMBDA_CRASH_KEY")
    if crash_key:
        real = module.render_and_store
        marker = os.environ.get("FAKE_LAMBDA_CRASH_ONCE")
        def render_and_store(key, store, **kwargs):
            if key == crash_key and not (marker and os.path.exists(marker)):
                if marker:
                    open(marker, "w").close()
                raise SystemExit(f"sandbox died while rendering {key}")
            return real(key, store, **kwargs)
        module.render_and_store = render_and_store
    with open(in_path) as f:
        event = json.load(f)
    code = 0
    try:
        value = getattr(module, name)(event, None)
    except BaseException as exc:
        traceback.print_exc()
        value = {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": []}
        code = 42
    with open(out_path, "w") as f:
        json.dump(value, f)
    sys.exit(code)
    """
)


class SubprocessLambdaClient:
    """A boto3 Lambda client whose ``invoke`` runs the handler in a subprocess, like Lambda would."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self.invocations: list[list[str]] = []
        self._lock = threading.Lock()

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["InvocationType"] == "RequestResponse"
        with self._lock:
            self.invocations.append(list(json.loads(kwargs["Payload"])["keys"]))
        env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "PATH", "HOME"))}
        env.update(self.env)
        with tempfile.TemporaryDirectory() as tmp:
            in_path, out_path, log_path = (os.path.join(tmp, name) for name in ("in.json", "out.json", "log"))
            Path(in_path).write_text(kwargs["Payload"])
            with open(log_path, "wb") as log:
                done = subprocess.run(
                    [sys.executable, "-c", RUNTIME, HANDLER, in_path, out_path],
                    env=env,
                    stdout=log,
                    stderr=log,
                    timeout=120,
                    check=False,
                )
            logs = Path(log_path).read_bytes()
            if done.returncode not in (0, 42):
                raise RuntimeError(f"fake lambda runtime crashed ({done.returncode}):\n{logs.decode()}")
            response: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(Path(out_path).read_bytes())}
        if done.returncode == 42:
            response["FunctionError"] = "Unhandled"
        if kwargs.get("LogType") == "Tail":
            response["LogResult"] = base64.b64encode(logs[-LOG_TAIL_LIMIT:]).decode()
        return response


def lambda_defs(client: SubprocessLambdaClient, **renderer: Any) -> dg.Definitions:
    """The 'aws' deployment's definitions with the fake Lambda client behind the renderer."""

    class FakeLambdaRenderer(RenderBackendResource):
        def lambda_client(self) -> Any:
            return client

    resources = dict(build_definitions("aws").resources)
    resources["renderer"] = FakeLambdaRenderer(backend="lambda", function_name="fractal-render", **renderer)
    return dg.Definitions(assets=[fractal_specs, fractal_images, fractal_collage], resources=resources)


@pytest.fixture
def aws_env(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("FRACTAL_DEPLOYMENT", "aws")
    monkeypatch.setenv("FRACTALS_LAMBDA_FUNCTION", "fractal-render")
    return {**s3_env, "FRACTALS_LAMBDA_FUNCTION": "fractal-render"}


def _objects(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _pipes_event(keys: list[str], bucket: str, key_prefix: str) -> dict[str, Any]:
    """An event as PipesLambdaClient builds it: keys, bucket and the encoded pipes params."""
    context_data = {
        "asset_keys": ["fractal_images"],
        "code_version_by_asset_key": None,
        "provenance_by_asset_key": None,
        "partition_key": None,
        "partition_key_range": {"start": keys[0], "end": keys[-1]},
        "partition_time_window": None,
        "run_id": "test-run",
        "job_name": "__ASSET_JOB",
        "retry_number": 0,
        "extras": {},
    }
    return {
        "keys": keys,
        "bucket": bucket,
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context_data}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param({"bucket": bucket, "key_prefix": key_prefix}),
    }


def _messages(endpoint: str, bucket: str, key_prefix: str) -> list[dict[str, Any]]:
    client = s3_client(endpoint)
    messages = []
    for key in sorted(_objects(endpoint, bucket, key_prefix + "/"), key=lambda k: int(k.rsplit("/", 1)[1][:-5])):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        messages.extend(json.loads(line) for line in body.splitlines() if line)
    return messages


def test_handler_renders_a_chunk_into_s3_and_reports_each_result(aws_env: dict[str, str]) -> None:
    endpoint, bucket = aws_env["AWS_ENDPOINT_URL"], aws_env["FRACTALS_BUCKET"]
    keys = ["dragon_6-64px", "koch_snowflake_2-64px-ice", "dragon_99", "levy_c_5-64px"]
    # twice in one process: a warm Lambda container must not reuse the closed pipes context
    for attempt in ("first", "second"):
        answer = handler(_pipes_event(keys, bucket, f"pipes/{attempt}"), None)
        assert answer["rendered"] == ["dragon_6-64px", "koch_snowflake_2-64px-ice", "levy_c_5-64px"]
        assert answer["failed"] == ["dragon_99"]

        messages = _messages(endpoint, bucket, f"pipes/{attempt}")
        methods = [m["method"] for m in messages]
        assert methods[0] == "opened" and methods[-1] == "closed"
        assert messages[-1]["params"] in (None, {})  # closed without an exception
        outcomes = outcomes_from_messages(
            [m["params"]["payload"] for m in messages if m["method"] == "report_custom_message"]
        )
        assert [o.key for o in outcomes] == keys  # one message per key, in order
        failure = outcomes[2]
        assert isinstance(failure, RenderFailure) and failure.error.startswith("InvalidSpec: depth:")
        for result in (o for o in outcomes if isinstance(o, RenderResult)):
            stored = s3_client(endpoint).get_object(Bucket=bucket, Key=f"fractals/{result.key}.png")["Body"].read()
            assert stored == render_png(FractalSpec.from_key(result.key))
            assert result.png_bytes == len(stored) and result.location == f"s3://{bucket}/fractals/{result.key}.png"
            assert result.worker.startswith("lambda-") and result.thumbnail_png.startswith(b"\x89PNG")
    prefixes = {key.split("/")[0] for key in _objects(endpoint, bucket)}
    assert prefixes == {"fractals", "pipes"}  # what the function's IAM policy allows it to write


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"bucket": "b"}, "keys:"),
        ({"keys": [], "bucket": "b"}, "keys:"),
        ({"keys": ["dragon_3", 4], "bucket": "b"}, "keys:"),
        ({"keys": ["dragon_3"]}, "bucket:"),
        (["dragon_3"], "event:"),
    ],
)
def test_handler_rejects_a_bad_event_naming_the_field(event: Any, field: str) -> None:
    with pytest.raises(BadEvent, match=field) as raised:
        handler(event, None)
    assert "\n" not in str(raised.value)


def test_custom_messages_round_trip_render_results() -> None:
    result = RenderResult(
        "dragon_3", "fractals/dragon_3.png", "s3://b/fractals/dragon_3.png", 8, 100, "w", 1.0, 2.0, 3.0, 4.0, b"\x89PNG"
    )
    messages = [
        {"type": RESULT_MESSAGE, "result": result.to_json()},
        {"type": FAILURE_MESSAGE, "key": "dragon_99", "error": "InvalidSpec: depth: ..."},
        {"type": "something else"},
        "not a dict",
    ]
    assert outcomes_from_messages(messages) == [result, RenderFailure("dragon_99", "InvalidSpec: depth: ...")]
    assert chunked(["a", "b", "a", "c", "d"], 2) == [["a", "b"], ["c", "d"]]


def test_lambda_and_local_backends_store_identical_pngs_and_metadata(
    aws_env: dict[str, str], instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, bucket = aws_env["AWS_ENDPOINT_URL"], aws_env["FRACTALS_BUCKET"]
    client = SubprocessLambdaClient()
    defs = lambda_defs(client, chunk_size=2, concurrency=3)
    assert materialize_specs(defs, instance, count=5, seed=21, size=96, palette=None).success
    keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    result = materialize_images(defs, instance, keys[0], keys[-1])
    assert result.success, failure_message(result)
    assert sorted(map(sorted, client.invocations)) == sorted(map(sorted, chunked(keys, 2)))  # one invocation per chunk
    lambda_mats = {m.partition: m.metadata for m in result.asset_materializations_for_node("fractal_images")}
    assert sorted(lambda_mats) == sorted(keys)
    assert [c.passed for c in result.get_asset_check_evaluations()] == [True]
    assert all(meta["worker"].value.startswith("lambda-") for meta in lambda_mats.values())

    local_dir = tmp_path / "local"
    monkeypatch.setenv("FRACTALS_DIR", str(local_dir))
    with dg.instance_for_test() as local_instance:
        local_defs = build_definitions("local")
        assert materialize_specs(local_defs, local_instance, count=5, seed=21, size=96, palette=None).success
        local = materialize_images(local_defs, local_instance, keys[0], keys[-1])
        assert local.success, failure_message(local)
        local_mats = {m.partition: m.metadata for m in local.asset_materializations_for_node("fractal_images")}
    assert sorted(local_mats) == sorted(keys)
    for key in keys:
        from_lambda = s3_client(endpoint).get_object(Bucket=bucket, Key=f"fractals/{key}.png")["Body"].read()
        assert from_lambda == (local_dir / "fractals" / f"{key}.png").read_bytes()
        assert set(lambda_mats[key]) == set(local_mats[key])
        for name in ("segments", "bytes", "thumbnail"):
            assert lambda_mats[key][name] == local_mats[key][name], name
        assert lambda_mats[key]["location"].value == f"s3://{bucket}/fractals/{key}.png"


def test_a_failed_chunk_is_retried_without_redoing_reported_results(
    aws_env: dict[str, str], instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    endpoint, bucket = aws_env["AWS_ENDPOINT_URL"], aws_env["FRACTALS_BUCKET"]
    specs = materialize_specs(lambda_defs(SubprocessLambdaClient()), instance, count=6, seed=5, size=64)
    assert specs.success
    keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    chunks = chunked(keys, 3)
    crash_key = chunks[1][1]  # the sandbox dies after reporting chunks[1][0]
    client = SubprocessLambdaClient(
        {"FAKE_LAMBDA_CRASH_KEY": crash_key, "FAKE_LAMBDA_CRASH_ONCE": str(tmp_path / "crashed")}
    )
    result = materialize_images(lambda_defs(client, chunk_size=3, concurrency=2), instance, keys[0], keys[-1])
    assert result.success, failure_message(result)

    assert sorted(map(sorted, client.invocations)) == sorted(map(sorted, [*chunks, chunks[1][1:]]))
    rendered_by = [key for keys_ in client.invocations for key in keys_]
    assert rendered_by.count(chunks[1][0]) == 1  # reported before the crash: not rendered again
    records = instance.fetch_materializations(dg.AssetKey("fractal_images"), limit=100).records
    partitions = [record.partition_key for record in records]
    assert sorted(partitions) == sorted(keys)  # every partition, exactly once
    assert _objects(endpoint, bucket, "fractals/") == sorted(f"fractals/{key}.png" for key in keys)
    logs = [r.user_message for r in instance.all_logs(result.run_id) if "retrying" in r.user_message]
    assert len(logs) == 1 and f"sandbox died while rendering {crash_key}" in logs[0]


def test_a_chunk_that_keeps_failing_fails_only_its_unreported_keys(
    aws_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    assert materialize_specs(lambda_defs(SubprocessLambdaClient()), instance, count=4, seed=8, size=48).success
    keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    chunks = chunked(keys, 2)
    crash_key = chunks[0][1]  # dies on every attempt
    client = SubprocessLambdaClient({"FAKE_LAMBDA_CRASH_KEY": crash_key})
    result = materialize_images(lambda_defs(client, chunk_size=2, max_attempts=2), instance, keys[0], keys[-1])
    assert not result.success
    message = failure_message(result)
    assert message.startswith(f"1 of 4 partitions failed: {crash_key}: lambda fractal-render:")
    assert "sandbox died" in message and "(after 2 attempts)" in message
    assert sorted(client.invocations) == sorted([*chunks, [crash_key]])
    assert instance.get_materialized_partitions(dg.AssetKey("fractal_images")) == set(keys) - {crash_key}
    assert [c.passed for c in result.get_asset_check_evaluations()] == [False]


class StoppingLambdaClient(SubprocessLambdaClient):
    """Marks the running run CANCELING as its first invocation returns: a stop at a known point."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        super().__init__()
        self.instance = instance
        self.stopped = False

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        response = super().invoke(**kwargs)
        with self._lock:
            if not self.stopped:
                self.stopped = True
                (run,) = self.instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
                self.instance.report_run_canceling(run)
        return response


def test_a_run_stopped_mid_batch_records_every_png_its_invocations_stored(
    aws_env: dict[str, str], instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cancel, "CANCEL_POLL_S", 0.0)  # the step sees the stop at its next outcome
    endpoint, bucket = aws_env["AWS_ENDPOINT_URL"], aws_env["FRACTALS_BUCKET"]
    assert materialize_specs(lambda_defs(SubprocessLambdaClient()), instance, count=6, seed=11, size=48).success
    keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    client = StoppingLambdaClient(instance)
    result = materialize_images(lambda_defs(client, chunk_size=2, concurrency=2), instance, keys[0], keys[-1])
    assert not result.success
    assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.CANCELED  # type: ignore[union-attr]
    records = instance.fetch_materializations(dg.AssetKey("fractal_images"), limit=100).records
    recorded = sorted(record.partition_key or "" for record in records)
    # the stop came with a chunk's second PNG not yet handed to the step, and another invocation running
    assert any("unreported" in record.asset_materialization.metadata for record in records)  # type: ignore[union-attr]
    assert recorded == [
        key.removeprefix("fractals/").removesuffix(".png") for key in _objects(endpoint, bucket, "fractals/")
    ]


def test_lambda_backend_needs_a_bucket_and_a_function(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRACTALS_LAMBDA_FUNCTION")
    with pytest.raises(ValueError, match=r"^FRACTALS_LAMBDA_FUNCTION: "):
        build_definitions("aws")
    monkeypatch.delenv("FRACTALS_BUCKET")
    with pytest.raises(ValueError, match=r"^FRACTALS_BUCKET: "):
        build_definitions("aws")


@pytest.mark.parametrize(
    ("renderer", "store", "message"),
    [
        (RenderBackendResource(backend="moon"), StoreConfig(bucket="b"), "renderer.backend: unknown backend 'moon'"),
        (RenderBackendResource(backend="lambda"), StoreConfig(bucket="b"), "FRACTALS_LAMBDA_FUNCTION: "),
        (RenderBackendResource(backend="lambda", function_name="f"), StoreConfig(local_dir="x"), "FRACTALS_BUCKET: "),
    ],
)
def test_render_backend_misconfiguration_is_one_line(
    renderer: RenderBackendResource, store: StoreConfig, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        list(renderer.render(dg.build_asset_context(), ["dragon_3"], store))
    assert "\n" not in str(raised.value)
