"""`fractal-pipeline runs|logs|events` against instances that recorded real runs.

The main fixture runs the real console script (``fractal-pipeline run --count 6
--workers 2``) in a temporary ``DAGSTER_HOME``; ``events --json`` and an unknown
run id go through the console script too, the other read commands call the same
typer app in-process (seconds of Dagster start-up saved per call). Edge cases
(ambiguous ids, captured output, a failed run, a run still in progress, an empty
instance) use runs that a helper process records in another home.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from fractal_pipeline.cli.app import app
from fractal_pipeline.instance.home import instance_yaml

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRACTALS_", "FRACTAL_", "MINIO", "AWS_ENDPOINT"))}
    env["DAGSTER_HOME"] = str(home)
    env["COLUMNS"] = "200"  # rich tables: no wrapping in captured output
    home.mkdir(parents=True, exist_ok=True)
    # What `fractal-pipeline run` writes into a new home (pooled storage, thread-mirrored captured output).
    (home / "dagster.yaml").write_text(instance_yaml(home) + "telemetry:\n  enabled: false\n")
    return env


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fractal-pipeline"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def _invoke(home: Path, *args: str) -> tuple[int, str, str]:
    """The typer app in-process (same code as the console script, without its start-up time)."""
    result = CliRunner().invoke(app, list(args), env={"DAGSTER_HOME": str(home), "COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


@dataclass
class Recorded:
    env: dict[str, str]
    home: Path
    stored_keys: list[str]  # object keys the run printed, e.g. fractals/dragon_12.png
    runs: dict[str, str]  # asset name -> run id


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    home = tmp_path_factory.mktemp("observability") / "home"
    env = _env(home)
    # Big enough images (seed 20: ~0.4 s of rendering at 1024 px, ~4x that at 2048 px) that the batch
    # outlasts the start-up skew of the two worker processes (up to ~0.3 s seen on a loaded 2-core
    # machine). At 256 px the whole batch can be done before the second worker has started, and
    # one worker (truthfully) renders everything.
    result = _cli(["run", "--count", "6", "--workers", "2", "--seed", "20", "--size", "2048"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = [line for line in result.stdout.splitlines() if line.startswith("fractals/")]
    assert len(stored) == 6
    runs: dict[str, str] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for record in instance.get_run_records():
            (asset,) = list(record.dagster_run.asset_selection or [])
            runs[asset.to_user_string()] = record.dagster_run.run_id
    assert set(runs) == {"fractal_specs", "fractal_images", "fractal_collage"}
    return Recorded(env, home, stored, runs)


def _table_rows(text: str) -> list[list[str]]:
    """Cells of the body rows of rich tables in ``text``."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_runs_lists_every_run_with_status_partitions_and_source(recorded: Recorded) -> None:
    code, out, err = _invoke(recorded.home, "runs", "--limit", "10")
    assert code == 0, err
    rows = {row[0]: row for row in _table_rows(out)}
    assert set(rows) == {run_id[:8] for run_id in recorded.runs.values()}
    for asset, run_id in recorded.runs.items():
        _, status, started, duration, assets, partitions, source = rows[run_id[:8]]
        assert (status, assets, source) == ("SUCCESS", asset, "cli")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", started)
        assert re.fullmatch(r"\d+\.\d s", duration)
        if asset == "fractal_images":
            first, last = (Path(key).stem for key in (recorded.stored_keys[0], recorded.stored_keys[-1]))
            assert partitions == f"{first}...{last} (6)"
        else:
            assert partitions == ""
    assert "3 of 3 runs" in out


def test_events_json_and_unified_show_overlapping_workers_and_each_put_once(recorded: Recorded) -> None:
    images_run = recorded.runs["fractal_images"]
    result = _cli(["events", images_run[:6], "--json"], recorded.env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["run"]["run_id"] == images_run and data["run"]["status"] == "SUCCESS"

    workers = [worker for worker in data["workers"] if worker["role"] == "render"]
    assert len(workers) >= 2, workers
    assert sum(worker["partitions"] for worker in workers) == 6
    assert any(_overlap(a, b) for a in workers for b in workers if a is not b), workers

    events = data["events"]
    assert [event["t"] for event in events] == sorted(event["t"] for event in events)
    puts = [event for event in events if event["event"] == "put"]
    assert Counter(event["subject"] for event in puts) == Counter(recorded.stored_keys)
    for put in puts:
        assert (recorded.home / "fractals" / put["subject"]).is_file()
        phases = {e["event"]: e for e in events if e["partition"] == put["partition"] and e["worker"] == put["worker"]}
        assert phases["render"]["t"] <= phases["encode"]["t"] <= put["t"]
        assert all(phases[name]["duration_ms"] >= 0 for name in ("render", "encode", "put"))
    # every render worker's lane starts with "start" and ends with "stop"
    for worker in workers:
        lane = [event["event"] for event in events if event["worker"] == worker["worker"]]
        assert lane[0] == "start" and lane[-1] == "stop" and lane.count("put") == worker["partitions"]

    # The timings are the recorded ones: each put ends exactly when the materialization says it was stored.
    kind = dg.DagsterEventType
    with dg.DagsterInstance.from_config(str(recorded.home)) as instance:
        stored_at, put_ms = {}, {}
        for record in instance.get_records_for_run(images_run, of_type=kind.ASSET_MATERIALIZATION).records:
            materialization = record.event_log_entry.asset_materialization
            assert materialization is not None
            stored_at[materialization.partition] = materialization.metadata["stored_at"].value
            put_ms[materialization.partition] = materialization.metadata["put_ms"].value
        (check,) = instance.get_records_for_run(images_run, of_type=kind.ASSET_CHECK_EVALUATION).records
        assert check.event_log_entry.dagster_event is not None
        summary = str(check.event_log_entry.dagster_event.asset_check_evaluation_data.metadata["workers"].value)
    assert len(stored_at) == 6
    # the step's own summary (shown with the step in the run view) names the same workers
    assert summary.startswith("**6/6** PNGs stored in") and f"by {len(workers)} workers" in summary
    assert all(f"`{worker['worker']}`" in summary for worker in workers)
    for put in puts:  # a put is the store call's own time (a PNG may wait for the rest of its chunk)
        assert put["at"] + put["duration_ms"] / 1000 == pytest.approx(stored_at[put["partition"]], abs=2e-3)
        assert put["duration_ms"] == pytest.approx(put_ms[put["partition"]], abs=0.1)

    code, out, err = _invoke(recorded.home, "events", images_run[:8], "--unified")
    assert code == 0, err
    rows = _table_rows(out)
    assert [float(row[0]) for row in rows] == sorted(float(row[0]) for row in rows)
    put_rows = [row for row in rows if row[2] == "put"]
    assert Counter(row[3] for row in put_rows) == Counter(recorded.stored_keys)
    assert {row[1] for row in put_rows} == {worker["worker"] for worker in workers}
    assert max(int(row[5]) for row in rows) == data["peak_parallel_workers"] >= 1
    assert f"{len(workers)} render worker{'' if len(workers) == 1 else 's'}, 6 PNGs" in out

    code, out, err = _invoke(recorded.home, "events", images_run[:8])
    assert code == 0, err
    titles = re.findall(r"^(pid-\d+) · render worker · (\d+) PNGs", out, flags=re.MULTILINE)
    assert {name for name, _ in titles} == {worker["worker"] for worker in workers}
    assert sum(int(count) for _, count in titles) == 6
    assert re.search(r"^pid-\d+ · dagster process", out, flags=re.MULTILINE)


def test_logs_prints_messages_in_time_order_then_captured_output(recorded: Recorded) -> None:
    images_run = recorded.runs["fractal_images"]
    code, out, err = _invoke(recorded.home, "logs", images_run[:8])
    assert code == 0, err
    assert "rendering 6 partitions with 2 local worker processes" in out
    assert "storing 6 PNGs in" in out
    rows = _table_rows(out)
    times = [float(row[0]) for row in rows]
    assert times == sorted(times)
    events = [row[3] for row in rows]
    assert events.index("RUN_START") < events.index("STEP_START") < events.index("STEP_SUCCESS")
    assert events.index("STEP_SUCCESS") < events.index("RUN_SUCCESS")
    assert events.count("ASSET_MATERIALIZATION") == 6
    assert re.search(r"stdout of fractal_images \(pid \d+\)", out)
    assert re.search(r"stderr of fractal_images \(pid \d+\)", out)


@pytest.mark.parametrize("columns", [80, 40])
def test_a_narrow_or_piped_terminal_drops_columns_and_never_cuts_a_key(recorded: Recorded, columns: int) -> None:
    """At 80 columns (what a pipe gets) the tables drop columns to fit; where they cannot (40 columns; a long
    word in a log message), they are printed wider than the terminal. Every key, event name and word of a
    message stays whole on its line."""
    images = recorded.runs["fractal_images"]
    env = {**recorded.env, "COLUMNS": str(columns)}
    for args, whole in (
        (["events", images, "--unified"], recorded.stored_keys),
        (["events", images], recorded.stored_keys),
        (["logs", images], ["ASSET_MATERIALIZATION_PLANNED", "ASSET_CHECK_EVALUATION_PLANNED"]),
        (["runs"], [run_id[:8] for run_id in recorded.runs.values()]),
    ):
        result = _cli(args, env)
        assert result.returncode == 0, result.stderr
        tables = [line for line in result.stdout.splitlines() if line.startswith(("│", "┃"))]
        assert tables, args
        if columns == 80 and args[0] == "events":  # its keys fit once columns are dropped: it fits
            assert all(len(line) <= columns for line in tables), args
        for text in whole:
            assert any(text in line for line in tables), (args, text)
        for line in tables:  # no cell is cut off at the right border
            assert line.endswith(("│", "┃")), (args, line)


def test_unknown_run_id_is_one_line_and_fails(recorded: Recorded) -> None:
    unknown = next(
        p for p in ("ffffffff", "eeeeeeee", "dddddddd") if not any(r.startswith(p) for r in recorded.runs.values())
    )
    result = _cli(["logs", unknown], recorded.env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert f"no run starts with '{unknown}'" in result.stderr and "fractal-pipeline runs" in result.stderr


# --------------------------------------------------------------------------------------------
# Edge cases: runs a helper process records (ambiguous ids, captured output, a failure, in progress)

HELPER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import dagster as dg

    @dg.asset
    def chatty() -> int:
        print("hello from stdout", flush=True)
        print("hello from stderr", file=sys.stderr, flush=True)
        return 1

    @dg.asset
    def broken() -> int:
        raise dg.Failure(description="spec file missing: set FRACTAL_SPECS")

    @dg.asset
    def crashed() -> int:
        try:
            open("/nonexistent/specs.csv")
        except OSError as exc:
            raise RuntimeError("could not read the specs") from exc

    @dg.asset
    def waiting() -> int:
        Path(os.environ["STARTED_FILE"]).write_text("started")
        deadline = time.time() + 120
        while not Path(os.environ["GO_FILE"]).exists() and time.time() < deadline:
            time.sleep(0.05)
        return 1

    job = dg.Definitions(assets=[chatty, broken, crashed, waiting]).resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.get()
    for name, run_id in zip(sys.argv[1::2], sys.argv[2::2]):
        job.execute_in_process(
            instance=instance, run_id=run_id, asset_selection=[dg.AssetKey(name)], raise_on_error=False
        )
    """
)
CHATTY = "aaaa1111-0000-4000-8000-000000000001"
BROKEN = "aaaa2222-0000-4000-8000-000000000002"
CRASHED = "cccc3333-0000-4000-8000-000000000004"
WAITING = "bbbb2222-0000-4000-8000-000000000003"


@pytest.fixture(scope="module")
def edge_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A home with a chatty and a broken run, and a run blocked in progress until ``go`` exists."""
    folder = tmp_path_factory.mktemp("edge")
    env = _env(folder / "home")
    script = folder / "helper.py"
    script.write_text(HELPER)
    go = folder / "go"
    env.update(STARTED_FILE=str(folder / "started"), GO_FILE=str(go))
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:  # create the SQLite storage once,
        assert instance.get_runs_count() == 0  # not concurrently from the two helper processes
    waiting = subprocess.Popen([sys.executable, str(script), "waiting", WAITING], env=env, cwd=folder)
    try:
        done = subprocess.run(
            [sys.executable, str(script), "chatty", CHATTY, "broken", BROKEN, "crashed", CRASHED],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        deadline = time.monotonic() + 120
        while not (folder / "started").exists():
            assert time.monotonic() < deadline and waiting.poll() is None, "the waiting run never started"
            time.sleep(0.1)
        yield folder / "home", go
    finally:
        go.touch()
        waiting.wait(timeout=120)


def test_ambiguous_prefix_lists_candidates_and_full_id_works(edge_home: tuple[Path, Path]) -> None:
    home, _ = edge_home
    code, out, err = _invoke(home, "logs", "aaaa")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert "'aaaa' is ambiguous, it matches aaaa1111, aaaa2222; type more characters" in err
    code, out, err = _invoke(home, "logs", CHATTY)
    assert code == 0, err
    assert "hello from stdout" in out.split("stdout of chatty")[1].split("stderr of chatty")[0]
    assert "hello from stderr" in out.split("stderr of chatty")[1]
    code, out, err = _invoke(home, "logs", "not-a-run!")
    assert code == 2 and "is not a run id" in err and err.strip().count("\n") == 0


def test_failed_run_says_why(edge_home: tuple[Path, Path]) -> None:
    home, _ = edge_home
    code, out, err = _invoke(home, "logs", BROKEN[:6])
    assert code == 0, err
    assert "STEP_FAILURE" in out and "RUN_FAILURE" in out
    assert err.strip().count("\n") == 0
    assert err.startswith("run aaaa2222 failed:") and "spec file missing: set FRACTAL_SPECS" in err
    code, out, err = _invoke(home, "events", BROKEN[:6])
    assert code == 0 and "step failure" in out and "no render workers in this run" in out
    assert "spec file missing" in err


def test_a_run_failed_by_an_exception_says_which_one(edge_home: tuple[Path, Path]) -> None:
    """Not Dagster's wrapper ("Error occurred while executing op"): the op's own exception."""
    home, _ = edge_home
    code, out, err = _invoke(home, "logs", CRASHED[:8])
    assert code == 0, err
    assert err.strip().count("\n") == 0
    assert err.startswith("run cccc3333 failed:") and "RuntimeError: could not read the specs" in err, err
    step_failure = next(line for line in out.splitlines() if "STEP_FAILURE" in line)
    assert "RuntimeError: could not read the specs" in step_failure and "Error occurred" not in step_failure


def test_run_in_progress_shows_what_exists(edge_home: tuple[Path, Path]) -> None:
    home, _ = edge_home
    code, out, err = _invoke(home, "runs")
    assert code == 0, err
    row = next(row for row in _table_rows(out) if row[0] == WAITING[:8])
    assert row[1] == "STARTED" and row[3].endswith("(running)") and row[6] == "api"
    for command in ("logs", "events"):
        code, out, err = _invoke(home, command, "bbbb")
        assert code == 0, err
        assert err.strip() == "run bbbb2222 is still STARTED: showing what it recorded so far"
    assert "step start" in out and "waiting" in out and "run success" not in out


def test_empty_or_missing_instance_is_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = _invoke(empty, "runs")
    assert code == 0 and out == ""
    assert err.strip() == f"no runs in {empty} yet; start one with `fractal-pipeline run` or `dagster dev`"
    code, out, err = _invoke(empty, "events", "abc123")
    assert code == 2 and "no runs in this instance yet" in err and err.strip().count("\n") == 0
    listed = _cli(["runs"], {**_env(tmp_path / "other"), "DAGSTER_HOME": str(empty)})  # as a user runs it
    assert listed.returncode == 0 and listed.stderr.strip().count("\n") == 0, listed.stderr
    assert list(empty.iterdir()) == []  # reading created nothing
    missing = tmp_path / "missing"
    code, out, err = _invoke(missing, "logs", "abc123")
    assert code == 2 and f"no Dagster instance at {missing}" in err and err.strip().count("\n") == 0
    assert not missing.exists()


def test_busy_counts_and_the_steps_markdown_summary() -> None:
    from fractal_pipeline.defs.summary import batch_summary_markdown
    from fractal_pipeline.inspect.timeline import render_lanes
    from fractal_pipeline.workers.timings import WorkItem, busy_counts, peak_parallel

    def item(worker: str, key: str, start: float, end: float) -> WorkItem:
        return WorkItem(worker, key, 100.0, 100 + start, 100 + start + 0.05, 100 + end - 0.01, 100 + end)

    items = [
        item("pid-1", "dragon_12", 0.1, 0.3),
        item("pid-1", "levy_c_10", 0.3, 0.5),
        item("pid-2", "koch_snowflake_4", 0.2, 0.4),
    ]
    intervals = [(i.started_at, i.stored_at) for i in items]
    assert busy_counts(intervals, [100.05, 100.25, 100.35, 100.45, 100.5]) == [0, 2, 2, 1, 0]
    assert peak_parallel(intervals) == 2
    assert [phase for phase, *_ in items[0].phases()] == ["render", "encode", "put"]
    assert items[0].phases()[2][1] == "fractals/dragon_12.png"

    summary = batch_summary_markdown(items, total=4, failed=1, origin=100.0, now=101.0, width=20)
    assert summary.startswith("**3/4** PNGs stored in 1.00 s by 2 workers (peak 2 at once")
    assert "1 failed" in summary.splitlines()[0]
    assert "| `pid-1` | 2 | +0.000 s | +0.100 s | +0.500 s | 0.400 s |" in summary
    gantt = {line.split("|")[0].strip(): line.split("|")[1] for line in summary.splitlines() if line.startswith("pid-")}
    # 20 cells of 50 ms: started at 0, idle until 0.1 s, working 0.1..0.5 s
    assert gantt["pid-1"] == "··" + "█" * 8 + " " * 10
    assert gantt["pid-2"] == "····" + "█" * 4 + " " * 12

    # A worker that writes a chunk's PNGs after rendering it: its lane is in time order.
    chunk = [
        WorkItem(
            "pid-3", key, 100.0, 100 + start, 100 + start + 0.04, 100 + start + 0.05, 100.31 + n / 100, 100.3 + n / 100
        )
        for n, (key, start) in enumerate([("dragon_12", 0.1), ("levy_c_10", 0.15), ("moore_3", 0.2)])
    ]
    (lane,) = render_lanes(chunk, origin=100.0)
    assert [event.event for event in lane.events] == ["start"] + ["render", "encode"] * 3 + ["put"] * 3 + ["stop"]
    assert [event.t for event in lane.events] == sorted(event.t for event in lane.events)
    assert [event.duration_ms for event in lane.events if event.event == "put"] == pytest.approx([10.0] * 3)

    # A worker stores one PNG while it renders the next: its spans overlap, and it counts once.
    pipelined = [*items, item("pid-2", "hilberts_5", 0.35, 0.6)]
    summary = batch_summary_markdown(pipelined, total=4, failed=0, origin=100.0, now=101.0, width=20)
    assert summary.startswith("**4/4** PNGs stored in 1.00 s by 2 workers (peak 2 at once, 0.80 busy on average)")
    assert "| `pid-2` | 2 | +0.000 s | +0.200 s | +0.600 s | 0.400 s |" in summary


def test_a_png_the_step_wrote_is_its_workers_put_marked_with_the_writer() -> None:
    from fractal_pipeline.inspect.timeline import render_lanes
    from fractal_pipeline.workers.timings import WorkItem

    metadata = {
        "worker": "pid-2",
        "worker_started_at": 9.0,
        "started_at": 10.0,
        "render_ms": 20.0,
        "encode_ms": 10.0,
        "put_ms": 1.0,
        "stored_at": 10.05,
    }
    for extra, subject in [({}, "fractals/dragon_3.png"), ({"stored_by": "pid-1"}, "fractals/dragon_3.png (by pid-1)")]:
        item = WorkItem.from_metadata("dragon_3", {**metadata, **extra})
        assert item is not None
        (lane,) = render_lanes([item], origin=9.0)
        assert lane.worker == "pid-2"
        assert [(event.event, event.subject) for event in lane.events] == [
            ("start", ""),
            ("render", "dragon_3"),
            ("encode", "dragon_3"),
            ("put", subject),
            ("stop", ""),
        ]


def test_runs_and_events_name_the_assets_of_a_job_run_launched_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sensors launch `render_fractal_images` by job name: such a run has no asset selection, and is
    still shown as a fractal_images run."""
    from fractal_pipeline.definitions import build_definitions
    from fractal_pipeline.defs.jobs import RENDER_JOB_NAME
    from fractal_pipeline.defs.partitions import PARTITIONS_NAME
    from fractal_pipeline.defs.tags import ASSET_PARTITION_RANGE_END, ASSET_PARTITION_RANGE_START
    from fractal_pipeline.fractals import random_specs

    home = tmp_path / "home"
    _env(home)
    monkeypatch.setenv("FRACTALS_DIR", str(tmp_path / "store"))
    keys = [spec.key for spec in random_specs(2, seed=3, size=32)]
    job = build_definitions("local").resolve_job_def(RENDER_JOB_NAME)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(PARTITIONS_NAME, keys)
        result = job.execute_in_process(
            instance=instance, tags={ASSET_PARTITION_RANGE_START: keys[0], ASSET_PARTITION_RANGE_END: keys[-1]}
        )
        assert result.success and not result.dagster_run.asset_selection
    code, out, err = _invoke(home, "runs")
    assert code == 0 and "fractal_images" in out, (out, err)
    code, out, err = _invoke(home, "events", result.run_id[:8], "--json")
    assert code == 0 and json.loads(out)["run"]["assets"] == ["fractal_images"], err
    code, out, err = _invoke(home, "events", result.run_id[:8])
    assert code == 0 and "fractal_images" in out.splitlines()[0] and "2 PNGs" in out, (out, err)
