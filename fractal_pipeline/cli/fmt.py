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


def plain_table(*columns: str, right: Sequence[str] = ()) -> Table:
    """A table whose cells wrap in a narrow or piped terminal: a key, id or kind is never cut short."""
    table = Table(*columns)
    for column in table.columns:
        column.overflow = "fold"
        if column.header in right:
            column.justify = "right"
    return table


#: The narrowest a free-text column (``wraps``) of :func:`fitted_table` is counted as, when columns are dropped.
MIN_WRAPPED_WIDTH = 20


def fitted_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str | Text]],
    optional: Sequence[str],
    right: Sequence[str] = (),
    wraps: Sequence[str] = (),
) -> Table:
    """A table of ``rows`` that fits the terminal without cutting a key, id, event name or kind.

    Columns in ``wraps`` hold free text, which wraps between words. Every other column keeps each cell on
    one line: ``optional`` columns are dropped, in that order, until the rest fit (a table still too wide
    is printed wider than the terminal rather than cut).
    """
    widths = [
        max(len(cell.plain if isinstance(cell, Text) else cell) for cell in [header, *(row[index] for row in rows)])
        for index, header in enumerate(headers)
    ]

    def needed(shown: list[int]) -> int:  # each column's cells plus its padding and border
        return 1 + sum((min(widths[i], MIN_WRAPPED_WIDTH) if headers[i] in wraps else widths[i]) + 3 for i in shown)

    shown = list(range(len(headers)))
    for name in optional:
        if needed(shown) <= term.console.width:
            break
        shown.remove(headers.index(name))
    table = plain_table(*(headers[index] for index in shown), right=right)
    for column, index in zip(table.columns, shown, strict=True):
        if headers[index] not in wraps:
            column.no_wrap = True
            column.min_width = widths[index]
    for row in rows:
        add_row(table, *(row[index] for index in shown))
    return table


def add_row(table: Table, *cells: str | Text) -> None:
    """Add a row of literal text (log messages contain brackets that are not rich markup)."""
    table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in cells))


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
