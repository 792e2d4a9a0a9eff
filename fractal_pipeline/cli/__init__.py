"""The ``fractal-pipeline`` command: drives the Dagster definitions, never re-implements them.

One module per command group (``run``, ``core``, ``history``, ``cancel``, ``ui``, ``aws``); formatting
only: what the commands decide comes from ``runs/``, ``defs/``, ``inspect/`` and ``aws/``.
"""


def main() -> None:
    """The console-script entry point: Ctrl-C while the commands are still loading ends in one line too."""
    try:
        from fractal_pipeline.cli.app import main as run_app
    except KeyboardInterrupt:
        from fractal_pipeline.cli.console import EXIT_INTERRUPTED, fail

        fail("interrupted while starting: nothing was run", EXIT_INTERRUPTED)
        raise SystemExit(EXIT_INTERRUPTED) from None
    run_app()
