"""Rendering many specs in worker processes: the step hands out chunks of keys, each worker renders and
stores the specs of its chunk and reports them, and the step yields each outcome as it arrives.

Workers are plain child processes (:mod:`fractal_pipeline.workers.worker`) talking over pipes
(:mod:`fractal_pipeline.workers.wire`). A worker that dies has its unreported keys retried by a new
one; stopping a batch terminates its workers and removes any PNG they left half-written.
No Dagster here: the images step drives :func:`render_many`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

from fractal_pipeline.store import FractalStore, LocalStore, StoreConfig, image_key, open_store
from fractal_pipeline.workers import wire
from fractal_pipeline.workers.results import (
    RenderedSpec,
    RenderFailure,
    RenderResult,
    failure,
    store_rendered,
    this_process,
)

Outcome = RenderResult | RenderFailure

#: Thread pools a worker does not need: the core makes no BLAS calls, and numpy's OpenBLAS starting a
#: thread per CPU costs each worker CPU time at start. A value the user set wins.
WORKER_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: Keys per chunk handed to a worker: one message each way per chunk, small enough that a chunk's
#: partitions are recorded within ~0.1 s of 1024 px renders and that the workers run out of work together.
CHUNK_MAX = 8

#: Chunks a worker holds at once: while it renders one, the next waits in its pipe, so it never idles
#: while the step is busy recording the previous chunk's partitions.
CHUNKS_IN_FLIGHT = 2

#: More render workers than this per CPU only compete for the CPUs (and each costs a process start).
MAX_WORKERS_PER_CPU = 4


def step_stores(store_config: StoreConfig, workers: int) -> bool:
    """Whether the step's process stores the workers' PNGs: with a local folder and a CPU the workers leave
    free, the step writes each PNG while the worker renders the next spec."""
    return not store_config.bucket and workers < default_workers()


#: Capacity asked for a worker's report pipe when it hands PNGs back: a few encoded 1024 px PNGs and
#: thumbnails, so that the worker renders on instead of waiting for this process to read each one.
REPORT_PIPE_BYTES = 1 << 20


def widen_pipe(fd: int, size: int = REPORT_PIPE_BYTES) -> None:
    """Ask Linux for a pipe that holds ``size`` bytes; elsewhere, or above the system's limit, it stays as it is."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is not None:
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size
            fcntl.fcntl(fd, set_size, size)


#: How long a stopped worker may take to exit before it is killed.
STOP_GRACE_S = 2.0

#: Every worker process this process started and has not reaped: what a second Ctrl-C stops at once.
_running: set[subprocess.Popen[bytes]] = set()


def default_workers() -> int:
    """Worker processes to use: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def max_workers() -> int:
    """The most worker processes a batch may ask for: :data:`MAX_WORKERS_PER_CPU` per CPU."""
    return MAX_WORKERS_PER_CPU * default_workers()


def chunked(keys: list[str], workers: int) -> list[list[str]]:
    """``keys`` in chunks of up to :data:`CHUNK_MAX`, at least ~4 chunks per worker; the last few
    specs one per chunk, so that the workers run out of work at about the same time."""
    size = max(1, min(CHUNK_MAX, len(keys) // (4 * max(1, workers))))
    singles = len(keys) - min(len(keys), 2 * (size - 1) * max(1, workers))
    chunks = [keys[start : min(start + size, singles)] for start in range(0, singles, size)]
    return chunks + [[key] for key in keys[singles:]]


def running_workers() -> list[subprocess.Popen[bytes]]:
    """The worker processes this process started that have not been reaped yet."""
    return list(_running)


def stop_processes(processes: Iterable[subprocess.Popen[bytes]], store_config: StoreConfig) -> None:
    """Terminate worker ``processes``, kill those still alive after :data:`STOP_GRACE_S`, and remove the
    temp files they left half-written in a local store."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _running.discard(process)
    store = open_store(store_config)
    if isinstance(store, LocalStore):
        store.remove_partials({process.pid for process in processes})


class Worker:
    """One worker process, and the keys handed to it that it has not reported yet.

    ``store_config`` None: it hands each rendered spec back unstored (:func:`step_stores`).
    """

    def __init__(self, store_config: StoreConfig | None) -> None:
        package_root = str(Path(__file__).resolve().parents[2])  # the same code as this process runs
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        env = {**WORKER_ENVIRONMENT, **os.environ, "PYTHONPATH": path}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fractal_pipeline.workers.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
        )
        _running.add(self.process)
        self.keys: list[str] = []  # handed to it and not reported yet
        self.chunks = 0  # chunks handed to it and not reported yet
        if store_config is None:
            widen_pipe(self.reports)
        self._send(store_config)

    @property
    def reports(self) -> int:
        """The descriptor its reports arrive on."""
        assert self.process.stdout is not None
        return self.process.stdout.fileno()

    def give(self, keys: list[str]) -> None:
        """Hand it a chunk; BrokenPipeError if it is gone."""
        self.keys.extend(keys)
        self.chunks += 1
        self._send(keys)

    def receive(self) -> list[tuple[str, Outcome | RenderedSpec]]:
        """Its report of the oldest chunk it holds; EOFError if it died (or exited)."""
        reports: list[tuple[str, Outcome | RenderedSpec]] = wire.receive(self.reports)
        self.chunks -= 1
        for key, _ in reports:
            self.keys.remove(key)
        return reports

    def finish(self) -> None:
        """No more work: it exits once idle. It is not waited for."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()

    def _send(self, message: object) -> None:
        assert self.process.stdin is not None
        wire.send(self.process.stdin.fileno(), message)


class StartedWorkers:
    """Worker processes started before their batch, by a caller that knows one is coming: an early start.

    ``fractal-pipeline run`` starts them just before Dagster creates the images run, so that their start-up
    (importing the core) overlaps the run's creation instead of following it. The deployment's
    ``started_workers`` resource is one of these, empty unless its caller started some; :func:`render_many`
    takes them when they were started for its store and worker count; :meth:`close` stops any it did not take.
    """

    def __init__(self) -> None:
        self.store_config: StoreConfig | None = None
        self.worker_store: StoreConfig | None = None
        self.workers: list[Worker] = []

    def start(self, store_config: StoreConfig, workers: int, count: int) -> None:
        """Start ``count`` of the ``workers`` a batch for ``store_config`` will ask for."""
        self.close()
        self.store_config = store_config
        self.worker_store = _worker_store(store_config, workers)
        self.workers = [Worker(self.worker_store) for _ in range(min(count, workers))]

    def take(self, store_config: StoreConfig, workers: int, needed: int) -> list[Worker]:
        """Up to ``needed`` of them if they were started for this store and as many ``workers`` (which decides
        who stores the PNGs: :func:`step_stores`); the rest are stopped."""
        started, self.workers = self.workers, []
        fits = store_config == self.store_config and _worker_store(store_config, workers) == self.worker_store
        taken = started[:needed] if fits else []
        self._stop(started[len(taken) :])
        return taken

    def close(self) -> None:
        """Stop the workers no batch took (they are idle: nothing of theirs is stored)."""
        started, self.workers = self.workers, []
        self._stop(started)

    def _stop(self, workers: list[Worker]) -> None:
        if workers and self.store_config is not None:
            stop_processes([worker.process for worker in workers], self.store_config)


def _worker_store(store_config: StoreConfig, workers: int) -> StoreConfig | None:
    """What ``workers`` workers are told: where to store, or None to hand the PNGs back (:func:`step_stores`)."""
    return None if step_stores(store_config, workers) else store_config


def render_many(
    keys: Iterable[str],
    store_config: StoreConfig,
    workers: int | None = None,
    *,
    max_attempts: int = 2,
    should_stop: Callable[[], bool] | None = None,
    heartbeat_s: float | None = None,
    started: StartedWorkers | None = None,
    on_stop: Callable[[dict[str, str]], None] | None = None,
) -> Iterator[Outcome | None]:
    """Render and store every key across ``workers`` processes, yielding each outcome once its PNG is
    stored (in completion order).

    A spec whose worker dies is retried by a new worker, up to ``max_attempts`` times in all; a spec
    that raises is reported as a :class:`RenderFailure` and does not stop the others.
    ``should_stop`` is asked between outcomes and while waiting: when it says so, the workers are
    stopped at once. With ``heartbeat_s``, ``None`` is yielded whenever that long passes without an
    outcome (so the consumer can record what it buffers). Closing the generator stops the workers.
    ``started``: workers started ahead of the batch, used first when they fit it.
    ``on_stop``: when the batch is stopped, called once its workers are gone with the keys whose PNGs
    are stored but were not yielded (a worker reports a whole chunk at once; a consumer may stop in the
    middle of one) and where each PNG is, so that the caller can record every PNG the batch stored.
    """
    pending = list(dict.fromkeys(keys))
    if not pending:
        return
    # A Dagster step's process holds ~300k long-lived objects: a full garbage collection walks
    # them all with the GIL held, and meanwhile no worker gets its next chunk. Frozen, they are
    # skipped; what the batch itself allocates is still collected.
    gc.freeze()
    try:
        batch = _Batch(store_config, max(1, workers or default_workers()), max_attempts, on_stop)
        yield from batch.run(pending, should_stop, heartbeat_s, started or StartedWorkers())
    finally:
        gc.unfreeze()


class _Batch:
    """One :func:`render_many` call: the chunks left, the workers, and the attempts per key."""

    def __init__(
        self,
        store_config: StoreConfig,
        workers: int,
        max_attempts: int,
        on_stop: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self.store_config = store_config
        self.workers = workers
        self.max_attempts = max_attempts
        self.on_stop = on_stop
        self.worker_store = _worker_store(store_config, workers)
        self.step_store: FractalStore | None = None
        self.chunks: deque[list[str]] = deque()
        self.attempts: dict[str, int] = {}
        self.busy: list[Worker] = []
        #: A report received and not yet all yielded: a consumer that stops mid-report leaves the rest here.
        self.unyielded: deque[tuple[str, Outcome | RenderedSpec]] = deque()

    def run(
        self,
        keys: list[str],
        should_stop: Callable[[], bool] | None,
        heartbeat_s: float | None,
        started: StartedWorkers,
    ) -> Iterator[Outcome | None]:
        stopping = should_stop or (lambda: False)
        if stopping():  # never start workers for a batch asked to stop
            started.close()
            return
        self.chunks.extend(chunked(keys, self.workers))
        try:
            needed = min(self.workers, len(self.chunks))
            taken = started.take(self.store_config, self.workers, needed)
            for worker in taken + [Worker(self.worker_store) for _ in range(needed - len(taken))]:
                self._hand_out(worker)
            while self.busy:
                ready, _, _ = select.select([worker.reports for worker in self.busy], [], [], heartbeat_s or 0.5)
                if not ready and heartbeat_s is not None:
                    yield None
                for worker in [worker for worker in self.busy if worker.reports in ready]:
                    yield from self._take_report(worker)
                if stopping():
                    break
        except BaseException:  # interrupted, or the consumer closed the generator: stop now
            self._stop_all()
            raise
        if self.busy:  # asked to stop: the workers may be mid-render
            self._stop_all()

    def _hand_out(self, worker: Worker) -> None:
        """Fill ``worker`` up to :data:`CHUNKS_IN_FLIGHT` chunks, or let it exit once it has none left to do."""
        if worker in self.busy:
            self.busy.remove(worker)
        if not self.chunks and not worker.chunks:
            worker.finish()
            _running.discard(worker.process)  # it exits by itself; the batch does not wait for it
            return
        self.busy.append(worker)
        # A worker that died cannot take it: its pipe then reads as closed, and its chunks are retried.
        with contextlib.suppress(BrokenPipeError):
            while self.chunks and worker.chunks < CHUNKS_IN_FLIGHT:
                worker.give(self.chunks.popleft())

    def _take_report(self, worker: Worker) -> Iterator[Outcome]:
        try:
            reports = worker.receive()
        except EOFError:
            yield from self._retry_after_death(worker)
            return
        self._hand_out(worker)  # its next chunk first: it renders while this process records
        self.unyielded.extend(reports)
        while self.unyielded:
            key, outcome = self.unyielded.popleft()
            yield self._store_here(key, outcome) if isinstance(outcome, RenderedSpec) else outcome

    def _store_here(self, key: str, rendered: RenderedSpec) -> Outcome:
        """Store a PNG a worker handed back, as the worker would have."""
        try:
            self.step_store = self.step_store or open_store(self.store_config)
            stored_by = this_process()
            return store_rendered(rendered, self.step_store, rendered.worker, rendered.worker_started_at, stored_by)
        except Exception as exc:  # as in a worker: reported, the batch goes on
            return failure(key, exc)

    def _retry_after_death(self, worker: Worker) -> Iterator[Outcome]:
        """A worker died: its unreported keys go to a new worker, or fail once they used every attempt."""
        self.busy.remove(worker)
        stop_processes([worker.process], self.store_config)  # reaps it, removes what it half-wrote
        retry = []
        for key in worker.keys:
            self.attempts[key] = self.attempts.get(key, 0) + 1
            if self.attempts[key] < self.max_attempts:
                retry.append(key)
            else:
                yield RenderFailure(key, "worker process died while rendering (killed or out of memory)")
        if retry:
            self.chunks.appendleft(retry)
        if self.chunks:
            self._hand_out(Worker(self.worker_store))

    def _stop_all(self) -> None:
        workers, self.busy = self.busy, []
        stop_processes([worker.process for worker in workers], self.store_config)
        if self.on_stop is None:
            return
        # Stored and not yielded: the rest of a report the consumer stopped in, and (where the workers
        # store) the PNGs of chunks not yet reported. A PNG handed back to be stored here never was.
        stored = {key: outcome.location for key, outcome in self.unyielded if isinstance(outcome, RenderResult)}
        unreported = [key for worker in workers for key in worker.keys]
        if unreported and self.worker_store is not None:
            stored.update(stored_locations(self.worker_store, unreported))
        if stored:
            self.on_stop(stored)


def stored_locations(store_config: StoreConfig, keys: list[str]) -> dict[str, str]:
    """Where the PNGs of those ``keys`` that are stored are; empty if the store cannot be asked."""
    try:
        store = open_store(store_config)
        return {key: store.location(image_key(key)) for key in keys if store.exists(image_key(key), quick=True)}
    except Exception:  # the store went away: what it holds cannot be known, so nothing is claimed
        return {}
