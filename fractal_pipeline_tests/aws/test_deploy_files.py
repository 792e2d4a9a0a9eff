"""deploy/: the CloudFormation template (cfn-lint, least-privilege IAM), the Dockerfiles and their consistency.

No image can be built here (no Docker engine), so the Dockerfiles are parsed:
every instruction is known, every COPY source exists in the build context (the
repository root), the entry points resolve to real, importable code and parse
with the real CLIs, and the Lambda image installs exactly what its handler imports.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from fractal_pipeline.aws.deploy import load_template

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TEMPLATE = load_template((DEPLOY / "template.yaml").read_text())
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
#: Actions AWS authorises only on Resource "*" (no resource-level permissions); each is read-only or a login.
NO_RESOURCE_LEVEL = {"ecr:GetAuthorizationToken", "ecs:DescribeTaskDefinition", "ec2:DescribeNetworkInterfaces"}
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER"}
INSTRUCTIONS |= {"WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


# --- CloudFormation -------------------------------------------------------------------


def test_template_is_cfn_lint_clean() -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    done = subprocess.run(
        [str(cfn_lint), "--include-checks", "I", "--", str(DEPLOY / "template.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _statements() -> list[tuple[str, dict[str, Any]]]:
    """(role logical id, statement) of every inline IAM policy in the template."""
    found = []
    for logical_id, resource in RESOURCES.items():
        if resource["Type"] == "AWS::IAM::Role":
            for policy in resource["Properties"].get("Policies", []):
                found += [(logical_id, s) for s in policy["PolicyDocument"]["Statement"]]
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            found += [(logical_id, s) for s in resource["Properties"]["PolicyDocument"]["Statement"]]
    return found


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_no_iam_statement_grants_everything() -> None:
    statements = _statements()
    assert len(statements) > 10
    for role, statement in statements:
        assert statement["Effect"] == "Allow", role
        actions = _as_list(statement["Action"])
        assert all(a != "*" and not a.endswith(":*") for a in actions), (role, actions)
        if "*" in _as_list(statement["Resource"]):
            assert set(actions) <= NO_RESOURCE_LEVEL, (role, actions)
            # ...and even those only in the stack's own region.
            assert statement.get("Condition") == {"StringEquals": {"aws:RequestedRegion": {"Ref": "AWS::Region"}}}, (
                role,
                actions,
            )
    assert not any(
        r["Type"] == "AWS::IAM::Role" and r["Properties"].get("ManagedPolicyArns") for r in RESOURCES.values()
    )  # no AWS managed policies: everything granted is spelled out above


def test_render_function_writes_only_its_prefixes_and_its_logs() -> None:
    statements = [s for role, s in _statements() if role == "RenderFunctionRole"]
    granted: dict[str, list[Any]] = {}
    for statement in statements:
        for action in _as_list(statement["Action"]):
            granted.setdefault(action, []).extend(_as_list(statement["Resource"]))
    assert set(granted) == {"logs:CreateLogStream", "logs:PutLogEvents", "s3:PutObject"}
    assert granted["s3:PutObject"] == [{"Fn::Sub": "${Bucket.Arn}/fractals/*"}, {"Fn::Sub": "${Bucket.Arn}/pipes/*"}]
    assert granted["logs:PutLogEvents"] == [{"Fn::GetAtt": "RenderLogGroup.Arn"}]
    function = RESOURCES["RenderFunction"]["Properties"]
    assert function["Role"] == {"Fn::GetAtt": "RenderFunctionRole.Arn"}
    assert RESOURCES["RenderLogGroup"]["Properties"]["LogGroupName"] == {
        "Fn::Sub": "/aws/lambda/${AWS::StackName}-render"
    }
    assert function["FunctionName"] == {"Fn::Sub": "${AWS::StackName}-render"}  # so the log group is its own


def test_only_the_run_task_may_invoke_and_only_the_render_function() -> None:
    invoking = [
        (role, statement)
        for role, statement in _statements()
        if any(a.startswith("lambda:") for a in _as_list(statement["Action"]))
    ]
    assert len(invoking) == 1
    role, statement = invoking[0]
    assert role == "RunTaskRole"
    assert statement["Action"] == "lambda:InvokeFunction"
    assert statement["Resource"] == {"Fn::GetAtt": "RenderFunction.Arn"}
    run_task = RESOURCES["RunTaskDefinition"]["Properties"]
    assert run_task["TaskRoleArn"] == {"Fn::GetAtt": "RunTaskRole.Arn"}


def test_bucket_is_versioned_private_and_encrypted() -> None:
    bucket = RESOURCES["Bucket"]
    props = bucket["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert bucket["DeletionPolicy"] == "Retain"  # `destroy` keeps the images
    assert RESOURCES["Database"]["Properties"]["StorageEncrypted"] is True
    assert RESOURCES["Database"]["Properties"]["PubliclyAccessible"] is False


def _env_references(node: Any) -> set[str]:
    """Every ``{env: NAME}`` in a dagster.yaml."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_env_references(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_env_references(v) for v in node)) if node else set()
    return set()


def _containers() -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource["Properties"]["ContainerDefinitions"][0]
        for logical_id, resource in RESOURCES.items()
        if resource["Type"] == "AWS::ECS::TaskDefinition"
    }


def test_every_task_gets_what_dagster_yaml_reads() -> None:
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    needed = _env_references(instance) | {"FRACTAL_DEPLOYMENT", "FRACTALS_LAMBDA_FUNCTION"}
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_PASSWORD", "DAGSTER_RUN_TASK_DEFINITION", "FRACTALS_BUCKET"} <= needed
    containers = _containers()
    assert set(containers) == {
        "WebserverTaskDefinition",
        "DaemonTaskDefinition",
        "CodeServerTaskDefinition",
        "RunTaskDefinition",
    }
    for logical_id, container in containers.items():
        names = {item["Name"] for item in container.get("Environment", [])}
        names |= {item["Name"] for item in container.get("Secrets", [])}
        assert needed <= names, (logical_id, needed - names)
    assert containers["RunTaskDefinition"]["Name"] == instance["run_launcher"]["config"]["container_name"]
    assert instance["run_launcher"]["class"] == "EcsRunLauncher"


# --- Dockerfiles -----------------------------------------------------------------------


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending = f"{pending} {line}".strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    return instructions


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def _check_structure(path: Path) -> list[tuple[str, str]]:
    instructions = parse_dockerfile(path)
    assert instructions[0][0] in ("FROM", "ARG"), path.name
    assert {keyword for keyword, _ in instructions} <= INSTRUCTIONS, path.name
    for keyword, arguments in instructions:
        if keyword in ("COPY", "ADD"):
            parts = [p for p in shlex.split(arguments) if not p.startswith("--")]
            for source in parts[:-1]:
                assert (ROOT / source).exists(), f"{path.name}: COPY source {source} is not in the build context"
        if keyword == "FROM":
            assert ":" in arguments and not arguments.endswith(":latest"), f"{path.name}: pin the base image"
    assert [k for k, _ in instructions].count("CMD") == 1, path.name
    return instructions


def _command(group: click.Command, argv: list[str]) -> click.Context:
    """Parse ``argv`` with the real click CLI (no execution): unknown options fail here."""
    command, words, context = group, list(argv), None
    while isinstance(command, click.Group):
        name = words.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"no command {name!r}"
        command = sub
    context = command.make_context(command.name or "", words)
    return context


def test_app_dockerfile_serves_the_definitions_and_sets_the_image() -> None:
    import dagster as dg
    from dagster._cli import cli as dagster_cli

    instructions = _check_structure(DEPLOY / "Dockerfile")
    env = " ".join(arguments for keyword, arguments in instructions if keyword == "ENV")
    assert re.search(r"\bDAGSTER_CURRENT_IMAGE=\$\{IMAGE_URI\}", env)
    assert "ARG IMAGE_URI" in {f"{k} {a.split('=')[0]}" for k, a in instructions}
    assert re.search(r"\bDAGSTER_HOME=/opt/dagster/dagster_home\b", env)
    copies = [a for k, a in instructions if k == "COPY"]
    assert "deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml" in copies

    cmd = _exec_form(next(a for k, a in instructions if k == "CMD"))
    assert cmd[:3] == ["dagster", "api", "grpc"]
    parsed = _command(dagster_cli, cmd[1:])
    module = parsed.params["module_name"]
    assert module == "fractal_pipeline.definitions"
    loaded = __import__(module, fromlist=["defs"])
    assert isinstance(loaded.defs, dg.Definitions)
    # the code server task of the template runs the same command as the image's default
    code_server = _containers()["CodeServerTaskDefinition"]
    assert code_server["Command"] == cmd


def test_template_commands_parse_with_the_real_clis() -> None:
    from dagster._daemon.cli import cli as daemon_cli
    from dagster_webserver.cli import cli as webserver_cli

    containers = _containers()
    webserver = containers["WebserverTaskDefinition"]["Command"]
    assert webserver[0] == "dagster-webserver"
    parsed = _command(webserver_cli, webserver[1:])
    assert parsed.params["grpc_host"] == "code-server" and parsed.params["grpc_port"] == 4000
    daemon = containers["DaemonTaskDefinition"]["Command"]
    assert daemon[0] == "dagster-daemon"
    parsed = _command(daemon_cli, daemon[1:])
    assert parsed.params["grpc_host"] == "code-server" and parsed.params["grpc_port"] == 4000
    ports = containers["CodeServerTaskDefinition"]["PortMappings"]
    assert [p["ContainerPort"] for p in ports] == [4000]


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower()


def test_lambda_dockerfile_installs_exactly_what_the_handler_imports() -> None:
    instructions = _check_structure(DEPLOY / "Dockerfile.lambda")
    (install,) = [a for k, a in instructions if k == "RUN" and "pip install" in a]
    requirements = [word for word in shlex.split(install) if re.match(r"^[A-Za-z][\w.-]*[<>=]", word)]
    names = {_requirement_name(r) for r in requirements}
    assert names == {"dagster-pipes", "numpy", "pillow", "aggdraw", "zlib-ng"}
    pyproject = (ROOT / "pyproject.toml").read_text()
    for requirement in requirements:  # same bounds as the package's own dependencies
        assert f'"{requirement}"' in pyproject, requirement

    (cmd,) = [_exec_form(a) for k, a in instructions if k == "CMD"]
    module, _, function = cmd[0].rpartition(".")
    probe = (
        "import importlib, json, sys; "
        f"m = importlib.import_module({module!r}); assert callable(getattr(m, {function!r})); "
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules} - set(sys.stdlib_module_names))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    imported = set(json.loads(done.stdout)) - {"__main__", "__mp_main__", "_distutils_hack", "fractal_pipeline"}
    imported = {name for name in imported if not name.startswith("__editable__")}
    provided = {"dagster_pipes", "numpy", "PIL", "aggdraw", "zlib_ng", "boto3", "botocore"}  # installed + the runtime
    assert imported <= provided, imported - provided
    assert "dagster" not in imported


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.lambda"])
def test_build_context_ignore_files_keep_what_the_dockerfile_copies(name: str) -> None:
    ignore = (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    for keyword, arguments in parse_dockerfile(DEPLOY / name):
        if keyword == "COPY":
            for source in shlex.split(arguments)[:-1]:
                assert any(source == pattern or pattern.startswith(f"{source}/") for pattern in allowed), source
