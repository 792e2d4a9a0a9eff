"""A corpus of hostile or mistaken CLI inputs: every one gets one line on stderr naming the field and the fix,
the documented exit code, no traceback, and records no run. Each is a row of docs/reliability.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from ..conftest import moto_credentials
from .test_cli_truth import cli, cli_env

NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
CORRUPT_YAML = "storage: [unclosed\n"
MISSING_CLASS = "storage:\n  custom:\n    module: no_such_module\n    class: Nope\n    config: {}\n"
#: A compute-log manager misspelt: Dagster loads it only when a step starts or `logs` reads it.
MISSING_LOGS_CLASS = "compute_logs:\n  module: fractal_pipeline.instance_storage\n  class: Nope\n  config: {}\n"
BAD_SCHEMA = "run_coordinator: 5\n"


@dataclass(frozen=True)
class Case:
    args: list[str]
    expected: str  # in the error line, literally
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)
    yaml: str | None = None  # the home's dagster.yaml
    s3: bool = False  # point the store at moto's server (a bucket "exists" that the test creates)
    absent: str = ""  # must not be in the error line


CASES = {
    # run: options
    "count zero": Case(["run", "-n", "0"], "--count: 0 is out of range: allowed 1..100"),
    "count negative": Case(["run", "-n", "-5"], "--count: -5 is out of range: allowed 1..100"),
    "count over the palette's specs": Case(
        ["run", "-n", "101"],
        "--count: 101 is out of range: allowed 1..100, the distinct specs of all 26 kinds in the rainbow palette; "
        "ask for fewer or use a random palette",
    ),
    "count over the random palette's specs": Case(
        ["run", "-n", "501", "--palette", "random"],
        "--count: 501 is out of range: allowed 1..500",
        absent="use a random palette",
    ),
    "count over one kind's specs": Case(
        ["run", "-n", "40", "--kinds", "dragon", "--palette", "random"],
        "allowed 1..35, the distinct specs of these kinds with a random palette; ask for fewer or name more kinds",
    ),
    "count of 20 digits": Case(["run", "-n", "99999999999999999999"], "--count: 99,999,999,999,999,999,999 is out"),
    "count as a word": Case(["run", "-n", "lots"], "Invalid value for '--count' / '-n'"),
    "size too small": Case(["run", "--size", "5"], "--size: 5 px is out of range: allowed 16..8192"),
    "size too large": Case(["run", "--size", "100000"], "--size: 100000 px is out of range: allowed 16..8192"),
    "size with a fraction": Case(["run", "--size", "1.5"], "Invalid value for '--size'"),
    "kind misspelt": Case(["run", "--kinds", "dragn"], "--kinds: unknown kind 'dragn'; did you mean 'dragon'?"),
    "kinds only commas": Case(["run", "--kinds", ",,"], "--kinds: ',,' names no kind"),
    "one kind of two unknown": Case(["run", "--kinds", "dragon,nope"], "--kinds: unknown kind 'nope'"),
    "markup in a kind": Case(["run", "--kinds", "[red]x[/red]"], "'[red]x[/red]'"),
    "palette unknown": Case(["run", "--palette", "blue"], "--palette: 'blue' is not a palette; use rainbow"),
    "workers negative": Case(["run", "--workers", "-2"], "--workers: -2 is out of range: allowed 0 (one per CPU) to"),
    "seed negative": Case(["run", "--seed", "-1"], "--seed: -1 is out of range: allowed 0.."),
    "seed over 64 bits": Case(["run", "--seed", str(2**64)], f"--seed: {2**64} is out of range"),
    "backend unknown": Case(["run", "--backend", "moon"], "--backend: unknown backend 'moon'; use local or lambda"),
    "option unknown": Case(["run", "--colour", "red"], "No such option: --colour"),
    "command unknown": Case(["invoke"], "No such command 'invoke'; see `fractal-pipeline --help`"),
    "option without its value": Case(["run", "--size"], "Option '--size' requires an argument"),
    # render
    "render without a kind": Case(["render"], "Missing argument 'kind'"),
    "render depth too deep": Case(["render", "dragon", "99"], "depth: 99 is out of range for dragon: allowed 0..22"),
    "render kind misspelt": Case(["render", "dragn"], "did you mean 'dragon'?"),
    "render into a missing folder": Case(
        ["render", "dragon", "3", "--size", "16", "-o", "/nonexistent/x.png"],
        "--output: cannot write /nonexistent/x.png (No such file or directory)",
    ),
    "render onto a folder": Case(["render", "dragon", "3", "--size", "16", "-o", "/tmp"], "cannot write /tmp (is a"),
    "render to a .jpg": Case(
        ["render", "dragon", "3", "--size", "16", "-o", "/tmp/x.jpg"], "--output: /tmp/x.jpg is not a <name>.png path"
    ),
    "render path with markup": Case(
        ["render", "dragon", "3", "--size", "16", "-o", "/nonexistent/[bold]x[/bold].png"],
        "cannot write /nonexistent/[bold]x[/bold].png",
    ),
    "render palette unknown": Case(["render", "dragon", "3", "--palette", "mauve"], "palette: unknown palette"),
    # runs, logs, events, cancel
    "logs of an unknown run": Case(["logs", "ffffffff"], "no runs in this instance yet"),
    "events of a non-id": Case(["events", "not-a-run!"], "'not-a-run!' is not a run id"),
    "runs limit zero": Case(["runs", "--limit", "0"], "Invalid value for '--limit' / '-n'"),
    "cancel timeout negative": Case(["cancel", "abc", "--timeout", "-1"], "Invalid value for '--timeout'"),
    # DAGSTER_HOME and dagster.yaml
    "home under a file": Case(
        ["run"],
        "DAGSTER_HOME: /etc/hostname is a file, not a folder (DAGSTER_HOME=/etc/hostname/home lies under it); point",
        env={"DAGSTER_HOME": "/etc/hostname/home"},
    ),
    "home under a file (runs)": Case(
        ["runs"], "DAGSTER_HOME: /etc/hostname is a file, not a folder", env={"DAGSTER_HOME": "/etc/hostname/home"}
    ),
    "home is a file (runs)": Case(
        ["runs"], "DAGSTER_HOME: /etc/hostname is a file, not a folder; point", env={"DAGSTER_HOME": "/etc/hostname"}
    ),
    "home is a file (run)": Case(
        ["run"], "DAGSTER_HOME: /etc/hostname is a file, not a folder; point", env={"DAGSTER_HOME": "/etc/hostname"}
    ),
    "region without the lambda backend": Case(
        ["run", "--region", "mars"], "--region: only the lambda backend uses it; add --backend lambda"
    ),
    "dagster.yaml corrupt (run)": Case(["run"], "cannot be loaded (", yaml=CORRUPT_YAML),
    "dagster.yaml corrupt (runs)": Case(["runs"], "cannot be loaded (", yaml=CORRUPT_YAML),
    "dagster.yaml corrupt (logs)": Case(["logs", "abc"], "cannot be loaded (", yaml=CORRUPT_YAML),
    "dagster.yaml corrupt (events)": Case(["events", "abc"], "cannot be loaded (", yaml=CORRUPT_YAML),
    "dagster.yaml corrupt (cancel)": Case(["cancel", "abc"], "cannot be loaded (", yaml=CORRUPT_YAML),
    "dagster.yaml names a missing class": Case(["run"], "no_such_module", yaml=MISSING_CLASS),
    "dagster.yaml names a missing log class (run)": Case(["run"], "Couldn't find class Nope", yaml=MISSING_LOGS_CLASS),
    "dagster.yaml names a missing log class (runs)": Case(["runs"], "cannot be loaded (", yaml=MISSING_LOGS_CLASS),
    "dagster.yaml names a missing log class (logs)": Case(
        ["logs", "abc"], "cannot be loaded (", yaml=MISSING_LOGS_CLASS
    ),
    "dagster.yaml with a misspelt compute_logs key": Case(
        ["runs"],
        'Received unexpected config entry "base_dirr"',
        yaml="compute_logs:\n  module: fractal_pipeline.instance.compute_logs\n"
        "  class: ThreadMirroredComputeLogManager\n  config:\n    base_dirr: /tmp\n",
        absent="object at 0x",  # not the reprs of the schema Dagster checked
    ),
    "event batch size a word (run)": Case(
        ["run"],
        "DAGSTER_EVENT_BATCH_SIZE: 'abc' is not a whole number of events; unset it",
        env={"DAGSTER_EVENT_BATCH_SIZE": "abc"},
    ),
    "event batch size empty (cancel)": Case(
        ["cancel", "abc"], "DAGSTER_EVENT_BATCH_SIZE: '' is not a whole number", env={"DAGSTER_EVENT_BATCH_SIZE": ""}
    ),
    "dagster.yaml of a wrong shape": Case(["runs"], "cannot be loaded (", yaml=BAD_SCHEMA),
    "dagster.yaml with a misspelt key": Case(
        ["runs"],
        'Received unexpected config entry "storag" at the root.); fix ',
        yaml="storag:\n  sqlite: {}\n",
        absent="Expected",  # not Dagster's whole schema, cut off mid-line
    ),
    # settings read when the definitions load
    "FRACTAL_DEPLOYMENT unknown": Case(
        ["run"], "FRACTAL_DEPLOYMENT: unknown deployment 'moon'", env={"FRACTAL_DEPLOYMENT": "moon"}
    ),
    "aws deployment without a bucket": Case(
        ["run"], "FRACTALS_BUCKET: the 'aws' deployment needs a bucket name", env={"FRACTAL_DEPLOYMENT": "aws"}
    ),
    "sensor interval a word": Case(
        ["run"],
        "FRACTALS_SENSOR_INTERVAL: 'soon' is not a whole number of seconds; "
        "set it to one (e.g. FRACTALS_SENSOR_INTERVAL=30) or unset it",
        env={"FRACTALS_SENSOR_INTERVAL": "soon"},
    ),
    "sensor interval zero": Case(
        ["run"], "FRACTALS_SENSOR_INTERVAL: 0 is too small; use at least 1", env={"FRACTALS_SENSOR_INTERVAL": "0"}
    ),
    "schedule cron invalid": Case(
        ["run"],
        "FRACTALS_SCHEDULE_CRON: 'every day' is not a cron expression",
        env={"FRACTALS_SCHEDULE_CRON": "every day"},
    ),
    "specs prefix the whole bucket": Case(
        ["run"], "FRACTALS_SPECS_PREFIX: is empty", env={"FRACTALS_SPECS_PREFIX": "/"}
    ),
    "reconcile interval negative": Case(
        ["run"], "FRACTALS_SPECS_RECONCILE_S: -3 is too small", env={"FRACTALS_SPECS_RECONCILE_S": "-3"}
    ),
    "FRACTALS_DIR under a file": Case(
        ["run"], "FRACTALS_DIR: cannot create /etc/hostname/x", env={"FRACTALS_DIR": "/etc/hostname/x"}
    ),
    # a folder that exists and lets nothing be made in it: the store check says so before any run
    "FRACTALS_DIR a folder that refuses new files": Case(
        ["run"], "FRACTALS_DIR: cannot write in /sys/kernel", env={"FRACTALS_DIR": "/sys/kernel"}
    ),
    "FRACTALS_DIR /proc": Case(["run"], "FRACTALS_DIR: cannot write in /proc", env={"FRACTALS_DIR": "/proc"}),
    # S3 settings
    "bucket name invalid": Case(
        ["run"],
        "FRACTALS_BUCKET: 'Bad Bucket!' is not a valid bucket name",
        s3=True,
        env={"FRACTALS_BUCKET": "Bad Bucket!"},
    ),
    "bucket missing": Case(
        ["run"],
        "FRACTALS_BUCKET: bucket 'no-such-bucket-here' does not exist",
        s3=True,
        env={"FRACTALS_BUCKET": "no-such-bucket-here"},
    ),
    "MINIO_ENDPOINT not a URL": Case(
        ["run"],
        "MINIO_ENDPOINT: 'localhost:9000' is not an http(s) URL",
        env={"MINIO_ENDPOINT": "localhost:9000", "FRACTALS_BUCKET": "b"},
    ),
    "AWS secret key empty": Case(
        ["run"],
        "AWS_SECRET_ACCESS_KEY: missing or empty while the other AWS key is set; set both",
        s3=True,
        env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": ""},
    ),
    "MINIO_ENDPOINT unreachable": Case(
        ["run"],
        "MINIO_ENDPOINT: cannot reach S3 at http://127.0.0.1:9",
        env={
            "MINIO_ENDPOINT": "http://127.0.0.1:9",
            "FRACTALS_BUCKET": "fractals",
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
        },
    ),
    "AWS_ENDPOINT_URL not http": Case(
        ["run"],
        "AWS_ENDPOINT_URL: 'ftp://files' is not an http(s) URL",
        env={"AWS_ENDPOINT_URL": "ftp://files", "FRACTALS_BUCKET": "b"},
    ),
    "S3 without credentials": Case(["run"], "AWS_ACCESS_KEY_ID: no AWS credentials found", s3=True, env=NO_CREDENTIALS),
    # AWS: region and credentials of run --backend lambda, deploy, destroy
    "lambda without a region": Case(
        ["run", "--backend", "lambda"], "AWS_REGION: no AWS region is set; pass --region, or set AWS_REGION"
    ),
    "lambda with a bad region": Case(
        ["run", "--backend", "lambda", "--region", "moon"], "--region: 'moon' is not an AWS region"
    ),
    "lambda without credentials": Case(
        ["run", "--backend", "lambda", "--region", "us-east-1"], "AWS_ACCESS_KEY_ID: no AWS credentials found"
    ),
    "lambda with the region from AWS_DEFAULT_REGION": Case(
        ["run", "--backend", "lambda"],
        "stack 'fractal-pipeline' is not deployed in eu-west-1",
        s3=True,
        env={"AWS_REGION": "", "AWS_DEFAULT_REGION": "eu-west-1"},
    ),
    "deploy without a region": Case(["deploy"], "AWS_REGION: no AWS region is set"),
    "destroy with an unknown profile": Case(
        ["destroy"], "AWS_PROFILE: profile 'nope' is not in the AWS config", env={"AWS_PROFILE": "nope"}
    ),
    "deploy with a bad --param": Case(
        ["deploy", "--param", "novalue"],
        "--param: expected KEY=VALUE, got 'novalue'",
        env={"AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
    ),
    "deploy with a missing template": Case(
        ["deploy", "--template", "/nonexistent.yaml"], "--template: cannot read /nonexistent.yaml"
    ),
}


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.reliability("CLI input", name)) for name in CASES]
)
def test_a_bad_input_is_one_line_with_its_exit_code_and_records_nothing(
    name: str, tmp_path: Path, moto_endpoint: str
) -> None:
    case = CASES[name]
    home = tmp_path / "home"
    env = cli_env(home)
    if case.yaml is not None:
        (home / "dagster.yaml").write_text(case.yaml)
    if case.s3:
        env.update({**moto_credentials(moto_endpoint), "FRACTALS_BUCKET": "fractals"})
        from ..conftest import s3_client

        s3_client(moto_endpoint).create_bucket(Bucket="fractals")
    env.update(case.env)
    result = cli(case.args, env, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == case.code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert case.expected in lines[0], lines[0]
    assert not case.absent or case.absent not in lines[0], lines[0]
    assert result.stdout == ""
    if case.yaml is None and (home / "dagster.yaml").exists():
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_runs_count() == 0  # nothing was recorded, no FAILURE run
