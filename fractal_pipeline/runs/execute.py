"""Executing a Dagster run in this process so that Ctrl-C and SIGTERM stop it cleanly.

The first signal marks the run CANCELING (the step stops its workers and the run ends CANCELED); a second
stops the workers at once and marks the run CANCELED.
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from fractal_pipeline.inspect.logs import user_error
from fractal_pipeline.workers.pool import StartedWorkers, default_workers, running_workers, stop_processes

if TYPE_CHECKING:
    import dagster as dg

    from fractal_pipeline.store import StoreConfig

#: After a second interrupt, how long the run's thread may take to record its end before the process exits.
STOP_AT_ONCE_WAIT_S = 2.0


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

    stop_processes(running_workers(), store_config_from_env())
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


def start_workers_early(
    defs: dg.Definitions, backend: str, store_config: StoreConfig, workers: int, renders: int
) -> StartedWorkers:
    """Start the local render workers of an images run that renders ``renders`` partitions now, so that they
    start up while Dagster creates the run; they wait in the definitions' ``started_workers`` resource, which
    is returned: close it after the run. None start for the Lambda backend."""
    started = (defs.resources or {}).get("started_workers")
    if not isinstance(started, StartedWorkers):
        raise TypeError("the definitions have no started_workers resource (defs.deployment.resources_for)")
    if backend == "local":
        started.start(store_config, workers or default_workers(), renders)
    return started


def run_failure_message(result: Any) -> str:
    """One line: the user-facing message of the first failed step of an in-process run."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            return user_error(event.event_specific_data.error)[1]
    return "run failed"
