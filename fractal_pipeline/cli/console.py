"""Terminal output shared by the CLI's commands: the consoles, one-line notes and errors, exit codes.

Exit codes, the same for every command (``fractal-pipeline --help`` and the README list them):
"""

import typer
from rich.console import Console
from rich.text import Text

#: Where commands print; made afresh for each invocation (:func:`reset`), so the terminal's width
#: (``COLUMNS``) is read when a command runs.
console = Console()
err = Console(stderr=True)


def reset() -> None:
    """Fresh consoles for a new invocation."""
    global console, err
    console = Console()
    err = Console(stderr=True)


#: Every PNG asked for is stored (and the command did what it was asked).
EXIT_OK = 0
#: A run failed or left PNGs missing (stderr says which and how to fill them).
EXIT_FAILED = 1
#: Bad usage or configuration: an option, an environment variable, DAGSTER_HOME; nothing was recorded.
EXIT_USAGE = 2
#: Interrupted by Ctrl-C, SIGINT or SIGTERM (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 all stored (or done), 1 a run failed or left gaps, 2 bad usage or configuration, 130 interrupted."
)


def note(message: str) -> None:
    """One line of literal text on stderr (user text is never read as markup)."""
    Console(stderr=True).print(Text(message), highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: <message>`` on one line of stderr; returns the ``typer.Exit`` to raise.

    The message is printed literally: a key or path with brackets is not read as terminal markup.
    """
    Console(stderr=True).print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
    return typer.Exit(code)
