"""Commands started together on a new ``DAGSTER_HOME`` set it up one at a time, and all succeed."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import time
from pathlib import Path

from fractal_pipeline.instance.home import FIRST_USE_FILES, FIRST_USE_LOCK

from .test_cli_truth import BIN, REPO, cli, cli_env


def _waiting_on(path: Path) -> int:
    """Processes blocked on a flock of ``path`` (``/proc/locks`` marks a waiter with ``->``)."""
    inode = os.stat(path).st_ino
    waiting = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[fields.index("->") + 1] == "FLOCK" and int(fields[-3].rsplit(":", 1)[1]) == inode:
            waiting += 1
    return waiting


def _alembic_rows(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute("select count(*) from alembic_version").fetchone()[0])


def test_commands_started_together_on_a_new_home_set_it_up_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home)
    (home / "dagster.yaml").unlink()  # a new home: the CLI writes its dagster.yaml and Dagster its databases
    lock = os.open(home / FIRST_USE_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a command that is setting the home up holds it
    commands = [
        subprocess.Popen(
            [str(BIN / "fractal-pipeline"), "run", "--count", "2", "--size", "64", "--seed", str(seed), "--no-collage"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in (1, 2)
    ]
    try:
        deadline = time.monotonic() + 120
        while _waiting_on(home / FIRST_USE_LOCK) < 2:  # the known point: both wait for the home
            assert all(c.poll() is None for c in commands), [c.communicate() for c in commands]
            assert time.monotonic() < deadline, "the commands never waited for the home's lock"
            time.sleep(0.05)
        assert not (home / "dagster.yaml").exists()
        assert not any((home / name).exists() for name in FIRST_USE_FILES)
    finally:
        os.close(lock)
    for command in commands:
        stdout, stderr = command.communicate(timeout=300)
        assert command.returncode == 0, stderr.decode()
        assert len([line for line in stdout.decode().splitlines() if line.startswith("fractals/")]) == 2
    for name in FIRST_USE_FILES:  # each schema stamped once: a second stamp leaves "more than one head"
        assert _alembic_rows(home / name) == 1, name
    listed = cli(["runs"], env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("fractal_images") == 2  # both commands' images runs
