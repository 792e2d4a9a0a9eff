"""What the three assets share: their group and owners, progress pacing, one-line failures."""

import dagster as dg

GROUP = "fractals"
OWNERS = ["team:fractal-pipeline"]
#: How often a long step logs its progress.
PROGRESS_EVERY_S = 2.0


def one_line_failure(exc: Exception) -> dg.Failure:
    """A one-line failure; retried by the step's RetryPolicy only if the store was unreachable."""
    return dg.Failure(description=str(exc), allow_retries=bool(getattr(exc, "transient", False)))
