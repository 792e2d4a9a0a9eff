"""``random_fractals_schedule``: a batch of random specs with a fresh seed, daily by default."""

import secrets

import dagster as dg

from fractal_pipeline.defs.jobs import random_fractals_job
from fractal_pipeline.defs.settings import DEFAULT_CRON

SCHEDULE_NAME = "random_fractals_schedule"
#: The run-status sensor that renders what a scheduled run registered (defs/sensors/after_schedule.py).
RENDER_AFTER_SCHEDULE_NAME = "render_random_fractals"


def random_fractals_schedule(cron: str = DEFAULT_CRON) -> dg.ScheduleDefinition:
    """Daily ``fractal_specs`` with a fresh seed (derived from the tick time, so a retried tick repeats it)."""

    @dg.schedule(
        name=SCHEDULE_NAME,
        cron_schedule=cron,
        job=random_fractals_job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=(
            "Generate random fractal specs with a fresh seed; "
            f"{RENDER_AFTER_SCHEDULE_NAME} then renders the new partitions in one run."
        ),
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        when = context.scheduled_execution_time
        seed = int(when.timestamp()) & 0xFFFFFFFF if when else secrets.randbits(32)
        return dg.RunRequest(
            run_config={"ops": {"fractal_specs": {"config": {"seed": seed}}}},
            tags={"fractal_pipeline/seed": str(seed)},
        )

    return _schedule
