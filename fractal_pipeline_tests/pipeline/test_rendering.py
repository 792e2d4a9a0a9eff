"""render_many's scheduling: the step's own process renders while its workers start, and writes
their local PNGs when a CPU is free."""

from __future__ import annotations

import fcntl
import io
import itertools
import os
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from PIL import Image

from fractal_pipeline import rendering
from fractal_pipeline.fractals import FractalSpec, preview, random_specs, render_indexed, render_png
from fractal_pipeline.rendering import (
    CHUNK_MAX,
    PARENT_MAX_SEGMENTS,
    RenderFailure,
    RenderResult,
    WorkOutcome,
    _render_while_workers_start,
    chunked,
    render_many,
    workers_started_early,
)
from fractal_pipeline.store import LocalStore, StoreConfig, StoreError, image_key

from ..conftest import s3_client


class ReadyAfter:
    """A stand-in for the workers' ready event: set from the ``checks``-th look on."""

    def __init__(self, checks: int) -> None:
        self.checks = checks
        self.looks = 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > self.checks


def _futures(*chunks: list[str]) -> dict[Future[list[WorkOutcome]], list[str]]:
    return {Future(): chunk for chunk in chunks}


def test_the_step_takes_small_specs_from_the_end_until_one_is_already_with_a_worker(tmp_path: Path) -> None:
    big = "dragon_17"  # 131,072 segments: left to the workers
    assert FractalSpec.from_key(big).segments > PARENT_MAX_SEGMENTS
    futures = _futures(
        ["dragon_6-64px"],
        ["levy_c_5-64px", "hilberts_3-64px"],
        [big],
        ["koch_snowflake_2-2048px"],
        ["ter_dragon_4-64px"],
    )
    first = next(iter(futures))
    assert first.set_running_or_notify_cancel()  # handed to a worker already: cannot be taken back
    outcomes = list(
        _render_while_workers_start(futures, ReadyAfter(99), StoreConfig(local_dir=str(tmp_path)).open, None)
    )
    taken = ["ter_dragon_4-64px", "levy_c_5-64px", "hilberts_3-64px"]  # chunks from the end, each in order
    assert [o.key for o in outcomes] == taken
    assert all(isinstance(o, RenderResult) and o.worker == f"pid-{os.getpid()}" for o in outcomes)
    assert list(futures.values()) == [["dragon_6-64px"], [big], ["koch_snowflake_2-2048px"]]
    assert all(not f.cancelled() for f in futures)  # what is left is still the workers' to do
    for key in taken:
        assert (tmp_path / "fractals" / f"{key}.png").read_bytes() == render_png(FractalSpec.from_key(key))


def test_the_step_stops_taking_specs_once_a_worker_is_ready(tmp_path: Path) -> None:
    keys = [spec.key for spec in random_specs(6, seed=3, size=64)]
    futures = _futures(*([key] for key in keys))
    outcomes = list(
        _render_while_workers_start(futures, ReadyAfter(2), StoreConfig(local_dir=str(tmp_path)).open, None)
    )
    assert [o.key for o in outcomes] == keys[:-3:-1]  # the last two, last first
    assert list(futures.values()) == [[key] for key in keys[:-2]]


def test_a_spec_the_step_cannot_store_is_a_failure_and_the_rest_go_on(tmp_path: Path) -> None:
    (tmp_path / "fractals" / "levy_c_5-64px.png").mkdir(parents=True)  # a folder where the PNG would go
    futures = _futures(["dragon_6-64px"], ["no_such_kind_3"], ["levy_c_5-64px"])
    outcomes = list(
        _render_while_workers_start(futures, ReadyAfter(99), StoreConfig(local_dir=str(tmp_path)).open, None)
    )
    assert list(futures.values()) == [["no_such_kind_3"]]  # left to a worker, which reports it like any bad key
    failure, result = outcomes
    assert isinstance(failure, RenderFailure) and failure.key == "levy_c_5-64px" and "is a folder" in failure.error
    assert isinstance(result, RenderResult) and result.key == "dragon_6-64px"


def test_chunks_are_small_and_spread_over_the_workers() -> None:
    keys = [f"dragon_{depth}-{size}px" for depth in range(10) for size in range(64, 114)]
    for count, workers, size in [(500, 1, CHUNK_MAX), (500, 2, CHUNK_MAX), (24, 2, 3), (7, 2, 1), (1, 4, 1)]:
        chunks = chunked(keys[:count], workers)
        assert [key for chunk in chunks for key in chunk] == keys[:count]
        assert max(len(chunk) for chunk in chunks) == size
        # the end goes one spec at a time: no worker is left with a whole chunk while the others idle
        assert all(len(chunk) == 1 for chunk in chunks[-2 * (size - 1) * workers :])


@pytest.mark.parametrize("workers", [1, 2])
def test_render_many_renders_each_key_once_between_the_step_and_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(rendering, "default_workers", lambda: 2)  # the CPUs this process may use
    keys = [spec.key for spec in random_specs(200, seed=8, palette=None, size=64)]
    outcomes = []
    for outcome in render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=workers):
        assert isinstance(outcome, RenderResult), outcome
        assert Path(outcome.location).is_file()  # reported once stored, never before
        outcomes.append(outcome)
    assert sorted(o.key for o in outcomes) == sorted(keys)
    by = {o.worker for o in outcomes}
    # ~1 ms renders: with a CPU free, this process takes some while its worker starts; with a worker
    # per CPU it leaves the CPUs to the workers' start-up.
    assert (f"pid-{os.getpid()}" in by) == (workers < 2)
    assert len(by - {f"pid-{os.getpid()}"}) >= 1
    for key in keys:
        assert (tmp_path / "fractals" / f"{key}.png").read_bytes() == render_png(FractalSpec.from_key(key))


def test_a_worker_writes_a_chunks_pngs_after_rendering_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local store: a chunk is rendered, then its PNGs written one after another; ``put_ms`` is the
    write's own time, not the wait for the rest of the chunk. A bad key fails alone."""
    monkeypatch.setattr(rendering, "default_workers", lambda: 1)  # no renders in this process
    keys = [spec.key for spec in random_specs(40, seed=10, palette=None, size=256)]
    keys[5] = "no_such_kind_3"
    chunks = chunked(keys, 1)
    assert len(next(chunk for chunk in chunks if "no_such_kind_3" in chunk)) == CHUNK_MAX > 1
    outcomes = {o.key: o for o in render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=1) if o}
    assert isinstance(outcomes["no_such_kind_3"], RenderFailure)
    for chunk in chunks:
        results = [outcomes[key] for key in chunk if key != "no_such_kind_3"]
        assert all(isinstance(r, RenderResult) for r in results)
        last_encoded = max(r.encoded_at for r in results)  # type: ignore[union-attr]
        for result in results:
            assert isinstance(result, RenderResult)
            assert result.put_started_at >= last_encoded  # written once the whole chunk is rendered
            assert result.put_ms == pytest.approx((result.stored_at - result.put_started_at) * 1000)
            assert (tmp_path / "fractals" / f"{result.key}.png").read_bytes() == render_png(
                FractalSpec.from_key(result.key)
            )


@pytest.mark.parametrize(("cpus", "step_writes"), [(2, True), (1, False)])
def test_with_a_cpu_to_spare_the_step_writes_its_workers_local_pngs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int, step_writes: bool
) -> None:
    """One worker on two CPUs: the worker only renders, this process writes every PNG (a spawned
    worker does not see this test's patch of ``LocalStore.put``). A worker per CPU writes its own."""
    monkeypatch.setattr(rendering, "default_workers", lambda: cpus)
    monkeypatch.setattr(rendering, "PARENT_MAX_SEGMENTS", -1)  # the worker renders every spec
    written_here: list[str] = []
    real_put = LocalStore.put

    def put(self: LocalStore, key: str, data: bytes) -> str:
        written_here.append(key)
        return real_put(self, key, data)

    monkeypatch.setattr(LocalStore, "put", put)
    keys = [spec.key for spec in random_specs(30, seed=11, palette=None, size=256)]
    outcomes = list(render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=1))
    assert all(isinstance(o, RenderResult) for o in outcomes) and sorted(o.key for o in outcomes) == sorted(keys)
    from_worker = [o for o in outcomes if isinstance(o, RenderResult) and o.worker != f"pid-{os.getpid()}"]
    assert len(from_worker) == len(keys)
    worker_keys = {image_key(o.key) for o in from_worker}
    assert worker_keys <= set(written_here) if step_writes else not worker_keys & set(written_here)
    for result in from_worker:
        assert result.stored_by == (f"pid-{os.getpid()}" if step_writes else "")
        assert result.worker_started_at < result.started_at <= result.encoded_at <= result.put_started_at
        assert result.put_started_at <= result.stored_at
        spec = FractalSpec.from_key(result.key)
        assert (tmp_path / "fractals" / f"{result.key}.png").read_bytes() == render_png(spec)
        with Image.open(io.BytesIO(result.thumbnail_png)) as thumbnail:  # encoded where the PNG was written
            expected = preview(render_indexed(spec), rendering.THUMBNAIL_PX)
            assert thumbnail.size == expected.size and thumbnail.tobytes() == expected.tobytes()


def test_workers_handing_png_chunks_to_the_step_get_a_pipe_that_holds_a_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rendering, "default_workers", lambda: 2)
    for workers, step_stores in [(1, True), (2, False)]:
        pool = rendering._start_pool(StoreConfig(local_dir=str(tmp_path)), workers)
        try:
            reader = pool.executor._result_queue._reader  # type: ignore[attr-defined]
            capacity = fcntl.fcntl(reader.fileno(), fcntl.F_GETPIPE_SZ)
            chunk = rendering.CHUNK_MAX * 64 * 1024  # 8 PNGs of a 1024 px spec, with room to spare
            assert (capacity >= chunk) == step_stores, capacity
        finally:
            pool.stop()


def test_a_png_the_step_cannot_write_is_a_failure_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rendering, "default_workers", lambda: 2)
    monkeypatch.setattr(rendering, "PARENT_MAX_SEGMENTS", -1)  # the worker renders every spec
    keys = [spec.key for spec in random_specs(20, seed=12, palette=None, size=128)]
    real_put = LocalStore.put

    def put(self: LocalStore, key: str, data: bytes) -> str:
        if key == image_key(keys[0]):
            raise StoreError(f"key: {key!r} is a folder in {self.root}; use another key")
        return real_put(self, key, data)

    monkeypatch.setattr(LocalStore, "put", put)
    outcomes = {o.key: o for o in render_many(keys, StoreConfig(local_dir=str(tmp_path)), workers=1) if o}
    assert isinstance(outcomes[keys[0]], RenderFailure)
    assert "is a folder" in outcomes[keys[0]].error and not outcomes[keys[0]].transient
    assert all(isinstance(outcomes[key], RenderResult) for key in keys[1:])
    assert {outcome.worker for outcome in outcomes.values() if isinstance(outcome, RenderResult)} != {
        f"pid-{os.getpid()}"
    }
    assert not (tmp_path / "fractals" / f"{keys[0]}.png").exists()
    assert not list((tmp_path / "fractals").glob(".tmp-*"))


@pytest.mark.s3
def test_a_worker_uploads_one_png_while_it_renders_the_next(s3_env: dict[str, str]) -> None:
    keys = [spec.key for spec in random_specs(40, seed=9, palette=None, size=512)]
    config = StoreConfig(bucket=s3_env["FRACTALS_BUCKET"], endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    outcomes = list(render_many(keys, config, workers=1))
    assert all(isinstance(o, RenderResult) for o in outcomes) and sorted(o.key for o in outcomes) == sorted(keys)
    by_worker: dict[str, list[RenderResult]] = {}
    for outcome in outcomes:
        assert isinstance(outcome, RenderResult)
        by_worker.setdefault(outcome.worker, []).append(outcome)
    overlaps = 0
    for results in by_worker.values():
        results.sort(key=lambda r: r.started_at)
        overlaps += sum(after.started_at < before.stored_at for before, after in itertools.pairwise(results))
    assert overlaps > 0, "no render started before the previous PNG was uploaded"
    client = s3_client(s3_env["AWS_ENDPOINT_URL"])
    for key in keys:
        stored = client.get_object(Bucket=s3_env["FRACTALS_BUCKET"], Key=f"fractals/{key}.png")["Body"].read()
        assert stored == render_png(FractalSpec.from_key(key))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _all_exit(pids: set[int], within_s: float = 5.0) -> bool:
    """The processes end within ``within_s`` (a batch's workers exit in the background once it is done)."""
    deadline = time.monotonic() + within_s
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_workers_started_early_render_the_next_batch_into_the_same_store(tmp_path: Path) -> None:
    config = StoreConfig(local_dir=str(tmp_path))
    keys = [spec.key for spec in random_specs(12, seed=13, palette=None, size=128)]
    with workers_started_early(config, workers=2):
        pool = rendering._early_pool
        assert pool is not None and pool.size == 2
        time.sleep(0.5)  # Dagster creating the run
        early_pids = {f"pid-{process.pid}" for process in rendering._worker_processes(pool.executor)}
        called = time.time()
        outcomes = list(render_many(keys, config, workers=2))
        assert rendering._early_pool is None  # taken over, not left for a second batch
    assert all(isinstance(o, RenderResult) for o in outcomes) and sorted(o.key for o in outcomes) == sorted(keys)
    workers = {o.worker for o in outcomes if isinstance(o, RenderResult)}
    assert workers <= early_pids and len(early_pids) == 2
    assert all(o.worker_started_at < called - 0.2 for o in outcomes if isinstance(o, RenderResult))
    assert _all_exit({int(pid.removeprefix("pid-")) for pid in early_pids})  # stopped with the batch


@pytest.mark.parametrize("other", ["store", "fewer workers"])
def test_workers_started_early_for_another_batch_are_stopped_unused(tmp_path: Path, other: str) -> None:
    config = StoreConfig(local_dir=str(tmp_path / "a"))
    batch_config = StoreConfig(local_dir=str(tmp_path / "b")) if other == "store" else config
    keys = [spec.key for spec in random_specs(6, seed=14, palette=None, size=128)]
    with workers_started_early(config, workers=2):
        pool = rendering._early_pool
        assert pool is not None
        time.sleep(0.3)
        early_pids = {process.pid for process in rendering._worker_processes(pool.executor)}
        outcomes = list(render_many(keys, batch_config, workers=2 if other == "store" else 1))
        assert rendering._early_pool is pool
    assert {o.worker for o in outcomes if isinstance(o, RenderResult)}.isdisjoint({f"pid-{p}" for p in early_pids})
    assert all((Path(batch_config.local_dir or "") / "fractals" / f"{key}.png").is_file() for key in keys)
    assert rendering._early_pool is None
    assert early_pids and not any(_alive(pid) for pid in early_pids)  # stopped when the block ends


@pytest.mark.parametrize("user_setting", [None, "3"])
def test_workers_start_without_blas_threads_unless_the_user_set_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_setting: str | None
) -> None:
    if user_setting is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", user_setting)
    pool = rendering._start_pool(StoreConfig(local_dir=str(tmp_path)), 1)
    try:
        with rendering._spawning_workers():
            seen = pool.executor.submit(os.getenv, "OPENBLAS_NUM_THREADS")
        assert seen.result(timeout=60) == (user_setting or "1")
        assert os.environ.get("OPENBLAS_NUM_THREADS") == user_setting  # this process's environment is as it was
    finally:
        pool.stop()
