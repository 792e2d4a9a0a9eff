"""A render worker process: ``python -m fractal_pipeline.workers.worker``.

It reads its store, then chunks of keys, from stdin; renders and stores each spec of a chunk, then
reports the chunk on its own pipe (stdout is sent to stderr, so a stray print cannot corrupt a
frame). Told to hand its PNGs back, it reports the rendered specs unstored, for the step to store.
It exits when stdin closes, which is also what happens when the step's process dies.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from fractal_pipeline.fractals import tune_allocator
from fractal_pipeline.store import FractalStore, LocalStore, StoreConfig, open_store
from fractal_pipeline.workers import wire
from fractal_pipeline.workers.results import (
    RenderedSpec,
    RenderFailure,
    RenderResult,
    failure,
    render_spec,
    store_rendered,
    this_process,
)

#: Threads of a worker that upload finished PNGs to a remote store (S3) while it renders the next
#: spec: a PUT waits tens of milliseconds on the network, longer than a 1024 px render.
STORE_THREADS = 4


def process_started_at() -> float:
    """Wall-clock time at which this process started (from ``/proc`` on Linux; elsewhere: now).

    A worker reports it as its ``worker_started_at``, so its timeline shows the start-up before
    its first render.
    """
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
            up_s = float(uptime.read().split()[0])
        return time.time() - (up_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


Report = RenderResult | RenderedSpec | RenderFailure


class _Chunk:
    """Renders a chunk of keys, stores each PNG (or keeps it for the step), then reports the chunk in one message."""

    def __init__(
        self, store: FractalStore | None, out: int, uploads: ThreadPoolExecutor | None, started_at: float
    ) -> None:
        self.store = store  # None: the step stores the PNGs
        self.out = out
        self.uploads = uploads
        self.worker = this_process()
        self.started_at = started_at

    def run(self, keys: list[str]) -> None:
        done: list[tuple[str, Report | Future[RenderResult]]] = []
        for key in keys:
            try:
                done.append((key, self._one(render_spec(key))))
            except Exception as exc:  # one bad spec must not stop the others
                done.append((key, failure(key, exc)))
        wire.send(self.out, [(key, _settled(key, outcome)) for key, outcome in done])

    def _one(self, rendered: RenderedSpec) -> Report | Future[RenderResult]:
        if self.store is None:
            return replace(rendered, worker=self.worker, worker_started_at=self.started_at)
        if self.uploads is None:
            return store_rendered(rendered, self.store, self.worker, self.started_at)
        # An upload waits tens of milliseconds on the network: it runs while the next spec renders.
        return self.uploads.submit(store_rendered, rendered, self.store, self.worker, self.started_at)


def _settled(key: str, outcome: Report | Future[RenderResult]) -> Report:
    """The outcome, once its upload (if any) has finished."""
    if not isinstance(outcome, Future):
        return outcome
    try:
        return outcome.result()
    except Exception as exc:
        return failure(key, exc)


def main() -> None:
    # Ctrl-C reaches the whole process group: the step decides when its workers stop (and stops
    # them promptly), so a worker must not die mid-write on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started_at = process_started_at()
    out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    tune_allocator()  # a worker renders many specs: reuse freed buffers (see fractals.allocator)
    source = sys.stdin.fileno()
    try:
        config: StoreConfig | None = wire.receive(source)  # None: hand the PNGs back to the step
    except EOFError:
        return
    store = None if config is None else open_store(config)
    remote = store is not None and not isinstance(store, LocalStore)
    uploads = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store") if remote else None
    chunk = _Chunk(store, out, uploads, started_at)
    while True:
        try:
            keys: list[str] = wire.receive(source)
            chunk.run(keys)
        except (EOFError, BrokenPipeError):  # the step closed our pipes, or is gone: nothing is left to do
            return


if __name__ == "__main__":
    main()
