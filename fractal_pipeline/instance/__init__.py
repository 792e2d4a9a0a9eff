"""The embedded Dagster instance: pooled SQLite storage, compute-log capture, batched events, the CLI's home.

This package is the only place that uses Dagster internals (``dagster._…``); the tests in
``fractal_pipeline_tests/pipeline/test_instance_storage.py`` fail on an upgrade that breaks them.
"""
