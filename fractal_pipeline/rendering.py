"""Render specs and store their PNGs, in parallel worker processes.

This module runs inside worker processes (and Lambda), so it imports only the
core and the store: no Dagster. The Dagster step drives :func:`render_many`
and turns each :class:`RenderResult` into a materialization as it arrives.
"""

from __future__ import annotations

import base64
import functools
import gc
import multiprocessing
import multiprocessing.util
import os
import queue
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from PIL import Image

from fractal_pipeline.fractals import (
    FractalSpec,
    InvalidSpec,
    encode_png,
    indexed_png,
    render_with_preview,
    tune_allocator,
)
from fractal_pipeline.store import FractalStore, LocalStore, StoreConfig, image_key, open_store

THUMBNAIL_PX = 128


def png_markdown(alt: str, png: bytes) -> str:
    """Markdown showing ``png`` inline (a data: URI): how thumbnails appear in Dagster metadata."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


@dataclass(frozen=True)
class RenderResult:
    """What rendering one spec did: where the PNG went, how long each phase took."""

    key: str
    object_key: str
    location: str
    segments: int
    png_bytes: int
    worker: str
    started_at: float
    rendered_at: float
    encoded_at: float
    stored_at: float
    thumbnail_png: bytes = field(repr=False)
    #: When the worker process that rendered this started (pool workers) or began this
    #: call; the ``start`` of its timeline in ``fractal-pipeline events``.
    worker_started_at: float = 0.0
    #: When the store call began: a PNG can wait after encoding (for the rest of its chunk,
    #: or for a store thread), and ``put_ms`` is the store's own time. 0: at ``encoded_at``.
    put_started_at: float = 0.0
    #: The process that stored the PNG when it is not ``worker``: the step's, which writes the
    #: local PNGs of workers that leave it a CPU (see :func:`_work`). "": the worker itself.
    stored_by: str = ""

    @property
    def render_ms(self) -> float:
        return (self.rendered_at - self.started_at) * 1000

    @property
    def encode_ms(self) -> float:
        return (self.encoded_at - self.rendered_at) * 1000

    @property
    def put_ms(self) -> float:
        return (self.stored_at - (self.put_started_at or self.encoded_at)) * 1000

    def thumbnail_markdown(self) -> str:
        """Markdown with the thumbnail inline (a data: URI), for Dagster metadata."""
        return png_markdown(self.key, self.thumbnail_png)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe fields (the thumbnail as base64), e.g. for dagster-pipes."""
        data = asdict(self)
        data["thumbnail_png"] = base64.b64encode(self.thumbnail_png).decode("ascii")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RenderResult:
        fields = dict(data)
        fields["thumbnail_png"] = base64.b64decode(fields["thumbnail_png"])
        return cls(**fields)


@dataclass(frozen=True)
class RenderFailure:
    """A spec that could not be rendered or stored, with the one-line reason.

    ``transient`` marks failures worth retrying later (the store was
    unreachable), as opposed to a spec that fails every time.
    """

    key: str
    error: str
    transient: bool = False


#: Exception class names (anywhere in the MRO) that mean "could not reach the store".
TRANSIENT_ERRORS = frozenset(
    {"EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionError"}
)


def is_transient(exc: BaseException) -> bool:
    """True for network/storage outages (worth a retry), false for bad specs and bugs."""
    return bool(getattr(exc, "transient", False)) or bool(
        {cls.__name__ for cls in type(exc).__mro__} & TRANSIENT_ERRORS
    )


@dataclass(frozen=True)
class RenderedSpec:
    """A spec rendered and encoded, not yet stored: what :func:`store_rendered` takes.

    A worker hands it to the step's process when that process stores the PNGs (see
    :func:`_work`), which then also encodes the thumbnail: pickling the 128 px image
    costs the worker ~20 us, encoding it ~0.12 ms.
    """

    spec: FractalSpec
    png: bytes = field(repr=False)
    thumbnail: Image.Image = field(repr=False)
    started_at: float
    rendered_at: float
    encoded_at: float
    #: The process that rendered it and when that started ("" and 0: the one that stores it).
    worker: str = ""
    worker_started_at: float = 0.0


def render_spec(key: str, worker: str = "", worker_started_at: float = 0.0) -> RenderedSpec:
    """Render and encode the spec with this key (and its thumbnail), timing each phase.

    ``worker`` and ``worker_started_at`` name the rendering process when another stores the PNG.
    """
    spec = FractalSpec.from_key(key)
    started = time.time()
    image, thumbnail = render_with_preview(spec, THUMBNAIL_PX)
    rendered = time.time()
    data = encode_png(image, spec)
    encoded = time.time()
    return RenderedSpec(spec, data, thumbnail, started, rendered, encoded, worker, worker_started_at)


def store_rendered(
    rendered: RenderedSpec, store: FractalStore, worker: str | None = None, worker_started_at: float | None = None
) -> RenderResult:
    """Store a rendered spec's PNG and report where it went and the timings.

    ``worker`` and ``worker_started_at`` name the process that rendered it and when that
    started; by default the ones the spec carries, else this process and the render's start.
    """
    object_key = image_key(rendered.spec.key)
    put_started = time.time()
    location = store.put(object_key, rendered.png)
    stored = time.time()
    if worker_started_at is None:
        worker_started_at = rendered.worker_started_at or rendered.started_at
    here = f"pid-{os.getpid()}"
    return RenderResult(
        key=rendered.spec.key,
        object_key=object_key,
        location=location,
        segments=rendered.spec.segments,
        png_bytes=len(rendered.png),
        worker=worker or rendered.worker or here,
        started_at=rendered.started_at,
        rendered_at=rendered.rendered_at,
        encoded_at=rendered.encoded_at,
        stored_at=stored,
        thumbnail_png=indexed_png(rendered.thumbnail),
        worker_started_at=worker_started_at,
        put_started_at=put_started,
        stored_by=here if rendered.worker not in ("", here) and worker is None else "",
    )


def render_and_store(
    key: str, store: FractalStore, worker: str | None = None, worker_started_at: float | None = None
) -> RenderResult:
    """Render the spec with this key, store its PNG, and report the timings.

    ``worker_started_at`` is when the calling worker started (default: now).
    """
    return store_rendered(render_spec(key), store, worker, worker_started_at)


def _failure(key: str, exc: BaseException) -> RenderFailure:
    return RenderFailure(key, f"{type(exc).__name__}: {exc}", transient=is_transient(exc))


_worker_store: FractalStore | None = None
_worker_started_at: float | None = None
#: Set in a worker whose PNGs the step's own process stores (see :func:`_work`).
_step_stores: bool = False


def process_started_at() -> float:
    """Wall-clock time at which this process started (from ``/proc`` on Linux; elsewhere: now).

    A pool worker reports it as its ``worker_started_at``, so its timeline shows the
    spawn and import time before its first render.
    """
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
            up_s = float(uptime.read().split()[0])
        return time.time() - (up_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


#: Threads of a worker that upload finished PNGs to a remote store (S3) while it renders the next
#: spec: a PUT waits tens of milliseconds on the network, a 1024 px render takes ~15 ms.
STORE_THREADS = 4
_worker_io: ThreadPoolExecutor | None = None


def _init_worker(config: StoreConfig, ready: Any, step_stores: bool = False) -> None:
    global _worker_store, _worker_started_at, _worker_io, _step_stores
    # Ctrl-C reaches the whole process group: the parent decides when workers stop
    # (and stops them promptly), so a worker must not swallow it mid-task and carry on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_allocator()  # a worker renders many specs: reuse freed buffers (see fractals.allocator)
    _worker_started_at = process_started_at()
    _step_stores = step_stores
    if not step_stores:
        _worker_store = open_store(config)
        if not isinstance(_worker_store, LocalStore):
            _worker_io = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store")
    ready.set()


def _store_in_worker(rendered: RenderedSpec) -> RenderResult:
    assert _worker_store is not None, "worker not initialised"
    return store_rendered(rendered, _worker_store)  # the spec names its worker and when that started


#: What a worker reports for one spec (see :func:`_work`).
WorkOutcome = RenderResult | RenderedSpec | RenderFailure


def _work(keys: list[str]) -> list[WorkOutcome]:
    """Render ``keys`` and store their PNGs, or hand them back for the step's process to store.

    Returns when every PNG of the chunk is stored (or failed), so its results
    all describe stored objects; or, in a worker whose step stores the PNGs (a
    local store with a CPU to spare: :func:`render_many`), when the chunk is
    rendered, as :class:`RenderedSpec` s.

    With a remote store, a PNG is uploaded by a store thread while the next spec
    renders. With a local one the chunk is rendered first and its PNGs written
    one after another at the end: a write just after a 1024 px render costs
    0.2-0.6 ms more than one just after another write (the render leaves the CPU's
    caches cold for the kernel's file creation), 2-5 % of the chunk's time,
    measured A/B. A thread would not help there: a local write is ~0.1-1 ms of
    CPU, less than a thread costs the render in contention for the GIL.
    """
    worker = f"pid-{os.getpid()}"
    pending: list[Future[RenderResult] | RenderedSpec | RenderFailure] = []
    for key in keys:
        try:
            rendered = render_spec(key, worker, _worker_started_at or 0.0)
            pending.append(rendered if _worker_io is None else _worker_io.submit(_store_in_worker, rendered))
        except Exception as exc:  # one bad spec must not stop the others
            pending.append(_failure(key, exc))
    if _step_stores:
        return [item for item in pending if not isinstance(item, Future)]
    outcomes: list[WorkOutcome] = []
    for key, item in zip(keys, pending, strict=True):
        try:
            if isinstance(item, Future):
                outcomes.append(item.result())
            elif isinstance(item, RenderedSpec):
                outcomes.append(_store_in_worker(item))
            else:
                outcomes.append(item)
        except Exception as exc:
            outcomes.append(_failure(key, exc))
    return outcomes


def _store_here(
    outcomes: list[WorkOutcome], store: Callable[[], FractalStore]
) -> Iterator[RenderResult | RenderFailure]:
    """A worker's outcomes, with the PNGs it handed back stored by this process."""
    for outcome in outcomes:
        if not isinstance(outcome, RenderedSpec):
            yield outcome
            continue
        try:
            yield store_rendered(outcome, store())
        except Exception as exc:  # as in a worker: reported, the batch goes on
            yield _failure(outcome.spec.key, exc)


def _terminate_workers(executor: ProcessPoolExecutor, store_config: StoreConfig, grace_s: float = 2.0) -> None:
    """Stop the worker processes within ``grace_s`` (then kill them) and remove any half-written
    temp file they left in a local store.

    The executor is not shut down here: an interrupt can arrive while ``concurrent.futures`` holds
    one of its locks, and its management thread notices dead workers and cleans up by itself.
    """
    stop_processes(_worker_processes(executor), store_config, grace_s)


def stop_processes(processes: list[Any], store_config: StoreConfig, grace_s: float = 2.0) -> None:
    """Terminate render worker ``processes`` (multiprocessing processes), kill those still alive after
    ``grace_s``, and remove the temp files they left half-written in a local store."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)
    _remove_partials(store_config, {process.pid for process in processes if process.pid is not None})


def _worker_processes(executor: ProcessPoolExecutor) -> list[Any]:
    """The executor's worker processes (``concurrent.futures`` keeps them in a private dict)."""
    return list(dict(getattr(executor, "_processes", None) or {}).values())


def _remove_partials(store_config: StoreConfig, pids: set[int]) -> None:
    """Remove the temp files that writers with these (dead) pids left in a local store."""
    store = open_store(store_config)
    if isinstance(store, LocalStore):
        store.remove_partials(pids)


#: Thread pools a worker does not need: the core makes no BLAS calls, and numpy's OpenBLAS starting a
#: thread per CPU costs each spawned worker ~80 ms of CPU (0.24 -> 0.16 s to start, measured).
WORKER_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextmanager
def _spawning_workers() -> Iterator[None]:
    """Start spawn workers without re-running the parent's ``__main__`` and without BLAS threads.

    A spawned worker normally re-imports the parent's main module: under the
    ``dagster`` or ``fractal-pipeline`` console scripts that is the whole
    Dagster CLI, seconds of start-up per worker for nothing. Workers only
    need this module, so while they are started ``__main__`` is a bare stub.
    They inherit :data:`WORKER_ENVIRONMENT` (where the user has not set
    those variables); this process's own environment is restored after.
    """
    real_main = sys.modules["__main__"]
    stub = types.ModuleType("__main__")
    stub.__spec__ = None
    sys.modules["__main__"] = stub
    added = [name for name in WORKER_ENVIRONMENT if name not in os.environ]
    os.environ.update({name: WORKER_ENVIRONMENT[name] for name in added})
    try:
        yield
    finally:
        sys.modules["__main__"] = real_main
        for name in added:
            os.environ.pop(name, None)


def _submit_uninterrupted(
    executor: ProcessPoolExecutor, chunks: list[list[str]]
) -> dict[Future[list[WorkOutcome]], list[str]]:
    """Hand ``chunks`` to the workers (which start on submit) from a helper thread, and wait for it.

    An interrupt is raised by a signal handler in the main thread, between any two bytecodes: landing
    inside ``ProcessPoolExecutor.submit``, after a worker was started but before the executor recorded
    it, it would leave a worker that nothing stops, and that multiprocessing then waits for at exit,
    for ever. Signal handlers never run in other threads, so the submits always complete; an
    interrupt that comes meanwhile is raised once they have, and then stops every worker.
    """
    futures: dict[Future[list[WorkOutcome]], list[str]] = {}

    def submit_all() -> None:
        with _spawning_workers():
            for chunk in chunks:
                futures[executor.submit(_work, chunk)] = chunk

    helper = threading.Thread(target=submit_all, name="render-submit")
    helper.start()
    interrupt: BaseException | None = None
    while helper.is_alive():
        try:
            helper.join()
        except BaseException as exc:  # held until the workers are all recorded
            interrupt = exc
    if interrupt is not None:
        raise interrupt
    return futures


#: Specs the step's own process may render while its workers start: small enough (~50 ms at most)
#: not to hold up recording what the workers render.
PARENT_MAX_SEGMENTS = 1 << 16
PARENT_MAX_SIZE = 1024


def _small(key: str) -> bool:
    try:
        spec = FractalSpec.from_key(key)
    except InvalidSpec:
        return False  # a worker reports it, as for every bad key
    return spec.segments <= PARENT_MAX_SEGMENTS and spec.size <= PARENT_MAX_SIZE


def _render_while_workers_start(
    futures: dict[Future[list[WorkOutcome]], list[str]],
    ready: Any,
    store: Callable[[], FractalStore],
    should_stop: Callable[[], bool] | None,
) -> Iterator[RenderResult | RenderFailure]:
    """Render chunks of small specs from the end of the queue in this process until a worker is ready,
    storing their PNGs in ``store()`` (the store this process writes the batch's PNGs to).

    A spawned worker takes ~0.2 s to start (a fresh interpreter importing numpy
    and Pillow), time in which a batch would otherwise render nothing. Each chunk
    taken here is one the workers have not been handed yet (its future is
    cancelled and removed from ``futures``); the workers start at the front.
    Only used when there are fewer workers than CPUs: when the workers' start-up
    takes every core, renders here only slow it down (and run ~50 % slower than
    a worker's, in a process whose allocator is not tuned for them); an A/B of
    2-worker runs on 2 CPUs measured ~3 % less wall without them.
    """
    for future in reversed(list(futures)):
        if ready.is_set() or (should_stop is not None and should_stop()):
            return
        keys = futures[future]
        if not all(_small(key) for key in keys):
            continue
        if not future.cancel():  # already handed to a worker: the queue is all but taken
            return
        del futures[future]
        for key in keys:
            try:
                yield render_and_store(key, store())
            except Exception as exc:  # as in a worker: reported, the batch goes on
                yield _failure(key, exc)


#: Specs per task handed to a worker: the step handles one message per chunk, with S3 the
#: worker's store threads overlap a chunk's uploads with its renders, and with a local store the
#: chunk's PNGs are written together after its renders (see _work). 8 measured 3.9 % less wall
#: than 4 with 1 worker and ~1 % with 2 (A/B, 6 pairs each, 500 specs at 1024 px). Small, so
#: results still arrive within ~0.1 s of being stored and the last chunks spread evenly over the
#: workers; a worker holds at most this many encoded PNGs.
CHUNK_MAX = 8


def chunked(keys: list[str], workers: int) -> list[list[str]]:
    """``keys`` in chunks of up to :data:`CHUNK_MAX`, at least ~4 chunks per worker; the last few
    specs one per chunk, so that the workers run out of work at about the same time."""
    size = max(1, min(CHUNK_MAX, len(keys) // (4 * max(1, workers))))
    singles = len(keys) - min(len(keys), 2 * (size - 1) * max(1, workers))
    chunks = [keys[start : min(start + size, singles)] for start in range(0, singles, size)]
    return chunks + [[key] for key in keys[singles:]]


def default_workers() -> int:
    """Worker processes to use: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: More render workers than this per CPU only compete for the CPUs (and each costs a process start).
MAX_WORKERS_PER_CPU = 4


def max_workers() -> int:
    """The most worker processes a batch may ask for: :data:`MAX_WORKERS_PER_CPU` per CPU."""
    return MAX_WORKERS_PER_CPU * default_workers()


def render_many(
    keys: Iterable[str],
    store_config: StoreConfig,
    workers: int | None = None,
    *,
    max_attempts: int = 2,
    should_stop: Callable[[], bool] | None = None,
    heartbeat_s: float | None = None,
) -> Iterator[RenderResult | RenderFailure | None]:
    """Render and store every key across ``workers`` processes, yielding each
    result once it is stored (in completion order).

    Workers take the keys in chunks (:func:`chunked`) and report a chunk when
    all its PNGs are stored. With a CPU they leave free, this process renders
    small specs while they start (:func:`_render_while_workers_start`) and,
    with a local store, writes the PNGs they hand back (:func:`_work`). Workers
    that :func:`workers_started_early` started for this batch are used instead
    of new ones. A spec whose worker dies (the pool breaks) is retried in a fresh pool up to
    ``max_attempts`` times; a spec that raises is reported as a
    :class:`RenderFailure` and does not stop the others. ``should_stop`` is
    polled between results: when it says so, pending work is cancelled and
    the workers are shut down. With ``heartbeat_s``, ``None`` is yielded
    whenever that long passes without a result (so the consumer can flush
    what it buffers); without it, only outcomes are yielded.
    """
    pending = list(dict.fromkeys(keys))
    workers = max(1, workers or default_workers())
    # A Dagster step's process holds ~300k long-lived objects: a full garbage collection walks
    # them all (~0.1 s with the GIL held), and meanwhile nothing feeds the workers their next
    # task. Frozen, they are skipped; what the batch itself allocates is still collected.
    gc.freeze()
    try:
        yield from _render_batches(pending, store_config, workers, max_attempts, should_stop, heartbeat_s)
    finally:
        gc.unfreeze()


@dataclass
class _Pool:
    """A pool of render workers and how it was set up."""

    executor: ProcessPoolExecutor
    ready: Any  # a multiprocessing Event, set by the first worker to be ready
    size: int
    store_config: StoreConfig
    #: Fewer workers than CPUs: the step's process renders while they start and, with a local
    #: store, writes their PNGs (a new file costs ~0.1-1 ms of kernel CPU that would otherwise
    #: stall a worker between renders).
    spare_cpu: bool
    stop_at_exit: Any

    def stop(self) -> None:
        """Stop the workers now (they may be busy) and clean up after them."""
        self.stop_at_exit.cancel()
        _terminate_workers(self.executor, self.store_config)
        self.executor.shutdown(wait=True, cancel_futures=True)


def _start_pool(store_config: StoreConfig, size: int) -> _Pool:
    """A pool of ``size`` spawned render workers; they start on the first ``submit``."""
    context = multiprocessing.get_context("spawn")
    spare_cpu = size < default_workers()
    ready = context.Event()
    step_stores = spare_cpu and not store_config.bucket
    executor = ProcessPoolExecutor(
        size, mp_context=context, initializer=_init_worker, initargs=(store_config, ready, step_stores)
    )
    # If this process exits without closing the generator (an interrupted Dagster step, itself a
    # multiprocessing child, can), stop the workers first: multiprocessing's exit hook runs
    # finalizers with an exit priority before it joins children, and would otherwise wait
    # forever for idle workers.
    stop_at_exit = multiprocessing.util.Finalize(
        executor, functools.partial(_terminate_workers, executor, store_config), exitpriority=10
    )
    if step_stores:
        _widen_result_pipe(executor)
    return _Pool(executor, ready, size, store_config, spare_cpu, stop_at_exit)


#: Capacity asked for the pipe that carries the workers' results: a chunk of 8 encoded 1024 px PNGs
#: and their thumbnails is ~0.5 MB, and through Linux's default 64 KB pipe a worker waits for this
#: process to read each 64 KB (~1.6 ms a chunk, more while Dagster holds the GIL) before it renders on.
RESULT_PIPE_BYTES = 1 << 20


def _widen_result_pipe(executor: ProcessPoolExecutor) -> None:
    """Let a worker hand over a chunk of PNGs without waiting for this process to read it (Linux)."""
    reader = getattr(getattr(executor, "_result_queue", None), "_reader", None)
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if reader is None or set_size is None:
        return
    with suppress(OSError):  # above /proc/sys/fs/pipe-max-size: the default capacity, as elsewhere
        fcntl.fcntl(reader.fileno(), set_size, RESULT_PIPE_BYTES)


_early_pool: _Pool | None = None
_early_lock = threading.Lock()


@contextmanager
def workers_started_early(store_config: StoreConfig, workers: int | None = None) -> Iterator[None]:
    """Start the render workers of the next batch now, for :func:`render_many` to use.

    A spawned worker takes ~0.2 s to start (a fresh interpreter importing numpy
    and Pillow). A caller that knows a batch is coming, as ``fractal-pipeline run``
    does before Dagster creates the images run, starts them here: they start
    while Dagster creates and starts the run, which keeps one CPU busy and leaves
    the others idle. The first :func:`render_many` in this process, in the
    block, that stores into the same place with at most ``workers`` workers
    (default: one per CPU) takes them over; if none does, they are stopped when
    the block ends.
    """
    global _early_pool
    pool = _start_pool(store_config, max(1, workers or default_workers()))
    with _spawning_workers():  # the workers start on submit: one no-op task each
        for _ in range(pool.size):
            pool.executor.submit(int)
    with _early_lock:
        previous, _early_pool = _early_pool, pool
    if previous is not None:
        previous.stop()
    try:
        yield
    finally:
        with _early_lock:
            unused = _early_pool is pool
            if unused:
                _early_pool = None
        if unused:
            pool.stop()


def _take_early_pool(store_config: StoreConfig, workers: int, size: int) -> _Pool | None:
    """The pool :func:`workers_started_early` started, if it stores into the same place and has
    between ``size`` (the batch's need) and ``workers`` (the most asked for) workers."""
    global _early_pool
    with _early_lock:
        pool = _early_pool
        if pool is None or not size <= pool.size <= workers:
            return None
        if pool.store_config.description != store_config.description:
            return None
        _early_pool = None
        return pool


def _render_batches(
    pending: list[str],
    store_config: StoreConfig,
    workers: int,
    max_attempts: int,
    should_stop: Callable[[], bool] | None,
    heartbeat_s: float | None,
) -> Iterator[RenderResult | RenderFailure | None]:
    attempts: dict[str, int] = {}
    pool = _take_early_pool(store_config, workers, min(workers, len(pending)))
    while pending:
        if should_stop is not None and should_stop():  # never start (or restart) workers for a batch asked to stop
            if pool is not None:
                pool.stop()
            return
        retry: list[str] = []
        size = min(workers, len(pending))
        pool = pool or _start_pool(store_config, size)
        executor = pool.executor
        # This process's store: opened on its first PNG.
        step_store = functools.cache(functools.partial(open_store, store_config))
        interrupted = broken = completed = stopped = False
        try:
            futures = _submit_uninterrupted(executor, chunked(pending, size))
            if pool.spare_cpu:
                yield from _render_while_workers_start(futures, pool.ready, step_store, should_stop)
            # Completed futures arrive on a queue (one callback each): waiting on the set of pending
            # futures instead costs O(pending) per result, quadratic for a batch of thousands.
            finished: queue.SimpleQueue[Future[list[WorkOutcome]]] = queue.SimpleQueue()
            for future in futures:
                future.add_done_callback(finished.put)
            for _ in range(len(futures)):
                while True:
                    try:
                        future = finished.get(timeout=heartbeat_s or 0.5)
                        break
                    except queue.Empty:
                        if heartbeat_s is not None:
                            yield None
                        if should_stop is not None and should_stop():
                            stopped = True
                            return
                chunk = futures[future]
                try:
                    outcomes = future.result()
                except BrokenProcessPool:
                    broken = True
                    for key in chunk:
                        attempts[key] = attempts.get(key, 0) + 1
                        if attempts[key] < max_attempts:
                            retry.append(key)
                        else:
                            yield RenderFailure(key, "worker process died while rendering (killed or out of memory)")
                except Exception as exc:  # the chunk never ran (e.g. could not be sent): its specs failed
                    for key in chunk:
                        yield _failure(key, exc)
                else:
                    yield from _store_here(outcomes, step_store)
                if should_stop is not None and should_stop():
                    stopped = True
                    return
            completed = True
        except BaseException:
            # Interrupted (run cancelled, Ctrl-C, the consumer stopped): stop now, not after the queue.
            interrupted = True
            _terminate_workers(executor, store_config)
            raise
        finally:
            pool.stop_at_exit.cancel()
            if stopped:  # asked to stop: the workers may be mid-render
                pool.stop()
            elif not interrupted:
                pids = {process.pid for process in _worker_processes(executor) if process.pid is not None}
                # With every chunk done, the workers only have to exit (~30 ms: an interpreter with numpy
                # and Pillow), which they do in the background instead of holding up the step's end.
                executor.shutdown(wait=broken or not completed, cancel_futures=True)
                if broken:  # a killed worker may have left a half-written temp file
                    _remove_partials(store_config, pids)
        pending, pool = retry, None
