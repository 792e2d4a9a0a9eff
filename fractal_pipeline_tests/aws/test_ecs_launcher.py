"""deploy/dagster.yaml as the production instance: EcsRunLauncher against moto's ECS, Postgres storage.

The instance is built from the file itself (copied into a temporary
``$DAGSTER_HOME``) with the environment the ECS task definitions set: the
local PostgreSQL, moto's server on 127.0.0.1 for ECS/EC2/S3, and the ECS task
metadata endpoint (a small HTTP server standing in for Fargate's) describing
the daemon's own task, from which the launcher takes cluster, subnets and
security groups (``use_current_ecs_task_config: true``).
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import boto3
import dagster as dg
import pytest
from dagster._core.launcher.base import WorkerStatus

from ..conftest import QuietJsonHandler, s3_client

# the session's Postgres database and the DAGSTER_PG_* variables for it
from ..pipeline.test_postgres import DEPLOY_YAML, pg_env, postgres_database  # noqa: F401

pytestmark = [pytest.mark.s3, pytest.mark.postgres]

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fractal-pipeline:app-test"


class _MetadataHandler(QuietJsonHandler):
    documents: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        self.reply_json(json.dumps(self.documents.get(self.path.rstrip("/") or "/", {})).encode())


@pytest.fixture
def ecs_env(
    moto_endpoint: str,
    pg_env: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[dict[str, Any]]:
    """A cluster in moto with the daemon's task running in it, and the env of the daemon's container."""
    aws = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in aws.items():
        monkeypatch.setenv(key, value)
    suffix = uuid.uuid4().hex[:8]
    ecs = boto3.client("ecs")
    ec2 = boto3.client("ec2")
    cluster = ecs.create_cluster(clusterName=f"fractal-{suffix}")["cluster"]
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"][0]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"dagster-{suffix}", Description="dagster tasks", VpcId=vpc)["GroupId"]
    fargate = {"networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "256", "memory": "1024"}
    ecs.register_task_definition(
        family=f"daemon-{suffix}",
        containerDefinitions=[{"name": "daemon", "image": IMAGE, "cpu": 256, "memory": 1024}],
        **fargate,
    )
    run_definition = ecs.register_task_definition(
        family=f"run-{suffix}",
        containerDefinitions=[{"name": "run", "image": IMAGE, "cpu": 256, "memory": 1024}],
        **fargate,
    )["taskDefinition"]
    daemon_task = ecs.run_task(
        cluster=cluster["clusterName"],
        taskDefinition=f"daemon-{suffix}",
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group], "assignPublicIp": "ENABLED"}
        },
    )["tasks"][0]
    bucket = f"fractals-{suffix}"
    s3_client(moto_endpoint).create_bucket(Bucket=bucket)

    handler = type("Handler", (_MetadataHandler,), {})
    handler.documents = {
        "/": {"Name": "daemon"},
        "/task": {"Cluster": cluster["clusterArn"], "TaskARN": daemon_task["taskArn"]},
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {
        "ECS_CONTAINER_METADATA_URI_V4": f"http://127.0.0.1:{server.server_address[1]}",
        "DAGSTER_ECS_CLUSTER": cluster["clusterName"],
        "DAGSTER_RUN_TASK_DEFINITION": f"run-{suffix}",
        "FRACTALS_BUCKET": bucket,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    try:
        yield {
            **env,
            "AWS_ENDPOINT_URL": moto_endpoint,
            "home": home,
            "ecs": ecs,
            "cluster_arn": cluster["clusterArn"],
            "subnet": subnet,
            "security_group": group,
            "daemon_task": daemon_task["taskArn"],
            "run_task_definition": run_definition["taskDefinitionArn"],
        }
    finally:
        server.shutdown()
        server.server_close()


def test_deploy_dagster_yaml_builds_the_production_instance(ecs_env: dict[str, Any]) -> None:
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    with dg.DagsterInstance.from_config(str(ecs_env["home"])) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        launcher = instance.run_launcher
        assert isinstance(launcher, EcsRunLauncher)
        assert launcher.task_definition == ecs_env["run_task_definition"]  # from DAGSTER_RUN_TASK_DEFINITION
        assert launcher.run_task_kwargs["cluster"] == ecs_env["DAGSTER_ECS_CLUSTER"]
        assert launcher.container_name == "run" and launcher.use_current_ecs_task_config
        logs = instance.compute_log_manager
        assert isinstance(logs, S3ComputeLogManager)
        with logs.capture_logs(["fractal_test", "step"]):
            print("captured by the compute log manager")
        keys = [
            item["Key"]
            for item in s3_client(ecs_env["AWS_ENDPOINT_URL"])
            .list_objects_v2(Bucket=ecs_env["FRACTALS_BUCKET"], Prefix="dagster/compute-logs/")
            .get("Contents", [])
        ]
        assert keys and all("fractal_test" in key for key in keys)  # stdout/stderr uploaded to the project bucket
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert instance.run_retries_max_retries == 2
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 8


def test_ecs_run_launcher_runs_execute_run_in_a_task_and_watches_it(ecs_env: dict[str, Any]) -> None:
    from dagster._core.test_utils import in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    from fractal_pipeline.definitions import defs

    ecs = ecs_env["ecs"]
    cluster = ecs_env["DAGSTER_ECS_CLUSTER"]
    with (
        dg.DagsterInstance.from_config(str(ecs_env["home"])) as instance,
        in_process_test_workspace(
            instance,
            LoadableTargetOrigin(module_name="fractal_pipeline.definitions", attribute="defs"),
            container_image=IMAGE,
        ) as workspace,
    ):
        location = workspace.get_code_location(workspace.code_location_names[0])
        remote_job = next(iter(location.get_repositories().values())).get_full_job("__ASSET_JOB")
        run = instance.create_run_for_job(
            defs.resolve_implicit_global_asset_job_def(),
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
        )
        before = set(ecs.list_tasks(cluster=cluster)["taskArns"])
        definitions_before = ecs.list_task_definitions()["taskDefinitionArns"]

        instance.launch_run(run.run_id, workspace)

        new = set(ecs.list_tasks(cluster=cluster)["taskArns"]) - before
        assert len(new) == 1
        task_arn = new.pop()
        task = ecs.describe_tasks(cluster=cluster, tasks=[task_arn])["tasks"][0]
        assert task["taskDefinitionArn"] == ecs_env["run_task_definition"]  # the configured one, none registered
        assert ecs.list_task_definitions()["taskDefinitionArns"] == definitions_before
        (override,) = task["overrides"]["containerOverrides"]
        assert override["name"] == "run"
        assert override["command"][:3] == ["dagster", "api", "execute_run"]
        assert run.run_id in override["command"][3]
        assert task["launchType"] == "FARGATE"
        assert ecs_env["subnet"] in json.dumps(task["attachments"])  # the daemon's own network config
        tags = {tag["key"]: tag["value"] for tag in ecs.list_tags_for_resource(resourceArn=task_arn)["tags"]}
        assert tags["dagster/run_id"] == run.run_id

        stored = instance.get_run_by_id(run.run_id)
        assert stored is not None
        assert stored.tags["ecs/task_arn"] == task_arn
        assert stored.tags["ecs/cluster"] == ecs_env["cluster_arn"]
        health = instance.run_launcher.check_run_worker_health(stored)
        assert health.status == WorkerStatus.RUNNING

        ecs.stop_task(cluster=cluster, task=task_arn, reason="test")
        after = instance.run_launcher.check_run_worker_health(stored)
        assert after.status == WorkerStatus.SUCCESS  # read back from ECS: stopped, no container exited non-zero

        queued = instance.create_run_for_job(
            defs.resolve_implicit_global_asset_job_def(),
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
        )
        instance.submit_run(queued.run_id, workspace)
        status = instance.get_run_by_id(queued.run_id)
        assert status is not None and status.status == dg.DagsterRunStatus.QUEUED  # the daemon launches it later
