"""The two jobs the automation launches: images over a partition range, and a batch of random specs."""

import dagster as dg

from fractal_pipeline.defs.assets.images import fractal_images
from fractal_pipeline.defs.assets.specs import fractal_specs

RENDER_JOB_NAME = "render_fractal_images"
RANDOM_JOB_NAME = "random_fractals"


#: ``fractal_images`` over a range of partitions; what the sensors launch.
render_job = dg.define_asset_job(
    RENDER_JOB_NAME,
    selection=[fractal_images],
    # One step whose work is already parallel (a process pool inside it): running the step in the
    # run's own process saves a second Python start (importing Dagster and the definitions) per run.
    executor_def=dg.in_process_executor,
    description="Render a range of fractal_specs partitions in one run (launched by the sensors).",
)

#: ``fractal_specs`` alone; what the schedule launches.
random_fractals_job = dg.define_asset_job(
    RANDOM_JOB_NAME,
    selection=[fractal_specs],
    executor_def=dg.in_process_executor,
    description="Generate a batch of random specs and register their partitions (the daily schedule).",
)
