"""`fractal-pipeline run` tells the truth: stdout lists exactly the stored keys, one images run per command,
clean interrupts, gaps filled by the same command. Every test runs the CLI as a subprocess, as a user does."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from PIL import Image

from fractal_pipeline.fractals import random_specs, render_png, spec_of_png

from ..conftest import group_processes

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
IMAGES = dg.AssetKey("fractal_images")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: a fresh DAGSTER_HOME (telemetry off), nothing of the caller's store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRACTALS_", "FRACTAL_", "MINIO", "AWS_"))}
    env.update({"DAGSTER_HOME": str(home), "COLUMNS": "200", "AWS_EC2_METADATA_DISABLED": "true"})
    env.update({"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"})
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    env.update(extra)
    return env


def cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fractal-pipeline"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def error_line(stderr: str) -> str:
    """The last line of stderr, which must be the only ``error:`` line."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


def printed_keys(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("fractals/")]


def stored_pngs(folder: Path) -> dict[str, int]:
    """Stored PNGs (object key -> inode, which changes when a PNG is written again); each checked complete."""
    found = {}
    for path in sorted((folder / "fractals").glob("*.png")):
        if path.is_dir():  # a test's obstacle, not a PNG
            continue
        data = path.read_bytes()
        spec = spec_of_png(data)
        assert spec is not None and path.name == f"{spec.key}.png", path
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        found[f"fractals/{path.name}"] = path.stat().st_ino
    leftovers = [p for p in (folder / "fractals").glob("*") if not p.name.endswith(".png") and p.is_file()]
    assert not leftovers, f"temp files left behind: {leftovers}"
    return found


def runs_of(home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_runs())


def image_runs(home: Path) -> list[dg.DagsterRun]:
    return [run for run in runs_of(home) if run.asset_selection == {IMAGES}]


def materialized_by(home: Path, run_id: str) -> list[str]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=100_000
        ).records
    return [r.event_log_entry.dagster_event.partition for r in records if r.event_log_entry.dagster_event]


def failed_partitions(home: Path) -> set[str]:
    """What the UI shows as failed partitions of fractal_images (Dagster's own status cache)."""
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    from fractal_pipeline.defs.partitions import spec_partitions

    with dg.DagsterInstance.from_config(str(home)) as instance:
        value = get_and_update_asset_status_cache_value(instance, IMAGES, spec_partitions)
        if value is None:
            return set()
        subset = value.deserialize_failed_partition_subsets(spec_partitions)
        return set(subset.get_partition_keys())


# --------------------------------------------------------------------------- what is printed is what is stored


@pytest.mark.reliability(
    "truthful CLI", "a PNG that cannot be stored: stdout lists the others, exit 1, the printed command fills the gap"
)
def test_a_gap_is_reported_and_the_same_command_renders_only_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home)
    folder = home / "fractals"
    keys = [spec.key for spec in random_specs(6, seed=11, size=48)]
    blocked = folder / "fractals" / f"{keys[2]}.png"
    blocked.mkdir(parents=True)  # a folder where a PNG must go: that PNG cannot be stored, the others can

    first = cli(["run", "--count", "6", "--seed", "11", "--size", "48"], env)
    assert first.returncode == 1, first.stderr
    assert printed_keys(first.stdout) == [f"fractals/{k}.png" for k in keys if k != keys[2]]
    assert set(printed_keys(first.stdout)) == set(stored_pngs(folder)) - set()  # exactly what is stored
    assert "collages/" not in first.stdout  # no collage over a batch with a gap
    line = error_line(first.stderr)
    command = re.search(r"`(fractal-pipeline run [^`]*)` renders only those", line)
    assert line.startswith("error: 1 of 6 PNGs are missing (") and command, line
    assert "--seed 11" in command.group(1)

    blocked.rmdir()
    before = stored_pngs(folder)
    again = cli(shlex.split(command.group(1))[1:], env)
    assert again.returncode == 0, again.stderr
    assert printed_keys(again.stdout) == [f"fractals/{k}.png" for k in keys]
    assert "collages/fractal_collage.png" in again.stdout.splitlines()
    after = stored_pngs(folder)
    assert {key: after[key] for key in before} == before  # the stored PNGs were not written again
    (last, *_) = image_runs(home)
    assert materialized_by(home, last.run_id) == [keys[2]]  # only the gap was rendered
    assert "skipped" not in again.stderr and "5 already stored" in again.stderr  # a range of the gap alone


@pytest.mark.reliability(
    "truthful CLI",
    "a second `run` in a used home: one images run over the unstored keys; the stored ones neither rendered "
    "nor rewritten",
)
def test_a_run_in_a_used_home_is_one_images_run_that_skips_what_is_stored(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home)
    folder = home / "fractals"
    for seed in (1, 2, 3):  # scatter registered partitions: each command registers its own block
        assert cli(["run", "-n", "8", "--seed", str(seed), "--size", "32", "--no-collage"], env).returncode == 0
    wanted = [spec.key for spec in random_specs(40, seed=4, size=32)]
    before = stored_pngs(folder)
    already = [k for k in wanted if f"fractals/{k}.png" in before]
    assert 3 <= len(already) < 40, "the batch should overlap the earlier ones"
    runs_before = {run.run_id for run in image_runs(home)}

    result = cli(["run", "-n", "40", "--seed", "4", "--size", "32", "--no-collage"], env)
    assert result.returncode == 0, result.stderr
    assert printed_keys(result.stdout) == [f"fractals/{k}.png" for k in wanted]
    new_runs = [run for run in image_runs(home) if run.run_id not in runs_before]
    assert len(new_runs) == 1, "one images run per command"
    rendered = materialized_by(home, new_runs[0].run_id)
    assert sorted(rendered) == sorted(k for k in wanted if k not in already)  # stored keys are not rendered again
    after = stored_pngs(folder)
    assert {key: after[key] for key in before} == before  # nor written again
    # The batch's unstored keys are the ones it registered now, consecutive: the range holds nothing else.
    assert "only" not in new_runs[0].run_config["ops"]["fractal_images"]["config"]
    assert f"{len(already)} already stored" in result.stderr


@pytest.mark.reliability(
    "truthful CLI",
    "a re-run whose gaps lie apart: one run over their range skips the stored partitions between them, "
    "which are neither rewritten nor shown failed when the run fails",
)
def test_gaps_apart_are_one_run_that_skips_the_stored_partitions_between_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home)
    folder = home / "fractals"
    command = ["run", "-n", "12", "--seed", "5", "--size", "32", "--no-collage"]
    assert cli(command, env).returncode == 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        order = list(instance.get_dynamic_partitions("fractal_specs"))
    (folder / "fractals" / f"{order[2]}.png").unlink()  # a gap...
    (folder / "fractals" / f"{order[8]}.png").unlink()  # ...and another, that cannot be filled:
    (folder / "fractals" / f"{order[8]}.png").mkdir()  # a folder stands where its PNG must go
    before = stored_pngs(folder)

    result = cli(command, env)
    assert result.returncode == 1
    line = error_line(result.stderr)
    assert line.startswith("error: 1 of 12 PNGs are missing (1 of 2 partitions failed: ") and "--seed 5" in line
    assert set(printed_keys(result.stdout)) == set(stored_pngs(folder)) == {*before, f"fractals/{order[2]}.png"}
    after = stored_pngs(folder)
    assert {key: after[key] for key in before} == before  # the stored partitions in the range were not rewritten
    (run, *_) = image_runs(home)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert sorted(run.run_config["ops"]["fractal_images"]["config"]["only"]) == sorted([order[2], order[8]])
    recorded = materialized_by(home, run.run_id)
    assert recorded[0] == order[2] and sorted(recorded[1:]) == sorted(order[3:8])
    # Dagster marks the partitions a failed run planned and did not materialise as failed: the run records
    # the stored ones it skipped again, so only the partition that really failed shows as failed.
    assert failed_partitions(home) == {order[8]}
    assert "5 partitions of its range skipped" in result.stderr
    assert cli(["events", run.run_id], env).stdout.count("kept (skipped)") == 5
    listed = cli(["runs"], env).stdout  # the range holds 7 partitions (order[2]...order[8]); the run rendered 2
    assert f"{order[2]}...{order[8]} (2 of 7)" in listed, listed


@pytest.mark.reliability(
    "truthful CLI", "umask 027: local PNGs and the collage are created 0640 (the umask is honoured)"
)
def test_local_pngs_honour_the_umask(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = subprocess.run(
        [str(BIN / "fractal-pipeline"), "run", "-n", "2", "--seed", "3", "--size", "32"],
        env=cli_env(home), capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o027),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = [*(home / "fractals").rglob("*.png")]
    assert len(files) == 3
    assert {oct(path.stat().st_mode & 0o777) for path in files} == {oct(0o640)}


def test_too_many_workers_are_capped_with_a_note(tmp_path: Path) -> None:
    result = cli(["run", "-n", "2", "--seed", "3", "--size", "32", "--workers", "1000"], cli_env(tmp_path / "home"))
    assert result.returncode == 0, result.stderr
    cpus = len(os.sched_getaffinity(0))
    assert f"--workers: 1000 is more than 4 per CPU; using {4 * cpus}" in result.stderr.splitlines()[0]
    assert len(printed_keys(result.stdout)) == 2


# --------------------------------------------------------------------------- interrupts


#: Specs in an interrupted run: enough 4096 px renders that it is still rendering well after the known point.
INTERRUPTED_SPECS = 30


def _interrupt(tmp_path: Path, signals: list[signal.Signals], sigint_ignored: bool = False) -> dict[str, object]:
    """Start an INTERRUPTED_SPECS-spec 4096 px run, send ``signals`` once 3 PNGs are stored (the known point), and
    report. 4096 px renders keep the run going for seconds after the known point."""
    home = tmp_path / "home"
    env = cli_env(home)
    folder = home / "fractals" / "fractals"

    def start() -> None:
        os.setsid()
        if sigint_ignored:  # as a shell starts a background job: `cmd &` then `kill -INT`
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    command = ["run", "-n", str(INTERRUPTED_SPECS), "--seed", "7", "--size", "4096", "--workers", "2"]
    process = subprocess.Popen(
        [str(BIN / "fractal-pipeline"), *command], env=env, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=start,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (folder.is_dir() and len(list(folder.glob("*.png"))) >= 3):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no PNG was stored"
            time.sleep(0.05)
        sent = time.monotonic()
        for sig in signals:
            process.send_signal(sig)
            time.sleep(0.2)
        out, err = process.communicate(timeout=60)
        stopped = time.monotonic() - sent
        # multiprocessing's resource tracker ends when it reads EOF from the exited CLI: a moment after it.
        _, remaining = psutil.wait_procs(group_processes(process.pid), timeout=5)
    finally:
        if process.poll() is None or group_processes(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    return {"home": home, "code": process.returncode, "out": out, "err": err, "stopped": stopped, "left": remaining}


@pytest.mark.parametrize(
    ("signals", "sigint_ignored", "resume"),
    [
        pytest.param([signal.SIGINT], False, True, id="ctrl-c", marks=pytest.mark.reliability(
            "cancellation", "Ctrl-C (SIGINT) on `fractal-pipeline run` mid-batch: CANCELED, workers gone, resumable")),
        pytest.param([signal.SIGTERM], False, True, id="sigterm", marks=pytest.mark.reliability(
            "cancellation", "kill -TERM on `fractal-pipeline run` mid-batch: CANCELED, workers gone, resumable")),
        pytest.param([signal.SIGINT], True, False, id="background-kill-int", marks=pytest.mark.reliability(
            "cancellation", "kill -INT on a `run` started with SIGINT ignored (a shell's `&`): still stops")),
        pytest.param([signal.SIGINT, signal.SIGINT], False, False, id="ctrl-c-twice", marks=pytest.mark.reliability(
            "cancellation", "Ctrl-C twice: stops at once, no run left STARTED, nothing half-written")),
    ],
)  # fmt: skip
@pytest.mark.slow
def test_an_interrupted_run_stops_cleanly_and_resumes(
    tmp_path: Path, signals: list[signal.Signals], sigint_ignored: bool, resume: bool
) -> None:
    outcome = _interrupt(tmp_path, signals, sigint_ignored)
    home = outcome["home"]
    assert isinstance(home, Path)
    err = str(outcome["err"])
    assert outcome["code"] == 130, err
    assert float(outcome["stopped"]) < 15  # type: ignore[arg-type]  # "within a few seconds", generously
    assert not outcome["left"], f"processes outlived the CLI: {outcome['left']}"
    assert "leaked semaphore" not in err and "Traceback" not in err
    stored = stored_pngs(home / "fractals")
    assert 3 <= len(stored) < INTERRUPTED_SPECS
    assert set(printed_keys(str(outcome["out"]))) == set(stored)
    line = error_line(err)
    expected = rf"error: interrupted( twice: stopped at once)?: {len(stored)} of {INTERRUPTED_SPECS} PNGs stored; `"
    assert re.match(expected, line), line
    statuses = {run.asset_selection and next(iter(run.asset_selection)).to_user_string(): run.status for run in
                runs_of(home)}  # fmt: skip
    assert statuses["fractal_images"] == dg.DagsterRunStatus.CANCELED
    assert not [run for run in runs_of(home) if not run.is_finished]
    assert "fractal_collage" not in statuses  # an interrupted batch does not rebuild the collage
    # Every PNG it stored is a materialized partition, including those its workers stored and had not
    # reported when they were stopped (a worker reports a chunk once the whole chunk is done).
    (interrupted, *_) = image_runs(home)
    assert sorted(materialized_by(home, interrupted.run_id)) == sorted(
        name.removeprefix("fractals/").removesuffix(".png") for name in stored
    )
    # `events` counts them all: those with timings, and those stored by workers stopped before they reported.
    events = cli(["events", interrupted.run_id[:8]], cli_env(home))
    assert events.returncode == 0, events.stderr
    timed = re.search(r"render workers?, (\d+) PNGs,", events.stdout)
    unreported = re.search(r"(\d+) PNGs stored by workers stopped before they reported them", events.stdout)
    assert (int(timed.group(1)) if timed else 0) + (int(unreported.group(1)) if unreported else 0) == len(stored)
    assert f"(canceled: actual covers only the {int(timed.group(1)) if timed else 0} PNGs rendered" in events.stdout

    command = re.search(r"`(fractal-pipeline run [^`]*)` renders the other (\d+)", line)
    assert command and int(command.group(2)) == INTERRUPTED_SPECS - len(stored)
    if not resume:  # the rows that promise a resumable run (Ctrl-C, SIGTERM) run the printed command
        return
    resumed = cli(shlex.split(command.group(1))[1:], cli_env(home))
    assert resumed.returncode == 0, resumed.stderr
    assert len(printed_keys(resumed.stdout)) == INTERRUPTED_SPECS
    (last, *_) = image_runs(home)
    assert sorted(materialized_by(home, last.run_id)) == sorted(
        spec.key
        for spec in random_specs(INTERRUPTED_SPECS, seed=7, size=4096)
        if f"fractals/{spec.key}.png" not in stored
    )


INTERRUPT_ON_IMPORT = """
import sys

class _CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "fractal_pipeline.cli.app":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, _CtrlC())
"""


@pytest.mark.reliability("cancellation", "Ctrl-C while `fractal-pipeline` is still loading: one line, exit 130")
def test_ctrl_c_while_the_commands_load_is_one_line(tmp_path: Path) -> None:
    # The known point: Ctrl-C arrives while the command's modules import (a sitecustomize raises it there).
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(INTERRUPT_ON_IMPORT)
    env = cli_env(tmp_path / "home", PYTHONPATH=str(hook))
    done = cli(["run", "-n", "2", "--size", "32"], env)
    assert done.returncode == 130, done.stderr
    assert error_line(done.stderr) == "error: interrupted while starting: nothing was run"
    assert not (tmp_path / "home" / "fractals").exists()


# --------------------------------------------------------------------------- a bad partition key


@pytest.mark.reliability(
    "hostile keys", "bad partition keys added by hand inside a range: only they fail; the collage leaves them out"
)
def test_a_bad_partition_key_fails_only_its_own_partition(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home)
    assert cli(["run", "-n", "3", "--seed", "1", "--size", "32"], env).returncode == 0
    bad = ["dragon_99", "Not A Key", "dragon_12-0px"]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("fractal_specs", bad)  # "Add partition" in the UI, an old key format...
    assert cli(["run", "-n", "3", "--seed", "2", "--size", "32"], env).returncode == 0  # the collage builds
    with dg.DagsterInstance.from_config(str(home)) as instance:
        order = list(instance.get_dynamic_partitions("fractal_specs"))
    # A UI backfill over the whole range, bad keys included (Dagster's own run over the range).
    tags = {"dagster/asset_partition_range_start": order[0], "dagster/asset_partition_range_end": order[-1]}
    import json

    launched = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "fractal_pipeline.definitions", "--select",
         "fractal_images", "--partition-range", f"{order[0]}...{order[-1]}"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert launched.returncode != 0  # the bad keys failed...
    assert "3 of 9 partitions failed" in launched.stdout + launched.stderr
    assert json.dumps(tags)  # (the range the backfill covered)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (images_run, *_) = [r for r in instance.get_runs() if r.asset_selection == {IMAGES}]
    assert sorted(materialized_by(home, images_run.run_id)) == sorted(k for k in order if k not in bad)  # ...alone
    assert failed_partitions(home) == set(bad)
    collage = cli(["run", "-n", "1", "--seed", "3", "--size", "32"], env)
    assert collage.returncode == 0, collage.stderr
    assert "collages/fractal_collage.png" in collage.stdout


@pytest.mark.reliability(
    "hostile keys", "an empty or reversed --partition-range (dagster asset materialize): the run fails in one line"
)
def test_a_reversed_partition_range_is_an_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home)
    assert cli(["run", "-n", "3", "--seed", "1", "--size", "32", "--no-collage"], env).returncode == 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        first, _, last = instance.get_dynamic_partitions("fractal_specs")
    result = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "fractal_pipeline.definitions", "--select",
         "fractal_images", "--partition-range", f"{last}...{first}"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"--partition-range: {last}...{first} selects no fractal_specs partition" in result.stdout + result.stderr
    assert "0/0" not in result.stdout + result.stderr


def test_fractal_specs_says_which_partition_range_to_pass(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home)
    assert cli(["run", "-n", "3", "--seed", "1", "--size", "32", "--no-collage"], env).returncode == 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        keys = list(instance.get_dynamic_partitions("fractal_specs"))
        (record,) = instance.fetch_materializations(dg.AssetKey("fractal_specs"), limit=1).records
    assert record.asset_materialization is not None
    assert record.asset_materialization.metadata["partition_range"].value == f"{keys[0]}...{keys[-1]}"


@pytest.mark.reliability(
    "storage outage",
    "S3 stopped mid-`run` (after 5 PNGs) until the CLI exits: stdout lists only PNGs really stored, exit 1, "
    "the printed command renders only the rest",
)
@pytest.mark.s3
@pytest.mark.slow
def test_s3_stopped_mid_run_prints_only_what_is_stored(tmp_path: Path) -> None:
    from moto.server import ThreadedMotoServer

    from ..conftest import moto_credentials, s3_client

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = s3_client(endpoint)
    client.create_bucket(Bucket="fractals")
    env = cli_env(tmp_path / "home", **moto_credentials(endpoint), FRACTALS_BUCKET="fractals")
    command = ["run", "-n", "60", "--seed", "9", "--size", "2048", "--workers", "2"]
    process = subprocess.Popen(
        [str(BIN / "fractal-pipeline"), *command], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    restarted = None
    try:
        deadline = time.monotonic() + 120
        while client.list_objects_v2(Bucket="fractals", Prefix="fractals/").get("KeyCount", 0) < 5:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        server.stop()  # the known point: 5 PNGs stored; S3 stays down until the CLI has exited
        out, err = process.communicate(timeout=300)
        restarted = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        restarted.start()  # moto keeps its state in-process: the stored objects are back
        listed = {o["Key"] for o in client.list_objects_v2(Bucket="fractals", Prefix="fractals/").get("Contents", [])}
        assert process.returncode == 1, err
        assert "Traceback" not in err
        assert "the store cannot be listed" in err  # so it printed what it saw stored: recorded after each PUT
        assert "storage unreachable" in err  # while it waited, it said why, instead of freezing
        printed = set(printed_keys(out))
        assert 5 <= len(printed) < 60
        assert printed <= listed  # every key printed is stored
        for key in printed:
            data = client.get_object(Bucket="fractals", Key=key)["Body"].read()
            assert render_png(spec_of_png(data)) == data  # type: ignore[arg-type]  # complete and right
        line = error_line(err)
        assert f"{60 - len(printed)} of 60 PNGs are missing" in line
        resume = re.search(r"`(fractal-pipeline run [^`]*)` renders only those", line)
        assert resume
        again = cli(shlex.split(resume.group(1))[1:], env)
        assert again.returncode == 0, again.stderr
        assert len(printed_keys(again.stdout)) == 60
        (last, *_) = image_runs(tmp_path / "home")
        assert sorted(materialized_by(tmp_path / "home", last.run_id)) == sorted(
            spec.key for spec in random_specs(60, seed=9, size=2048) if f"fractals/{spec.key}.png" not in listed
        )
    finally:
        if process.poll() is None:
            process.kill()
        (restarted or server).stop()


def test_a_stored_png_that_does_not_decode_is_left_out_of_the_collage_with_a_note(tmp_path: Path) -> None:
    """An emptied or cut-short PNG in the store: the collage leaves it out and says which and what to do; nothing
    stored is touched; deleted, it is rendered again."""
    env = cli_env(tmp_path / "home")
    args = ["run", "--count", "4", "--size", "64", "--seed", "3"]
    assert cli(args, env).returncode == 0
    stored = sorted((tmp_path / "home" / "fractals" / "fractals").glob("*.png"))
    empty, cut = stored[0], stored[1]
    empty.write_bytes(b"")
    cut.write_bytes(cut.read_bytes()[:100])
    before = {path: path.read_bytes() for path in stored}

    again = cli(args, env)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    notes = [line for line in again.stderr.splitlines() if "do not decode" in line]
    assert len(notes) == 1, again.stderr
    assert "left out 2 stored PNGs" in notes[0]
    assert f"fractals/{empty.name}" in notes[0] and f"fractals/{cut.name}" in notes[0]
    assert "collages/fractal_collage.png" in again.stdout.splitlines()
    assert {path: path.read_bytes() for path in stored} == before  # the command changed nothing stored

    empty.unlink()
    cut.unlink()
    third = cli(args, env)
    assert third.returncode == 0 and "do not decode" not in third.stderr, third.stderr
    for path in (empty, cut):
        assert spec_of_png(path.read_bytes()).key == path.stem

    for path in stored:  # none decodes: the collage fails, saying what to do, and leaves every file as it is
        path.write_bytes(b"")
    fourth = cli(args, env)
    assert fourth.returncode == 1
    assert "collage: none of the 4 stored PNGs decodes: delete them from the store" in error_line(fourth.stderr)
    assert all(path.read_bytes() == b"" for path in stored)
