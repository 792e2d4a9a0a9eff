"""``random_fractals_schedule``: a batch of random specs with a fresh seed, daily by default."""

import secrets

import dagster as dg

from fractal_pipeline.defs.assets.specs import FractalSpecsConfig
from fractal_pipeline.defs.cost import cost_model, predict_specs, prediction_tags
from fractal_pipeline.defs.jobs import random_fractals_job
from fractal_pipeline.defs.settings import DEFAULT_CRON, CostSettings
from fractal_pipeline.fractals import random_specs

SCHEDULE_NAME = "random_fractals_schedule"
#: The run-status sensor that renders what a scheduled run registered (defs/sensors/after_schedule.py).
RENDER_AFTER_SCHEDULE_NAME = "render_random_fractals"


def random_fractals_schedule(cron: str = DEFAULT_CRON, cost: CostSettings | None = None) -> dg.ScheduleDefinition:
    """Daily ``fractal_specs`` with a fresh seed (derived from the tick time, so a retried tick repeats it).

    A tick whose batch is predicted over the budget (``FRACTALS_MAX_BATCH_SECONDS``) is skipped, saying so.
    """
    settings = cost or CostSettings()

    @dg.schedule(
        name=SCHEDULE_NAME,
        cron_schedule=cron,
        job=random_fractals_job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=(
            "Generate random fractal specs with a fresh seed; "
            f"{RENDER_AFTER_SCHEDULE_NAME} then renders the new partitions in one run. A tick predicted over "
            "the batch budget (FRACTALS_MAX_BATCH_SECONDS) is skipped."
        ),
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        when = context.scheduled_execution_time
        seed = int(when.timestamp()) & 0xFFFFFFFF if when else secrets.randbits(32)
        config = FractalSpecsConfig(seed=seed)
        specs = random_specs(config.count, seed=seed, kinds=config.kinds, size=config.size, palette=config.palette)
        # Every spec counts, stored or not: the tick does not open the store, so this is the most it renders.
        prediction = predict_specs(cost_model(context.instance), specs, settings)
        refused = prediction.over_budget(settings.max_batch_s)
        if refused is not None:
            return dg.SkipReason(f"seed {seed}: {refused}")
        return dg.RunRequest(
            run_config={"ops": {"fractal_specs": {"config": {"seed": seed}}}},
            tags={"fractal_pipeline/seed": str(seed), **prediction_tags(prediction)},
        )

    return _schedule
