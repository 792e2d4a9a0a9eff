"""The worker runtime: chunks go to worker processes; each renders and stores its specs and reports them."""

from __future__ import annotations

import io
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from fractal_pipeline.fractals import FractalSpec, preview, random_specs, render_indexed, render_png
from fractal_pipeline.store import StoreConfig
from fractal_pipeline.workers import pool, wire
from fractal_pipeline.workers.pool import (
    CHUNK_MAX,
    StartedWorkers,
    Worker,
    chunked,
    default_workers,
    render_many,
    running_workers,
    stop_processes,
)
from fractal_pipeline.workers.results import THUMBNAIL_PX, RenderFailure, RenderResult

from ..conftest import s3_client


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited; it only waits to be reaped
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def _all_exit(pids: set[int], within_s: float = 10.0) -> bool:
    """The processes end within ``within_s`` (a finished batch's workers exit by themselves)."""
    deadline = time.monotonic() + within_s
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _pids(outcomes: list[RenderResult | RenderFailure | None]) -> set[int]:
    return {int(o.worker.removeprefix("pid-")) for o in outcomes if isinstance(o, RenderResult)}


def test_chunks_are_small_and_spread_over_the_workers() -> None:
    keys = [f"dragon_{depth}-{size}px" for depth in range(10) for size in range(64, 114)]
    for count, workers, size in [(500, 1, CHUNK_MAX), (500, 2, CHUNK_MAX), (24, 2, 3), (7, 2, 1), (1, 4, 1)]:
        chunks = chunked(keys[:count], workers)
        assert [key for chunk in chunks for key in chunk] == keys[:count]
        assert max(len(chunk) for chunk in chunks) == size
        # the end goes one spec at a time: no worker is left with a whole chunk while the others idle
        assert all(len(chunk) == 1 for chunk in chunks[-2 * (size - 1) * workers :])


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_each_key_is_rendered_once_by_a_worker_and_reported_once_stored(tmp_path: Path, workers: int) -> None:
    keys = [spec.key for spec in random_specs(60, seed=8, palette=None, size=64)]
    outcomes = []
    for outcome in render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=workers):
        assert isinstance(outcome, RenderResult), outcome
        assert Path(outcome.location).is_file()  # reported once stored, never before
        outcomes.append(outcome)
    assert sorted(o.key for o in outcomes) == sorted(keys)
    pids = _pids(outcomes)
    assert os.getpid() not in pids and 1 <= len(pids) <= workers  # every spec is rendered in a worker
    for key in keys:
        assert (tmp_path / "fractals" / f"{key}.png").read_bytes() == render_png(FractalSpec.from_key(key))
    assert not running_workers() and _all_exit(pids)  # done: the workers exit by themselves


def test_a_worker_holds_its_next_chunk_while_the_step_is_busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "default_workers", lambda: 1)  # no CPU to spare: the worker stores its PNGs
    keys = [spec.key for spec in random_specs(40, seed=12, palette=None, size=64)]
    chunks = chunked(keys, 1)
    batch = render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=1)
    first = next(batch)  # the first chunk is reported; the step now holds off
    assert isinstance(first, RenderResult) and first.key in chunks[0]
    # Meanwhile the worker renders the chunk it held and the one handed to it with the first report.
    wanted = [tmp_path / "fractals" / f"{key}.png" for key in chunks[1] + chunks[2]]
    deadline = time.monotonic() + 30
    while not all(path.is_file() for path in wanted) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(path.is_file() for path in wanted)
    assert sorted(o.key for o in [first, *batch] if isinstance(o, RenderResult)) == sorted(keys)


def test_workers_started_early_render_the_batch(tmp_path: Path) -> None:
    store = StoreConfig(local_dir=str(tmp_path))
    started = StartedWorkers()
    started.start(store, workers=2, count=5)  # no more than the batch asks for
    early = {worker.process.pid for worker in started.workers}
    assert len(early) == 2
    keys = [spec.key for spec in random_specs(12, seed=13, palette=None, size=64)]
    outcomes = list(render_many(keys, store, workers=2, started=started))
    assert sorted(o.key for o in outcomes if isinstance(o, RenderResult)) == sorted(keys)
    assert _pids(outcomes) == early and not started.workers  # taken: no other worker started
    assert not running_workers() and _all_exit(early)


def test_started_workers_that_do_not_fit_the_batch_are_stopped(tmp_path: Path) -> None:
    started = StartedWorkers()
    started.start(StoreConfig(local_dir=str(tmp_path / "elsewhere")), workers=2, count=2)
    early = {worker.process.pid for worker in started.workers}
    keys = [spec.key for spec in random_specs(4, seed=14, palette=None, size=64)]
    outcomes = list(render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=2, started=started))
    assert len(outcomes) == 4 and not _pids(outcomes) & early  # rendered by workers started for this store
    assert _all_exit(early) and not running_workers()
    assert not (tmp_path / "elsewhere" / "fractals").exists()


def test_closing_started_workers_stops_those_no_batch_took(tmp_path: Path) -> None:
    started = StartedWorkers()
    started.start(StoreConfig(local_dir=str(tmp_path)), workers=2, count=2)
    early = {worker.process.pid for worker in started.workers}
    started.close()
    assert _all_exit(early) and not running_workers() and not started.workers


def test_a_result_carries_the_workers_thumbnail_and_timings(tmp_path: Path) -> None:
    keys = [spec.key for spec in random_specs(6, seed=10, palette=None, size=256)]
    called = time.time()
    for result in render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=2):
        assert isinstance(result, RenderResult)
        spec = FractalSpec.from_key(result.key)
        with Image.open(io.BytesIO(result.thumbnail_png)) as thumbnail:
            expected = preview(render_indexed(spec), THUMBNAIL_PX)
            assert thumbnail.size == expected.size and thumbnail.tobytes() == expected.tobytes()
        assert called - 1 < result.worker_started_at <= result.started_at  # the worker's process start
        assert result.started_at <= result.rendered_at <= result.encoded_at <= result.put_started_at
        assert result.put_started_at <= result.stored_at and result.png_bytes == len(render_png(spec))


@pytest.mark.parametrize(("cpus", "step_stores"), [(2, True), (1, False)])
def test_with_a_cpu_to_spare_the_step_stores_its_workers_pngs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int, step_stores: bool
) -> None:
    monkeypatch.setattr(pool, "default_workers", lambda: cpus)  # the CPUs this process may use
    keys = [spec.key for spec in random_specs(24, seed=11, palette=None, size=256)]
    outcomes = list(render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=1))
    assert all(isinstance(o, RenderResult) for o in outcomes) and sorted(o.key for o in outcomes) == sorted(keys)
    for result in outcomes:
        assert isinstance(result, RenderResult)
        assert result.worker != f"pid-{os.getpid()}"  # rendered by the worker either way
        assert result.stored_by == (f"pid-{os.getpid()}" if step_stores else "")
        assert Path(result.location).read_bytes() == render_png(FractalSpec.from_key(result.key))
        with Image.open(io.BytesIO(result.thumbnail_png)) as thumbnail:  # encoded where the PNG was stored
            expected = preview(render_indexed(FractalSpec.from_key(result.key)), THUMBNAIL_PX)
            assert thumbnail.tobytes() == expected.tobytes()
    assert not list((tmp_path / "fractals").glob(".tmp-*"))


def test_a_png_the_step_cannot_store_for_its_worker_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "default_workers", lambda: 2)
    keys = [spec.key for spec in random_specs(10, seed=15, palette=None, size=128)]
    (tmp_path / "fractals" / f"{keys[2]}.png").mkdir(parents=True)  # a folder where the PNG would go
    outcomes = {o.key: o for o in render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=1) if o}
    failed = outcomes.pop(keys[2])
    assert isinstance(failed, RenderFailure) and "is a folder" in failed.error
    assert all(isinstance(o, RenderResult) and o.stored_by == f"pid-{os.getpid()}" for o in outcomes.values())
    assert len(outcomes) == 9


def test_a_worker_handing_pngs_back_gets_a_pipe_that_holds_a_chunk(tmp_path: Path) -> None:
    import fcntl

    worker = Worker(None)
    try:
        capacity = fcntl.fcntl(worker.reports, fcntl.F_GETPIPE_SZ)
        with open("/proc/sys/fs/pipe-max-size") as limit:
            assert capacity >= min(pool.REPORT_PIPE_BYTES, int(limit.read()))
        assert capacity > 8 * 64 * 1024  # a chunk of 8 PNGs of a 1024 px spec, with their thumbnails
    finally:
        stop_processes([worker.process], StoreConfig(local_dir=str(tmp_path)))


def test_a_spec_that_cannot_be_stored_fails_alone(tmp_path: Path) -> None:
    keys = [spec.key for spec in random_specs(12, seed=12, palette=None, size=128)]
    (tmp_path / "fractals" / f"{keys[3]}.png").mkdir(parents=True)  # a folder where the PNG would go
    outcomes = {o.key: o for o in render_many([*keys, "no_such_kind_3"], StoreConfig(local_dir=str(tmp_path)), 2) if o}
    failed = outcomes.pop(keys[3])
    assert isinstance(failed, RenderFailure) and "is a folder" in failed.error and not failed.transient
    bad = outcomes.pop("no_such_kind_3")
    assert isinstance(bad, RenderFailure) and "no_such_kind" in bad.error
    assert all(isinstance(outcome, RenderResult) for outcome in outcomes.values()) and len(outcomes) == 11
    assert not list((tmp_path / "fractals").glob(".tmp-*"))


def test_the_keys_of_a_worker_that_dies_are_rendered_by_a_new_one(tmp_path: Path) -> None:
    keys = [spec.key for spec in random_specs(40, seed=2, palette=None, size=512)]
    outcomes: list[RenderResult | RenderFailure] = []
    killed = 0
    for outcome in render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=2):
        assert outcome is not None
        outcomes.append(outcome)
        if len(outcomes) == 5:  # a known point: the first worker has reported, and holds the rest of its chunk
            assert isinstance(outcome, RenderResult), outcome
            killed = int(outcome.worker.removeprefix("pid-"))
            assert killed > 1 and killed != os.getpid()
            os.kill(killed, signal.SIGKILL)
    assert killed and all(isinstance(o, RenderResult) for o in outcomes), outcomes
    assert sorted(o.key for o in outcomes) == sorted(keys)  # each once: nothing lost, nothing twice
    assert killed in _pids(outcomes) and len(_pids(outcomes)) >= 3  # a new worker took over
    assert not list((tmp_path / "fractals").glob(".tmp-*"))


def test_a_key_whose_workers_keep_dying_fails_after_its_attempts(tmp_path: Path) -> None:
    keys = [spec.key for spec in random_specs(4, seed=3, palette=None, size=2048)]

    def kill_every_worker() -> bool:  # asked after each report and while waiting: every worker dies holding a chunk
        for process in running_workers():
            process.kill()
        return False

    outcomes = [
        o for o in render_many(keys, StoreConfig(local_dir=str(tmp_path)), 1, should_stop=kill_every_worker) if o
    ]
    assert sorted(o.key for o in outcomes) == sorted(keys)  # each reported once, stored or failed
    failures = [o for o in outcomes if isinstance(o, RenderFailure)]
    assert failures and all(
        f.error == "worker process died while rendering (killed or out of memory)" for f in failures
    )
    assert not running_workers() and not list((tmp_path / "fractals").glob(".tmp-*"))


def test_asked_to_stop_the_workers_stop_at_once_and_leave_no_partial_png(tmp_path: Path) -> None:
    keys = [spec.key for spec in random_specs(200, seed=4, palette=None, size=1024)]
    seen: list[RenderResult | RenderFailure] = []
    pids: set[int] = set()

    def stop() -> bool:
        pids.update(process.pid for process in running_workers())
        return len(seen) >= 3

    for outcome in render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=2, should_stop=stop):
        if outcome is not None:
            seen.append(outcome)
    assert 3 <= len(seen) < len(keys) and pids
    assert not running_workers() and not any(_alive(pid) for pid in pids)  # stopped and reaped, not left running
    assert not list((tmp_path / "fractals").glob(".tmp-*"))
    stored = {path.stem for path in (tmp_path / "fractals").glob("*.png")}
    for key in stored:  # every PNG there is whole
        assert (tmp_path / "fractals" / f"{key}.png").read_bytes() == render_png(FractalSpec.from_key(key))


@pytest.mark.parametrize("how", ["asked to stop", "closed", "closed mid-report"])
def test_a_stopped_batch_names_the_pngs_its_workers_stored_and_had_not_reported(tmp_path: Path, how: str) -> None:
    keys = [spec.key for spec in random_specs(200, seed=6, palette=None, size=1024)]
    folder = tmp_path / "fractals"
    reported: set[str] = set()
    unreported: dict[str, str] = {}

    def unreported_png() -> bool:  # the known point: a worker stored a PNG of a chunk it has not reported
        return any(path.stem not in reported for path in folder.glob("*.png"))

    outcomes = render_many(
        keys,
        StoreConfig(local_dir=str(tmp_path)),
        default_workers(),  # as many workers as CPUs: they store their own PNGs
        heartbeat_s=0.001,  # so that the known point is looked for every millisecond
        should_stop=unreported_png if how == "asked to stop" else None,
        on_stop=unreported.update,
    )
    for outcome in outcomes:
        if isinstance(outcome, RenderResult):
            reported.add(outcome.key)
        # "closed mid-report": after the first PNG of the first report, the rest of that chunk not yet yielded
        if (how == "closed" and unreported_png()) or (how == "closed mid-report" and reported):
            outcomes.close()  # what the step does when its run is interrupted
            break
    stored = {path.stem for path in folder.glob("*.png")}
    assert unreported and set(unreported) == stored - reported
    assert all(Path(location) == (folder / f"{key}.png").resolve() for key, location in unreported.items())


def test_closing_the_batch_stops_its_workers(tmp_path: Path) -> None:
    keys = [spec.key for spec in random_specs(100, seed=5, palette=None, size=1024)]
    outcomes = render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=2)
    first = next(outcomes)
    pids = {process.pid for process in running_workers()}
    outcomes.close()  # what the step does when its run is canceled
    assert isinstance(first, RenderResult) and len(pids) == 2
    assert not running_workers() and not any(_alive(pid) for pid in pids)


def test_a_batch_asked_to_stop_before_it_starts_starts_no_worker(tmp_path: Path) -> None:
    assert list(render_many(["dragon_3-64px"], StoreConfig(local_dir=str(tmp_path)), 2, should_stop=lambda: True)) == []
    assert not running_workers()


def test_a_worker_exits_when_its_step_goes_away(tmp_path: Path) -> None:
    worker = Worker(StoreConfig(local_dir=str(tmp_path)))
    worker.give(["dragon_3-64px"])
    ((key, outcome),) = worker.receive()
    assert key == "dragon_3-64px" and isinstance(outcome, RenderResult)
    worker.finish()  # the pipe closes, as when the step's process dies
    assert worker.process.wait(timeout=10) == 0
    stop_processes([worker.process], worker_store := StoreConfig(local_dir=str(tmp_path)))
    assert worker_store.local_dir and not running_workers()


@pytest.mark.parametrize("user_setting", [None, "3"])
def test_workers_start_without_blas_threads_unless_the_user_set_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_setting: str | None
) -> None:
    if user_setting is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", user_setting)
    worker = Worker(StoreConfig(local_dir=str(tmp_path)))
    try:
        worker.give(["dragon_3-64px"])
        assert worker.receive()  # it has reported: it runs the worker's code, not the fork before exec
        with open(f"/proc/{worker.process.pid}/environ", "rb") as environ:
            variables = dict(item.split(b"=", 1) for item in environ.read().split(b"\0") if b"=" in item)
        assert variables[b"OPENBLAS_NUM_THREADS"].decode() == (user_setting or "1")
        assert os.environ.get("OPENBLAS_NUM_THREADS") == user_setting  # this process's environment is as it was
    finally:
        stop_processes([worker.process], StoreConfig(local_dir=str(tmp_path)))


def test_a_worker_imports_neither_dagster_nor_the_command_that_started_it() -> None:
    code = (
        "import sys, runpy; sys.stdin.close(); runpy.run_module('fractal_pipeline.workers.worker', run_name='x'); "
        "bad = [m for m in ('dagster', 'typer', 'fractal_pipeline.cli', 'fractal_pipeline.defs') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_stray_print_in_a_worker_does_not_reach_the_step(tmp_path: Path) -> None:
    code = (
        "import sys; from fractal_pipeline.workers import worker; "
        "real = worker.render_spec; "
        "worker.render_spec = lambda key: (print('stray output', flush=True), real(key))[1]; "
        "worker.main()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    wire.send(process.stdin.fileno(), StoreConfig(local_dir=str(tmp_path)))
    wire.send(process.stdin.fileno(), ["dragon_3-64px", "levy_c_3-64px"])
    reports = wire.receive(process.stdout.fileno())  # the chunk, in one message
    process.stdin.close()
    assert process.wait(timeout=30) == 0 and process.stderr is not None
    stderr = process.stderr.read()
    assert [key for key, _ in reports] == ["dragon_3-64px", "levy_c_3-64px"]
    assert all(isinstance(outcome, RenderResult) for _, outcome in reports)
    assert stderr.decode().count("stray output") == 2


@pytest.mark.s3
def test_a_worker_uploads_one_png_while_it_renders_the_next(s3_env: dict[str, str]) -> None:
    keys = [spec.key for spec in random_specs(40, seed=9, palette=None, size=512)]
    config = StoreConfig(bucket=s3_env["FRACTALS_BUCKET"], endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    outcomes = list(render_many(keys, config, workers=1))
    assert all(isinstance(o, RenderResult) for o in outcomes) and sorted(o.key for o in outcomes) == sorted(keys)
    results = sorted((o for o in outcomes if isinstance(o, RenderResult)), key=lambda r: r.started_at)
    overlaps = sum(after.started_at < before.stored_at for before, after in itertools.pairwise(results))
    assert overlaps > 0, "no render started before the previous PNG was uploaded"
    client = s3_client(s3_env["AWS_ENDPOINT_URL"])
    for key in keys:
        stored = client.get_object(Bucket=s3_env["FRACTALS_BUCKET"], Key=f"fractals/{key}.png")["Body"].read()
        assert stored == render_png(FractalSpec.from_key(key))


def test_the_module_keeps_no_mode_flags() -> None:
    # The runtime's only module state is the set of live worker processes (what a second Ctrl-C stops).
    state = {
        name
        for name, value in vars(pool).items()
        if isinstance(value, set | dict | list) and name.startswith("_") and not name.startswith("__")
    }
    assert state == {"_running"}
