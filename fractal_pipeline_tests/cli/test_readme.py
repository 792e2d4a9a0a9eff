"""The README's examples run as written: its Python blocks, and its shell blocks marked runnable.

Marker: a shell block runs here when its fence reads ```` ```bash runnable ```` (GitHub still highlights it as bash).
Each one runs with ``bash -euo pipefail`` in a copy of the repository, as in a new shell after the README's first
command: a fresh HOME holding the CLI's home as ``fractal-pipeline run`` leaves it, no DAGSTER_HOME set (a block
that needs it says so), and the venv's bin first on PATH. Blocks that use S3 run against moto's server: its URL
replaces the README's example endpoint, and the environment holds what the README's S3 block exports.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.fractals import KINDS
from fractal_pipeline.instance.home import instance_yaml

from ..conftest import s3_client

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TEXT = README.read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
BIN = Path(sys.executable).parent

EXAMPLE_ENDPOINT = "http://127.0.0.1:9000"  # MinIO's default, as the README's S3 block shows it
BUCKET = "my-fractals"
#: What the README's S3 block exports; the blocks after it assume these are set.
S3_EXPORTS = {"FRACTALS_BUCKET": BUCKET, "AWS_ACCESS_KEY_ID": "minioadmin", "AWS_SECRET_ACCESS_KEY": "minioadmin"}
#: What a shell block may do that keeps it out of this test: installs, the test command, servers, an AWS account.
NOT_RUNNABLE = ("pip install", "pytest", "dagster dev", "dg dev", "fractal-pipeline ui", "deploy", "destroy", "lambda")
#: Not copied into a block's working folder (.gitignore's, the git directory and the tests).
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "venv", "__pycache__", "*.egg-info", ".fractals", ".dagster_home", ".hypothesis",
    ".mypy_cache", ".ruff_cache", "build", "test-artifacts", "fractal_pipeline_tests",
)  # fmt: skip


@dataclass(frozen=True)
class Block:
    line: int
    info: str
    code: str

    @property
    def runnable(self) -> bool:
        return self.info.split()[1:2] == ["runnable"]

    @property
    def uses_s3(self) -> bool:
        return "FRACTALS_BUCKET" in self.code

    @property
    def name(self) -> str:
        first = self.code.strip().splitlines()[0].split("#")[0].split()
        return f"line{self.line}-" + "-".join(word for word in first[:3] if re.fullmatch(r"[\w.-]+", word))


def shell_blocks() -> list[Block]:
    return [
        Block(TEXT.count("\n", 0, match.start()) + 1, match.group(1).strip(), match.group(2))
        for match in re.finditer(r"^```((?:bash|sh)\b[^\n]*)\n(.*?)^```", TEXT, flags=re.S | re.M)
    ]


RUNNABLE = [block for block in shell_blocks() if block.runnable]


@dataclass
class Ran:
    stdout: str
    output: str  # stdout and stderr
    cwd: Path
    home: Path  # the CLI's home, which the blocks use


def png_names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("*.png"))


SEED_1 = ["cross_5-256px.png", "dragon_10-256px.png", "sierpinski_sieve_3-256px.png", "twin_dragon_11-256px.png"]


def check_cli(ran: Ran) -> None:
    keys = [line for line in ran.stdout.splitlines() if line.startswith(("fractals/", "collages/"))]
    assert sorted({key.removeprefix("fractals/") for key in keys if key.startswith("fractals/")}) == SEED_1
    assert len(keys) == 2 * 5  # each run: its 4 keys and the collage, the second one rendering nothing new
    assert all(kind in ran.stdout for kind in KINDS)  # `kinds` lists every kind
    assert (ran.cwd / "dragon.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")  # `render` and the core's CLI


def check_dagster(ran: Ran) -> None:
    assert "--partition-range dragon_10-256px...cross_5-256px" in ran.output  # the range the README passes
    assert png_names(ran.home / "fractals" / "fractals") == SEED_1
    assert png_names(ran.home / "fractals" / "collages") == ["fractal_collage.png"]


def check_s3(ran: Ran, endpoint: str) -> None:
    listed = s3_client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix="fractals/").get("Contents", [])
    assert len(listed) == 4
    for item in listed:  # printed by `run` and listed by `aws s3 ls`
        assert item["Key"] in ran.stdout.splitlines()
        assert Path(item["Key"]).name in ran.stdout.replace(item["Key"], "")


def check_sensor(ran: Ran) -> None:
    assert "Sensor returning run requests for 1 run(s)" in ran.output
    assert "specs.csv: 5 specs" in ran.output


def check_schedule(ran: Ran) -> None:
    assert "random_fractals_schedule [STOPPED]" in ran.output
    assert "12 specs" in ran.output
    with dg.DagsterInstance.from_config(str(ran.home)) as instance:  # registered where the CLI and the UI look
        assert len(instance.get_dynamic_partitions(PARTITIONS_NAME)) == 12


def check_observability(ran: Ran) -> None:
    run_id = re.search(r"images run ([0-9a-f-]{36}): success", (ran.cwd / "run.log").read_text())
    assert run_id
    assert run_id.group(1)[:8] in ran.stdout  # `runs` lists it
    assert f"run {run_id.group(1)} SUCCESS" in ran.stdout  # `logs` and `events` show it
    assert re.search(r"\brender\b.*-256px", ran.stdout)  # a worker's render row


def check_dry_run(ran: Ran) -> None:
    for name in SEED_1:  # the plan lists the specs, and nothing is rendered
        assert name.removesuffix(".png") in ran.stdout
    assert "4 specs, 0 already stored" in ran.stdout and "predicted cost: lambda $" in ran.stdout
    assert not (ran.home / "fractals" / "fractals").exists()


#: Checks of what the README says a block prints, chosen by a command the block runs.
CHECKS: dict[str, Callable[..., None]] = {
    "fractal-pipeline kinds": check_cli,
    "--dry-run": check_dry_run,
    "dagster asset materialize": check_dagster,
    "dg launch": check_dagster,
    "aws s3 ls": check_s3,
    "dagster sensor preview": check_sensor,
    "dagster schedule list": check_schedule,
    "fractal-pipeline events": check_observability,
}


def test_the_readme_has_python_examples() -> None:
    assert PYTHON_BLOCKS


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(len(PYTHON_BLOCKS))])
def test_a_readme_python_example_runs(block: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    if "print(" in block:
        assert printed  # the example's own output is there (e.g. the one-line InvalidSpec messages)


def test_every_shell_block_that_can_run_is_marked() -> None:
    for block in shell_blocks():
        kept_out = [word for word in NOT_RUNNABLE if word in block.code]
        assert bool(kept_out) != block.runnable, f"README.md:{block.line}: runnable={block.runnable}, {kept_out}"
    assert len(RUNNABLE) >= 5


def test_every_runnable_block_is_checked() -> None:
    for block in RUNNABLE:
        assert [command for command in CHECKS if command in block.code], f"README.md:{block.line}"


def run_block(block: Block, tmp_path: Path, extra_env: dict[str, str], endpoint: str | None = None) -> Ran:
    cwd, home = tmp_path / "repo", tmp_path / "home"
    dagster_home = home / ".fractal_pipeline" / "dagster_home"  # the CLI's default home, made by the first command
    shutil.copytree(ROOT, cwd, ignore=NOT_COPIED)
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(instance_yaml(dagster_home))
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path),
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
        **extra_env,
    }
    if "PYTHONPATH" in os.environ:  # the blocks run the code this test session imports
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    code = block.code if endpoint is None else block.code.replace(EXAMPLE_ENDPOINT, endpoint)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"README.md:{block.line} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    # Dagster without DAGSTER_HOME runs on a throwaway instance in the current folder: nothing would reach the home.
    assert not list(cwd.glob(".tmp_dagster_home_*")), f"README.md:{block.line} ran Dagster without DAGSTER_HOME"
    return Ran(done.stdout, done.stdout + done.stderr, cwd, dagster_home)


def checks_for(block: Block) -> list[Callable[..., None]]:
    return [check for command, check in CHECKS.items() if command in block.code]


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in RUNNABLE if not b.uses_s3], ids=lambda b: b.name)
def test_a_runnable_readme_block_runs(block: Block, tmp_path: Path) -> None:
    ran = run_block(block, tmp_path, {})
    for check in checks_for(block):
        check(ran)


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.uses_s3], ids=lambda b: b.name)
def test_a_runnable_readme_s3_block_runs(block: Block, tmp_path: Path, moto_endpoint: str) -> None:
    client = s3_client(moto_endpoint)
    if BUCKET in [bucket["Name"] for bucket in client.list_buckets()["Buckets"]]:
        for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
        client.delete_bucket(Bucket=BUCKET)
    if "aws s3 mb" not in block.code:  # a block that does not make the bucket runs after one that did
        client.create_bucket(Bucket=BUCKET)
    ran = run_block(block, tmp_path, {**S3_EXPORTS, "MINIO_ENDPOINT": moto_endpoint}, moto_endpoint)
    for check in checks_for(block):
        if check is check_s3:
            check(ran, moto_endpoint)
        else:
            check(ran)
