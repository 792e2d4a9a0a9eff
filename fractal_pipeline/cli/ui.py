"""``ui``: ``dagster dev`` on the CLI's home, so the UI shows the CLI's runs."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer
from rich.text import Text

from fractal_pipeline.cli import console as term
from fractal_pipeline.cli.common import ensure_dagster_home, load_definitions, load_instance


def ui_command(
    host: Annotated[str, typer.Option("--host", "-h", help="Host the UI listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="Port the UI listens on")] = 3000,
) -> None:
    """The Dagster UI and daemon (`dagster dev`) on the instance this CLI records to, from any folder.

    The UI shows every run `fractal-pipeline run` made. The daemon runs the sensors on this home:
    `fractal_collage_freshness` rebuilds the collage after images land (never after a `run`'s own
    images: the CLI tiles those), `render_random_fractals` renders what the schedule adds, and
    `fractal_spec_files` watches the bucket if FRACTALS_BUCKET is set. Ctrl-C stops both.
    """
    home = ensure_dagster_home()
    load_definitions()  # a bad setting is one line here, not a code location error in the UI
    load_instance(home).dispose()
    shown = f"[{host}]" if ":" in host else host
    term.err.print(Text(f"Dagster UI on http://{shown}:{port} (DAGSTER_HOME={home}); Ctrl-C stops it"), soft_wrap=True)
    command = [sys.executable, "-m", "dagster", "dev", "-m", "fractal_pipeline.definitions"]
    command += ["--host", host, "--port", str(port)]
    # dagster dev takes this process's place: Ctrl-C and SIGTERM reach it, and it stops its webserver,
    # daemon and code server; the loaded code location is the installed package, whatever the folder.
    # SIGINT is reset first: a process started with it ignored (a shell's `&`) would pass that on,
    # and dagster dev would then ignore `kill -INT`.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    env = {**os.environ, "PYTHONWARNINGS": "ignore:Function `dev_command` is superseded"}
    sys.stderr.flush()
    os.execve(sys.executable, command, env)
