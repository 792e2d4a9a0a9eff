"""Shared fixtures: temporary Dagster instances, a local fractal store, moto's S3 server over HTTP."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import psutil
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from fractal_pipeline.runs.execute import run_failure_message

from .pg import NO_POSTGRES, PgServer, answering_server, find_pg_ctl, from_environment, throwaway_cluster

# Tests never touch a real AWS account or the user's config.
os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
os.environ.setdefault("AWS_CONFIG_FILE", "/nonexistent")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@pytest.fixture(autouse=True)
def _isolated_environ() -> Iterator[None]:
    """Undo environment changes a test makes (the CLI sets DAGSTER_HOME when invoked in-process)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A temporary SQLite-backed instance (dynamic partitions, runs, events)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Local deployment: PNGs in a temp folder, no bucket."""
    folder = tmp_path / "fractals"
    monkeypatch.setenv("FRACTALS_DIR", str(folder))
    monkeypatch.delenv("FRACTALS_BUCKET", raising=False)
    monkeypatch.delenv("FRACTAL_DEPLOYMENT", raising=False)
    return folder


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the session: one that answers where libpq's variables point, else a throwaway
    cluster from the system's binaries (see :mod:`fractal_pipeline_tests.pg`); neither is one line saying
    what to install."""
    server = answering_server()
    if server is not None:
        yield server
        return
    pg_ctl = find_pg_ctl()
    if pg_ctl is None:
        where = from_environment()
        pytest.fail(NO_POSTGRES.format(where=f"{where.host}:{where.port}"), pytrace=False)
    with throwaway_cluster(pg_ctl) as started:
        yield started


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port), spoken to over real HTTP."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """S3 deployment against moto: a fresh bucket, credentials and endpoint in the environment."""
    bucket = f"fractals-{uuid.uuid4().hex[:10]}"
    env = {**moto_credentials(moto_endpoint), "FRACTALS_BUCKET": bucket}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.delenv("FRACTAL_DEPLOYMENT", raising=False)
    s3_client(moto_endpoint).create_bucket(Bucket=bucket)
    return env


@pytest.fixture
def moto_auth(moto_endpoint: str) -> Iterator[dict[str, str]]:
    """Credentials of an IAM user allowed s3:* (nothing else); while the test runs, moto's server checks every
    request's signature against its IAM users (its ``/moto-api/reset-auth`` switch) and rejects
    unknown access keys and wrong secrets as AWS does."""
    endpoint = moto_endpoint
    iam = boto3.client(
        "iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="t"
    )
    user = f"sensor-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="fractals", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]

    def requests_unchecked_before(count: str) -> None:
        url, headers = f"{endpoint}/moto-api/reset-auth", {"Content-Type": "text/plain"}
        urllib.request.urlopen(urllib.request.Request(url, data=count.encode(), headers=headers), timeout=10).close()

    requests_unchecked_before("0")
    try:
        yield {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        requests_unchecked_before("inf")  # the session's other tests use moto's default: no checks


def moto_credentials(endpoint: str) -> dict[str, str]:
    """Environment that points boto3 (and the aws CLI) at moto with dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def asset_job(defs: dg.Definitions) -> dg.JobDefinition:
    return defs.resolve_implicit_global_asset_job_def()


def materialize_specs(defs: dg.Definitions, instance: dg.DagsterInstance, **config: Any) -> dg.ExecuteInProcessResult:
    return asset_job(defs).execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("fractal_specs")],
        run_config={**QUIET, "ops": {"fractal_specs": {"config": config}}},
        raise_on_error=False,
    )


def materialize_images(
    defs: dg.Definitions, instance: dg.DagsterInstance, first: str, last: str, workers: int = 2
) -> dg.ExecuteInProcessResult:
    """One run over the partition range first...last, as a backfill with single_run() would launch."""
    return asset_job(defs).execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("fractal_images")],
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
        run_config={**QUIET, "ops": {"fractal_images": {"config": {"workers": workers}}}},
        raise_on_error=False,
    )


def materialize_collage(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return asset_job(defs).execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("fractal_collage")],
        run_config=QUIET,
        raise_on_error=False,
    )


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The one-line message the CLI would print for a failed run."""
    assert not result.success, "the run succeeded"
    return run_failure_message(result)


# --- docs/reliability.md: the table of faults survived and inputs tried, generated from the run ---

REPO = Path(__file__).resolve().parents[1]
_reliability: list[tuple[str, str, str, float]] = []


@pytest.fixture(autouse=True)
def _reliability_row(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("reliability")
    if marker is not None:
        area, scenario = marker.args
        request.node.user_properties.append(("reliability", json.dumps([area, scenario])))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and not report.passed):
        for name, value in report.user_properties:
            if name == "reliability":
                area, scenario = json.loads(str(value))
                _reliability.append((area, scenario, report.outcome, report.duration))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput") or not _reliability:
        return  # an xdist worker: the controller writes the report
    rows: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for area, scenario, outcome, duration in _reliability:
        rows.setdefault((area, scenario), []).append((outcome, duration))
    lines = [
        "# Reliability",
        "",
        "Generated by the test suite (`pytest`; set `FRACTAL_RELIABILITY_REPORT=docs/reliability.md` to refresh",
        "this file). Each row is a fault injected or a class of hostile input tried against the real",
        "pipeline (moto's S3 server over HTTP, worker processes, the Dagster instance); *nothing lost* means",
        "every test of the row checked that each stored object is complete and matches its key, and that no",
        "partition was marked materialised without its object.",
        "",
        "| area | scenario | tests | passed | result | seconds |",
        "|---|---|---:|---:|---|---:|",
    ]
    for (area, scenario), outcomes in sorted(rows.items()):
        passed = sum(1 for outcome, _ in outcomes if outcome == "passed")
        result = "survived, nothing lost" if passed == len(outcomes) else "FAILED"
        seconds = sum(duration for _, duration in outcomes)
        lines.append(f"| {area} | {scenario} | {len(outcomes)} | {passed} | {result} | {seconds:.1f} |")
    target = Path(os.environ.get("FRACTAL_RELIABILITY_REPORT") or REPO / "test-artifacts" / "reliability.md")
    if not target.is_absolute():
        target = REPO / target
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- processes and fake HTTP services


def group_processes(pgid: int) -> list[psutil.Process]:
    """Live processes of the process group ``pgid`` (a zombie has exited and only awaits reaping)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def spawned(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` started by multiprocessing's spawn (Dagster's step processes)."""
    return _with_in_command_line(processes, "spawn_main")


def render_workers(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` that are render workers (``python -m fractal_pipeline.workers.worker``)."""
    return _with_in_command_line(processes, "fractal_pipeline.workers.worker")


def _with_in_command_line(processes: Iterable[psutil.Process], text: str) -> list[psutil.Process]:
    found = []
    for proc in processes:
        try:
            if text in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


class QuietJsonHandler(BaseHTTPRequestHandler):
    """Base for the small fake AWS endpoints of the tests: JSON replies, no access log on stderr."""

    def reply_json(self, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(200)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
