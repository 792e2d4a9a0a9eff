"""Whether a step's run was asked to stop: how a run executing in the process that started it is stopped."""

import time

import dagster as dg

#: How often the render loop asks whether its run is being canceled (one read of the run's record).
CANCEL_POLL_S = 0.5


class CancelWatch:
    """Whether the step's run was asked to stop (marked CANCELING or CANCELED); asks the instance at most
    every :data:`CANCEL_POLL_S`.

    This is how a run executing inside the process that started it (``fractal-pipeline run``) is stopped: the
    CLI marks the run CANCELING on Ctrl-C or SIGTERM, and the render loop stops at its next outcome or heartbeat.
    """

    def __init__(self, context: dg.AssetExecutionContext) -> None:
        self._instance = context.instance
        self._run_id = context.run.run_id
        self._asked_at = 0.0
        self._requested = False

    def requested(self, now_or_never: bool = False) -> bool:
        """Whether the run is to stop; ``now_or_never`` asks the instance even if it was asked just now."""
        now = time.monotonic()
        if not self._requested and (now_or_never or now - self._asked_at >= CANCEL_POLL_S):
            self._asked_at = now
            run = self._instance.get_run_by_id(self._run_id)
            self._requested = run is not None and run.status in (
                dg.DagsterRunStatus.CANCELING,
                dg.DagsterRunStatus.CANCELED,
            )
        return self._requested


def canceled(stored: int, total: int) -> dg.Failure:
    """The failure that ends a run asked to stop, saying how much it stored."""
    return dg.Failure(
        description=f"run canceled: {stored} of {total} partitions were stored before it stopped",
        allow_retries=False,
    )
