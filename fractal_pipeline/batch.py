"""``fractal-pipeline run`` without the terminal: its options, checked before anything is recorded, and
the execution of its Dagster runs so that Ctrl-C and SIGTERM stop them cleanly.

The CLI draws progress and prints; everything it decides comes from here and
from :func:`fractal_pipeline.partitions.plan_batch`.
"""

from __future__ import annotations

import multiprocessing
import shlex
import signal
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType
from typing import TYPE_CHECKING, Any

from fractal_pipeline.fractals import (
    DEFAULT_PALETTE,
    DEFAULT_SIZE,
    KINDS,
    PALETTES,
    FractalSpec,
    InvalidSpec,
    check_random_count,
)
from fractal_pipeline.rendering import MAX_WORKERS_PER_CPU, max_workers, stop_processes

if TYPE_CHECKING:
    import dagster as dg

BACKENDS = ("local", "lambda")
#: After a second interrupt, how long the run's thread may take to record its end before the process exits.
STOP_AT_ONCE_WAIT_S = 2.0
#: ``--seed`` values a run records (Dagster's metadata and config hold 64-bit integers).
MAX_SEED = 2**63 - 1


class UsageError(ValueError):
    """A bad option: the message names it and the allowed values."""


@dataclass(frozen=True)
class RunOptions:
    """What ``fractal-pipeline run`` was asked for."""

    count: int = 12
    seed: int | None = None
    kinds: tuple[str, ...] | None = None
    size: int = DEFAULT_SIZE
    palette: str = DEFAULT_PALETTE  # or "random": a palette per spec
    workers: int = 0
    collage: bool = True
    backend: str = "local"
    region: str | None = None

    @property
    def spec_palette(self) -> str | None:
        """The palette of every spec, or None for a random one per spec."""
        return None if self.palette == "random" else self.palette

    def checked(self) -> tuple[RunOptions, list[str]]:
        """These options, validated (:class:`UsageError` naming the option) and with ``--workers`` capped;
        and one note for each value that was changed."""
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend: unknown backend {self.backend!r}; use {' or '.join(BACKENDS)}")
        if self.palette != "random" and self.palette not in PALETTES:
            raise UsageError(f"--palette: {self.palette!r} is not a palette; use {', '.join(PALETTES)} or random")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"--seed: {self.seed} is out of range: allowed 0..{MAX_SEED}")
        try:
            FractalSpec(self.kinds[0] if self.kinds else "dragon", 0, self.size, self.spec_palette or DEFAULT_PALETTE)
            check_random_count(self.count, self.kinds, self.spec_palette)
        except InvalidSpec as exc:
            raise UsageError(f"--{exc}") from None
        most = max_workers()
        if self.workers < 0:
            raise UsageError(f"--workers: {self.workers} is out of range: allowed 0 (one per CPU) to {most}")
        notes = []
        options = self
        if self.workers > most:
            notes.append(f"--workers: {self.workers} is more than {MAX_WORKERS_PER_CPU} per CPU; using {most}")
            options = replace(self, workers=most)
        return options, notes

    def command(self, seed: int) -> str:
        """The ``fractal-pipeline run`` command that asks for the same specs again (with ``seed``)."""
        words = ["fractal-pipeline", "run", "--count", str(self.count), "--seed", str(seed)]
        if self.kinds:
            words += ["--kinds", ",".join(self.kinds)]
        if self.size != DEFAULT_SIZE:
            words += ["--size", str(self.size)]
        if self.palette != DEFAULT_PALETTE:
            words += ["--palette", self.palette]
        if self.workers:
            words += ["--workers", str(self.workers)]
        if not self.collage:
            words.append("--no-collage")
        if self.backend != "local":
            words += ["--backend", self.backend]
        if self.region:
            words += ["--region", self.region]
        return shlex.join(words)


def parse_kinds(value: str | None) -> tuple[str, ...] | None:
    """``--kinds a,b``: the kinds named (each checked), or None for all."""
    if value is None:
        return None
    kinds = tuple(dict.fromkeys(kind.strip() for kind in value.split(",") if kind.strip()))
    if not kinds:
        raise UsageError(f"--kinds: {value!r} names no kind; name at least one (see `fractal-pipeline kinds`)")
    for kind in kinds:
        if kind not in KINDS:
            try:
                FractalSpec(kind, 0)
            except InvalidSpec as exc:
                raise UsageError(f"--kinds: {str(exc).split(': ', 1)[1]}") from None
    return kinds


# --------------------------------------------------------------------------- interrupts


class StopNow(BaseException):
    """Raised by :func:`execute` after a second Ctrl-C or SIGTERM stopped its run at once (a BaseException, so
    that no ``except Exception`` keeps it)."""


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM while ``fractal-pipeline run`` works.

    The first asks the current run to stop: :func:`execute` marks it CANCELING,
    its render loop stops and Dagster records it CANCELED. After a second,
    :func:`execute` stops the run at once and raises :class:`StopNow`. Both signals are handled explicitly,
    also when the process started with SIGINT ignored (a shell's background
    job), so ``kill -INT`` is never lost.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received = 0
        self.name = ""
        #: A run is executing (:func:`execute`): only then does a second signal stop at once; between
        #: runs the command is reporting what is stored, which takes a moment.
        self.running = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received > 0

    def __enter__(self) -> Interrupts:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only counted: an exception raised from here would land in whatever the main thread runs at that
        # moment (a database driver closing a connection, multiprocessing starting a worker) and leave it
        # half done. :func:`execute` looks at the count between its waits instead.
        self.received += 1
        self.name = signal.Signals(signum).name

    @property
    def stop_now(self) -> bool:
        """A second interrupt came while a run executes: stop at once."""
        return self.received > 1 and self.running


def execute(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    interrupts: Interrupts,
    poll: Callable[[str], None] = lambda run_id: None,
    **kwargs: Any,
) -> dg.ExecuteInProcessResult:
    """``job.execute_in_process`` in a thread, with ``poll(run_id)`` called about 4 times a second meanwhile.

    Once an interrupt is requested, the run is marked CANCELING: its steps stop
    (``fractal_images`` checks its run's status as it renders) and Dagster ends
    it CANCELED. The execution runs in a thread so that the signal handlers
    stay this module's: in the main thread, Dagster would install its own.
    """

    run_id = str(uuid.uuid4())
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = job.execute_in_process(instance=instance, run_id=run_id, raise_on_error=False, **kwargs)
        except BaseException as exc:  # raised again in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"run-{run_id[:8]}", daemon=True)
    thread.start()
    marked = False
    interrupts.running = True
    try:
        while thread.is_alive():
            thread.join(0.25)
            if interrupts.stop_now:
                stop_at_once(instance, run_id, thread)
                raise StopNow()
            if interrupts.requested and not marked:
                run = instance.get_run_by_id(run_id)
                if run is not None and not run.is_finished:
                    instance.report_run_canceling(run, message=f"{interrupts.name} received: stopping the run")
                marked = run is not None
            poll(run_id)
    finally:
        interrupts.running = False
    if "error" in outcome:
        raise outcome["error"]
    result: dg.ExecuteInProcessResult = outcome["result"]
    return result


def stop_at_once(instance: dg.DagsterInstance, run_id: str | None, thread: threading.Thread | None = None) -> None:
    """After a second interrupt: stop the render workers now, and see the run marked CANCELED.

    The run is CANCELING since the first interrupt: with its workers gone, its
    step fails and Dagster ends it CANCELED, which its ``thread`` is given
    :data:`STOP_AT_ONCE_WAIT_S` to record. A run still not finished then is
    marked CANCELED here. Any PNG a worker was writing is removed (never half-written).
    """
    import dagster as dg

    from fractal_pipeline.store import store_config_from_env

    stop_processes(multiprocessing.active_children(), store_config_from_env())
    if run_id is None:
        return
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished and run.status != dg.DagsterRunStatus.CANCELING:
        instance.report_run_canceling(run, message="Stopping at once after a second interrupt")
    if thread is not None:
        thread.join(STOP_AT_ONCE_WAIT_S)
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_canceled(run, message="Stopped at once by a second interrupt")
