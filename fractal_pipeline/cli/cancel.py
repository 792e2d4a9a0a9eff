"""``cancel``: ask a run to stop, and wait until it has."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from fractal_pipeline.cli import console as term
from fractal_pipeline.cli.common import read_instance, resolve_run
from fractal_pipeline.cli.console import fail
from fractal_pipeline.defs import tags

if TYPE_CHECKING:
    import dagster as dg

#: How long ``--force`` lets a run that is still executing stop by itself before it marks it CANCELED.
FORCE_GRACE_S = 5.0


def cancel_command(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix of it (see `fractal-pipeline runs`)")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the run has stopped")] = True,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for the run to stop")] = 30.0,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help=f"For a run no launcher can reach: mark it CANCELING (a run executing in `fractal-pipeline run` "
            f"stops, as on Ctrl-C), then CANCELED if it has not stopped within {FORCE_GRACE_S:g} s",
        ),
    ] = False,
) -> None:
    """Stop a queued or running run as the UI's Terminate button does, and wait until it has stopped.

    A queued run is taken off the queue. A running one gets a termination request through the
    instance's run launcher (under `dagster dev` or `dagster job launch`: the code server running
    it), which stops its render workers; the run ends CANCELED with what it stored so far.
    """
    import dagster as dg

    instance, home = read_instance()
    full_id = resolve_run(instance, home, run_id)
    short = full_id[:8]

    def current() -> dg.DagsterRun:
        run = instance.get_run_by_id(full_id)
        assert run is not None, f"run {full_id} vanished"
        return run

    run = current()
    if run.is_finished:
        raise fail(f"run {short} already {run.status.value}; nothing to cancel")
    started = time.monotonic()
    if run.status == dg.DagsterRunStatus.NOT_STARTED:  # never launched: nothing to stop
        instance.report_run_canceled(run, message="Marked canceled by `fractal-pipeline cancel`.")
    elif force:
        _force(instance, run)
    elif (
        isinstance(instance.run_launcher, dg.DefaultRunLauncher)
        and run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
        and tags.GRPC_INFO not in run.tags
    ):
        raise fail(
            f"run {short} executes inside the process that started it (`fractal-pipeline run`, "
            "`dagster asset materialize`), not on a code server: press Ctrl-C there, "
            f"or `fractal-pipeline cancel {short} --force` (asks it to stop, then marks it canceled)"
        )
    else:
        _request_termination(instance, full_id)
    run = _wait_until_finished(instance, full_id, started + timeout - time.monotonic()) if wait else current()
    if run.is_finished:
        term.console.print(f"run {short} {run.status.value} after {time.monotonic() - started:.1f} s", highlight=False)
    elif wait:
        raise fail(
            f"run {short} still {run.status.value} {timeout:g} s after the termination request; "
            f"see `fractal-pipeline logs {short}` or wait longer with --timeout"
        )
    else:
        term.console.print(f"run {short} {run.status.value}: termination requested", highlight=False)


def _request_termination(instance: dg.DagsterInstance, run_id: str) -> None:
    """Ask the run coordinator to stop the run, as the UI's Terminate does; exits 1 if the request reached nothing."""
    reason = "the run launcher could not reach it"
    try:
        requested = instance.run_coordinator.cancel_run(run_id)
    except Exception as exc:
        requested = False
        reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    run = instance.get_run_by_id(run_id)
    if not requested and run is not None and not run.is_finished:
        raise fail(
            f"run {run_id[:8]}: the termination request did not reach it ({reason}); if the process "
            f"running it is gone, `fractal-pipeline cancel {run_id[:8]} --force` marks it canceled"
        )


def _force(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Mark ``run`` CANCELING, and CANCELED unless it stops by itself within :data:`FORCE_GRACE_S`.

    A run still executing watches for CANCELING and ends itself CANCELED with what it stored. Marked
    CANCELED at once instead, it would still end its step, and Dagster would then record it FAILURE.
    """
    import dagster as dg

    if run.status != dg.DagsterRunStatus.CANCELING:
        instance.report_run_canceling(run, message="Asked to stop by `fractal-pipeline cancel --force`.")
    if not _wait_until_finished(instance, run.run_id, FORCE_GRACE_S).is_finished:
        instance.report_run_canceled(run, message="Marked canceled by `fractal-pipeline cancel --force`.")


def _wait_until_finished(instance: dg.DagsterInstance, run_id: str, seconds: float) -> dg.DagsterRun:
    """The run once it has finished, or as it is after ``seconds``."""
    deadline = time.monotonic() + seconds
    run = instance.get_run_by_id(run_id)
    while run is not None and not run.is_finished and time.monotonic() < deadline:
        time.sleep(0.2)
        run = instance.get_run_by_id(run_id)
    assert run is not None, f"run {run_id} vanished"
    return run
