"""Formatting shared by the commands that show runs: times, durations, statuses, plain tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from fractal_pipeline.cli import console as term

_STATUS_STYLE = {"SUCCESS": "green", "FAILURE": "red", "CANCELED": "dim", "CANCELING": "yellow"}


def clock(timestamp: float | None) -> str:
    from datetime import datetime

    return "" if timestamp is None else datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes}m {seconds:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def offset(seconds: float) -> str:
    """Seconds since the run started, to the millisecond (no "-0.000")."""
    return f"{round(seconds, 3) or 0.0:.3f}"


def ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, "yellow"))


#: The narrowest a free-text column (``wraps``) of :func:`print_table` is counted as, when columns are dropped.
MIN_WRAPPED_WIDTH = 20


def _plain(cell: str | Text) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str | Text]],
    optional: Sequence[str] = (),
    right: Sequence[str] = (),
    wraps: Sequence[str] = (),
    title: str = "",
    caption: str = "",
) -> list[str]:
    """Print ``rows`` as a table without cutting a key, id, event name, kind or word; returns the headers shown.

    Columns in ``wraps`` hold free text, which wraps between words. Every other column keeps each cell on
    one line: ``optional`` columns are dropped, in that order, until the rest fit the terminal. A table that
    still does not fit is printed wider than the terminal, whole: a pipe keeps its lines and a terminal wraps
    them. ``title`` and ``caption`` are lines of their own above and below it.
    """
    widths = [
        max(len(_plain(cell)) for cell in [header, *(row[i] for row in rows)]) for i, header in enumerate(headers)
    ]
    for i, header in enumerate(headers):  # free text wraps between words, never inside one
        if header in wraps:
            longest_word = max((len(word) for row in rows for word in _plain(row[i]).split()), default=1)
            widths[i] = max(longest_word, min(widths[i], MIN_WRAPPED_WIDTH))
    console = term.console

    def needed(shown: list[int]) -> int:  # each column's cells plus its padding and border
        return 1 + sum(widths[i] + 3 for i in shown)

    shown = list(range(len(headers)))
    for name in optional:
        if needed(shown) <= console.width:
            break
        shown.remove(headers.index(name))
    table = Table(*(headers[i] for i in shown))
    for column, i in zip(table.columns, shown, strict=True):
        column.min_width = widths[i]
        column.no_wrap = headers[i] not in wraps
        column.justify = "right" if headers[i] in right else "left"
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in (row[i] for i in shown)))
    if title:
        console.print(Text(title), soft_wrap=True)
    width = console.width
    if needed(shown) > width:  # Rich fits a table to the console: widen the console for this one table
        console.width = needed(shown)
    try:
        console.print(table, crop=False)
    finally:
        console.width = width
    if caption:
        console.print(Text(caption), soft_wrap=True)
    return [headers[i] for i in shown]


def run_heading(info: Any) -> Text:
    what = ", ".join(info.assets) or "(no assets)"
    if info.partitions:
        count = f", {info.partition_count} partitions" if info.partition_count else ""
        what += f" ({info.partitions}{count})"
    # The full id: it is what the UI opens (/runs/<id>); the 8-character prefix only works on this CLI.
    return Text.assemble(("run " + info.run_id, "bold"), " ", status(info.status), f" · {info.source} · {what}")


def note_run_state(info: Any, lines: Sequence[Any] = ()) -> None:
    """One line on stderr when the run is not (successfully) finished."""
    if not info.finished:
        term.err.print(f"run {info.short_id} is still {info.status}: showing what it recorded so far", soft_wrap=True)
    elif info.status == "FAILURE":
        reason = next((line.message for line in lines if line.event == "STEP_FAILURE"), "see `fractal-pipeline logs`")
        term.err.print(Text(f"run {info.short_id} failed: {reason}"), soft_wrap=True)
