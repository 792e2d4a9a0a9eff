"""A render worker process: ``python -m fractal_pipeline.workers.worker``.

It reads its store, then chunks of keys, from stdin; renders and stores each spec and reports
it at once on its own pipe (stdout is sent to stderr, so a stray print cannot corrupt a frame).
It exits when stdin closes, which is also what happens when the step's process dies.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

from fractal_pipeline.fractals import tune_allocator
from fractal_pipeline.store import FractalStore, LocalStore, StoreConfig, open_store
from fractal_pipeline.workers import wire
from fractal_pipeline.workers.results import RenderFailure, RenderResult, failure, render_spec, store_rendered

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


class _Chunk:
    """Renders one chunk of keys and reports each spec once its PNG is stored."""

    def __init__(self, store: FractalStore, out: int, uploads: ThreadPoolExecutor | None, started_at: float):
        self.store = store
        self.out = out
        self.uploads = uploads
        self.worker = f"pid-{os.getpid()}"
        self.started_at = started_at

    def run(self, keys: list[str]) -> None:
        pending: list[tuple[str, Future[RenderResult]]] = []
        for key in keys:
            try:
                rendered = render_spec(key)
                if self.uploads is None:
                    wire.send(self.out, (key, store_rendered(rendered, self.store, self.worker, self.started_at)))
                else:
                    upload = self.uploads.submit(store_rendered, rendered, self.store, self.worker, self.started_at)
                    pending.append((key, upload))
            except Exception as exc:  # one bad spec must not stop the others
                wire.send(self.out, (key, failure(key, exc)))
            pending = self._report_done(pending)
        for key, upload in pending:
            self._report(key, upload)

    def _report_done(self, pending: list[tuple[str, Future[RenderResult]]]) -> list[tuple[str, Future[RenderResult]]]:
        """Report the uploads that have finished; returns the others."""
        waiting = []
        for key, upload in pending:
            if upload.done():
                self._report(key, upload)
            else:
                waiting.append((key, upload))
        return waiting

    def _report(self, key: str, upload: Future[RenderResult]) -> None:
        outcome: RenderResult | RenderFailure
        try:
            outcome = upload.result()
        except Exception as exc:
            outcome = failure(key, exc)
        wire.send(self.out, (key, outcome))


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
        config: StoreConfig = wire.receive(source)
    except EOFError:
        return
    store = open_store(config)
    uploads = None if isinstance(store, LocalStore) else ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store")
    chunk = _Chunk(store, out, uploads, started_at)
    while True:
        try:
            keys: list[str] = wire.receive(source)
            chunk.run(keys)
        except (EOFError, BrokenPipeError):  # the step closed our pipes, or is gone: nothing is left to do
            return


if __name__ == "__main__":
    main()
