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
