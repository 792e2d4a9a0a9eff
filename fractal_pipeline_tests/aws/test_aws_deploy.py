"""``fractal-pipeline deploy`` / ``destroy`` and ``run --backend lambda`` against moto's server on 127.0.0.1.

moto's CloudFormation creates the real ``deploy/template.yaml`` (it skips the two
resource types it does not model, the bucket policy and the database secret) and
answers an unchanged re-deploy like AWS. It cannot execute an *update* of the
full template (its change-set apply fails on the ECS/ELB resources), so the
update path is exercised with a subset of the real template passed with
``--template``: the bucket and a log group, then one more log group.

``run --backend lambda`` reads the deployed stack's outputs and invokes the
render function through boto3; the Lambda API is a local HTTP server
(``AWS_ENDPOINT_URL_LAMBDA``) that runs the real handler in a subprocess.
"""

from __future__ import annotations

import ast
import json
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
from typer.testing import CliRunner

from fractal_pipeline.aws.deploy import TEMPLATE_PATH, load_template
from fractal_pipeline.cli.app import app

from ..conftest import QuietJsonHandler, moto_credentials
from .test_aws_lambda import SubprocessLambdaClient

pytestmark = pytest.mark.s3

runner = CliRunner()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """moto credentials and endpoint; every variable `run --backend` may set is restored afterwards."""
    env = {**moto_credentials(moto_endpoint), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("FRACTALS_BUCKET", "FRACTALS_LAMBDA_FUNCTION", "FRACTAL_DEPLOYMENT", "FRACTALS_STACK"):
        monkeypatch.setenv(key, "placeholder")  # so that monkeypatch restores (unsets) them
        monkeypatch.delenv(key)
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.delenv("FRACTALS_DIR", raising=False)
    return env


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_deploy_twice_then_destroy_twice(aws: dict[str, str]) -> None:
    stack, bucket = _name("fractal-test"), _name("fractal-bucket")
    cfn = boto3.client("cloudformation")

    preview = cli("deploy", "--stack", stack, "--bucket", bucket, "--dry-run")
    assert preview.exit_code == 0, preview.output
    assert re.search(r"Add\s+AWS::Lambda::Function\s+RenderFunction", preview.output)
    assert re.search(r"Add\s+AWS::RDS::DBInstance\s+Database", preview.output)
    assert "nothing was executed" in preview.output
    assert stack not in {
        s["StackName"] for s in cfn.list_stacks()["StackSummaries"] if s["StackStatus"] != "DELETE_COMPLETE"
    }

    first = cli("deploy", "--stack", stack, "--bucket", bucket)
    assert first.exit_code == 0, first.output
    assert "CREATE_COMPLETE" in first.output
    assert f"RenderFunctionName: {stack}-render" in first.output
    assert f"export FRACTALS_BUCKET={bucket} FRACTALS_LAMBDA_FUNCTION={stack}-render" in first.output
    s3 = boto3.client("s3")
    # moto applies a bucket's encryption and tags from the template (versioning and the public access
    # block it ignores; test_deploy_files checks those in the template itself)
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert {"Key": "project", "Value": "fractal-pipeline"} in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
    function = boto3.client("lambda").get_function(FunctionName=f"{stack}-render")["Configuration"]
    assert (function["MemorySize"], function["Timeout"]) == (1024, 300)
    role = function["Role"].split("/")[-1]
    assert role.startswith(f"{stack}-RenderFunctionRole")
    (policy,) = boto3.client("iam").list_role_policies(RoleName=role)["PolicyNames"]
    document = boto3.client("iam").get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]
    # the template's ${Bucket.Arn}/... resolved to this bucket: its fractals/ and pipes/ prefixes, nothing else
    assert re.findall(r"arn:aws:s3:::[^'\"\]]+", str(document)) == [
        f"arn:aws:s3:::{bucket}/fractals/*",
        f"arn:aws:s3:::{bucket}/pipes/*",
    ]
    families = {
        arn.split("/")[-1].split(":")[0] for arn in boto3.client("ecs").list_task_definitions()["taskDefinitionArns"]
    }
    assert {f"{stack}-{name}" for name in ("webserver", "daemon", "code-server", "run")} <= families
    groups = {g["logGroupName"] for g in boto3.client("logs").describe_log_groups()["logGroups"]}
    assert f"/aws/lambda/{stack}-render" in groups and f"/fractal-pipeline/{stack}/runs" in groups
    # the spec-file notifications queue: the code server's FRACTALS_SPECS_QUEUE, readable by the Dagster role
    queue_url = re.search(r"SpecsQueueUrl: (\S+)", first.output)
    assert queue_url, first.output
    sqs = boto3.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url.group(1), AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "120"
    assert json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"].startswith("arn:aws:sqs:us-east-1:")
    ecs = boto3.client("ecs")
    for family in ("code-server", "daemon"):
        task = ecs.describe_task_definition(taskDefinition=f"{stack}-{family}")["taskDefinition"]
        environment = {e["name"]: e["value"] for e in task["containerDefinitions"][0]["environment"]}
        assert environment["FRACTALS_SPECS_QUEUE"] == queue_url.group(1)
    (dagster_role,) = [
        r["RoleName"]
        for r in boto3.client("iam").list_roles()["Roles"]
        if r["RoleName"].startswith(f"{stack}-DagsterTaskRole")
    ]
    (policy,) = boto3.client("iam").list_role_policies(RoleName=dagster_role)["PolicyNames"]
    document = boto3.client("iam").get_role_policy(RoleName=dagster_role, PolicyName=policy)["PolicyDocument"]
    document = ast.literal_eval(document) if isinstance(document, str) else document  # moto keeps a repr
    (statement,) = [s for s in document["Statement"] if s.get("Sid") == "ReadSpecFileNotifications"]
    assert statement["Resource"] == attributes["QueueArn"]

    again = cli("deploy", "--stack", stack)  # no options: every parameter keeps its value
    assert again.exit_code == 0, again.output
    assert f"stack {stack} is up to date: no changes" in again.output

    gone = cli("destroy", "--stack", stack)
    assert gone.exit_code == 0, gone.output
    assert f"stack {stack} deleted" in gone.output
    assert f"kept AWS::S3::Bucket {bucket} (DeletionPolicy Retain)" in gone.output
    assert "a final snapshot of AWS::RDS::DBInstance" in gone.output
    assert s3.head_bucket(Bucket=bucket)  # the images outlive the stack
    assert f"{stack}-render" not in {f["FunctionName"] for f in boto3.client("lambda").list_functions()["Functions"]}

    twice = cli("destroy", "--stack", stack)
    assert twice.exit_code == 0, twice.output
    assert f"stack {stack} does not exist: already gone" in twice.output


def json_form(node: Any) -> Any:
    """A loaded template as JSON CloudFormation takes it: ``!GetAtt A.B`` becomes ``{"Fn::GetAtt": ["A", "B"]}``."""
    if isinstance(node, dict):
        if set(node) == {"Fn::GetAtt"} and isinstance(node["Fn::GetAtt"], str):
            return {"Fn::GetAtt": node["Fn::GetAtt"].split(".", 1)}
        return {key: json_form(value) for key, value in node.items()}
    if isinstance(node, list):
        return [json_form(value) for value in node]
    return node


def test_update_with_a_subset_template(aws: dict[str, str], tmp_path: Path) -> None:
    real = load_template(TEMPLATE_PATH.read_text())

    def subset(*resources: str) -> Path:
        template = {
            "Parameters": {"BucketName": real["Parameters"]["BucketName"]},
            "Conditions": real["Conditions"],
            "Resources": {name: real["Resources"][name] for name in resources},
            "Outputs": {"BucketName": real["Outputs"]["BucketName"]},
        }
        path = tmp_path / f"subset-{len(resources)}.json"
        path.write_text(json.dumps(json_form(template)))
        return path

    stack = _name("fractal-subset")
    bucket = ("Bucket", "SpecsQueuePolicy", "SpecsQueue", "SpecsDeadLetterQueue")  # the bucket and what it needs
    small, larger = subset(*bucket, "RenderLogGroup"), subset(*bucket, "RenderLogGroup", "RunLogGroup")
    # a named bucket: moto cannot update a bucket whose name CloudFormation generated
    assert cli("deploy", "--stack", stack, "--template", str(small), "--bucket", _name("fractal-subset")).exit_code == 0
    preview = cli("deploy", "--stack", stack, "--template", str(larger), "--dry-run")
    assert preview.exit_code == 0, preview.output
    assert re.search(r"Add\s+AWS::Logs::LogGroup\s+RunLogGroup", preview.output)
    groups = boto3.client("logs").describe_log_groups(logGroupNamePrefix=f"/fractal-pipeline/{stack}/")["logGroups"]
    assert groups == []  # a dry run changes nothing
    update = cli("deploy", "--stack", stack, "--template", str(larger))
    assert update.exit_code == 0, update.output
    assert "UPDATE_COMPLETE" in update.output
    groups = boto3.client("logs").describe_log_groups(logGroupNamePrefix=f"/fractal-pipeline/{stack}/")["logGroups"]
    assert [g["logGroupName"] for g in groups] == [f"/fractal-pipeline/{stack}/runs"]
    assert "no changes" in cli("deploy", "--stack", stack, "--template", str(larger)).output
    assert cli("destroy", "--stack", stack).exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "Nope=1"], "--param: the template has no parameter 'Nope'"),
        (["--param", "novalue"], "--param: expected KEY=VALUE"),
        (["--vpc", "vpc-123"], "--vpc: pass --vpc and --subnets together"),
        (["--template", "/nonexistent/template.yaml"], "--template: cannot read"),
    ],
)
def test_deploy_refuses_bad_options_in_one_line(aws: dict[str, str], args: list[str], message: str) -> None:
    result = cli("deploy", "--stack", _name("fractal-bad"), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


class _LambdaApi(QuietJsonHandler):
    """The Lambda Invoke REST call, answered by running the handler in a subprocess."""

    client: ClassVar[SubprocessLambdaClient]
    functions: ClassVar[list[str]]

    def do_POST(self) -> None:
        match = re.fullmatch(r"/2015-03-31/functions/([^/]+)/invocations", self.path.split("?")[0])
        assert match, self.path
        payload = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.functions.append(match.group(1))
        response = self.client.invoke(
            FunctionName=match.group(1),
            InvocationType=self.headers.get("X-Amz-Invocation-Type", "RequestResponse"),
            Payload=payload,
            LogType=self.headers.get("X-Amz-Log-Type", "None"),
        )
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if "FunctionError" in response:
            headers["X-Amz-Function-Error"] = response["FunctionError"]
        if "LogResult" in response:
            headers["X-Amz-Log-Result"] = response["LogResult"]
        self.reply_json(response["Payload"].read(), headers)


@pytest.fixture
def lambda_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_LambdaApi]]:
    handler = type("LambdaApi", (_LambdaApi,), {"client": SubprocessLambdaClient(), "functions": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_run_backend_lambda_uses_the_deployed_function(
    aws: dict[str, str], lambda_api: type[_LambdaApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, bucket = _name("fractal-run"), _name("fractal-run-bucket")
    monkeypatch.setenv("FRACTALS_STACK", stack)
    missing = cli("run", "--count", "2", "--backend", "lambda")
    assert missing.exit_code == 2
    assert f"--backend lambda: stack '{stack}' is not deployed in us-east-1; run `fractal-pipeline deploy` first" in (
        missing.output
    )
    assert lambda_api.functions == []

    assert cli("deploy", "--bucket", bucket).exit_code == 0  # FRACTALS_STACK names the stack
    result = cli("run", "--count", "3", "--seed", "4", "--size", "64", "--backend", "lambda")
    assert result.exit_code == 0, result.output
    assert f"rendering on Lambda {stack}-render (stack {stack}), PNGs in s3://{bucket}" in result.output
    keys = [line for line in result.output.splitlines() if line.startswith("fractals/")]
    assert len(keys) == 3
    assert set(lambda_api.functions) == {f"{stack}-render"}
    rendered = [key for invocation in lambda_api.client.invocations for key in invocation]
    assert sorted(f"fractals/{key}.png" for key in rendered) == sorted(keys)
    stored = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="fractals/")["Contents"]}
    assert stored == set(keys)
    assert "collages/fractal_collage.png" in result.output
    assert cli("destroy").exit_code == 0

    unknown = cli("run", "--backend", "moon")
    assert unknown.exit_code == 2 and "--backend: unknown backend 'moon'; use local or lambda" in unknown.output
