"""Every Dagster object of the project, one concept per module: assets, partitions, jobs, schedules,
sensors, resources, the PNG IO manager. ``fractal_pipeline.definitions`` merges them."""
