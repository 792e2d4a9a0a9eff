"""The ``fractal-pipeline`` command: drives the Dagster definitions, never re-implements them.

One module per command group (``run``, ``core``, ``history``, ``cancel``, ``ui``, ``aws``); formatting
only: what the commands decide comes from ``runs/``, ``defs/``, ``inspect/`` and ``aws/``.
"""
