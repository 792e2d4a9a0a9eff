"""Terminal output shared by the CLI's commands (``cli.py`` and ``aws/commands.py``)."""

import typer
from rich.console import Console


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: <message>`` on one line of stderr; returns the ``typer.Exit`` to raise."""
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)
