"""Credentials never appear in logs, metadata, CLI output, error messages or the instance's files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
SECRET = "SENTINELsecret0123456789abcdefghijklmnopq"
KEY_ID = "AKIASENTINEL0KEYID00"


@pytest.mark.reliability(
    "security", "sentinel AWS credentials: absent from CLI output, logs, events, metadata and every instance file"
)
@pytest.mark.s3
def test_secrets_never_leak(s3_env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, **s3_env, "DAGSTER_HOME": str(home), "COLUMNS": "200"}
    env.update({"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET})
    outputs: list[str] = []

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [BIN / "fractal-pipeline", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
        )
        outputs.extend([done.stdout, done.stderr])
        return done

    run = cli("run", "--count", "3", "--seed", "2", "--size", "64", "--workers", "2")
    assert run.returncode == 0, run.stderr
    runs = cli("runs")
    run_ids = [line.split()[1] for line in runs.stdout.splitlines() if "images" in line]
    assert run_ids
    outputs.append(cli("logs", run_ids[0]).stdout)
    outputs.append(cli("events", run_ids[0], "--json").stdout)
    # A failure path too: a bucket that does not exist.
    env["FRACTALS_BUCKET"] = "missing-bucket-for-secrets"
    bad = cli("run", "--count", "1", "--size", "32")
    assert bad.returncode != 0 and "FRACTALS_BUCKET" in bad.stderr

    for text in outputs:
        assert SECRET not in text and KEY_ID not in text
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data, path
            assert KEY_ID.encode() not in data, path
