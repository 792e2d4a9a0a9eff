"""Running the pipeline's Dagster runs from a command: options checked up front, runs that stop cleanly."""
