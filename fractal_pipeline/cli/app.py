"""The ``fractal-pipeline`` typer app: every command, by group, and the console-script entry point."""

from __future__ import annotations

import sys

import typer

from fractal_pipeline.cli import aws, cancel, console, core, history, run, ui
from fractal_pipeline.cli.console import EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_USAGE, fail

app = typer.Typer(
    help="Batch L-system fractals on Dagster: generate specs, render PNGs in parallel, tile a collage.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _consoles() -> None:
    """Fresh consoles per invocation, so terminal width (COLUMNS) is read when a command runs."""
    console.reset()


app.command("run", epilog=EXIT_CODES_HELP)(run.run)
app.command("kinds")(core.kinds_command)
app.command("render")(core.render_command)
app.command("runs")(history.runs_command)
app.command("logs")(history.logs_command)
app.command("events")(history.events_command)
app.command("cancel")(cancel.cancel_command)
app.command("ui", epilog=EXIT_CODES_HELP)(ui.ui_command)
aws.register(app)  # deploy, destroy


def main() -> None:
    """Console-script entry point: usage errors (an unknown option, a value of the wrong type) in one line."""
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:  # Ctrl-C outside a run (at a prompt, while starting)
        fail("interrupted", EXIT_INTERRUPTED)
        code = EXIT_INTERRUPTED
    except typer.TyperException as exc:  # click's usage errors, as typer raises them
        context = getattr(exc, "ctx", None)
        command = getattr(context, "command_path", None) or "fractal-pipeline"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        fail(f"{' '.join(message.split()).rstrip('.')}; see `{command} --help`", EXIT_USAGE)
        code = EXIT_USAGE
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
