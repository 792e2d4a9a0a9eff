"""``kinds`` and ``render``: the core's catalog and one PNG, without Dagster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fractal_pipeline.cli import console as term
from fractal_pipeline.cli.console import EXIT_USAGE, fail
from fractal_pipeline.cli.fmt import print_table
from fractal_pipeline.fractals import KINDS, PALETTES, InvalidSpec
from fractal_pipeline.fractals.files import OutputError, render_file


def kinds_command() -> None:
    """List the 26 kinds with their depth range and segments at the default depth."""
    rows = [
        [
            kind.name,
            str(kind.default_depth),
            f"{kind.random_depths[0]}..{kind.random_depths[1]}",
            str(kind.max_depth),
            f"{kind.segment_count(kind.default_depth):,}",
            str(kind.angle),
        ]
        for kind in KINDS.values()
    ]
    headers = ["kind", "default depth", "random depths", "max depth", "segments at default", "angle"]
    optional = headers[:1:-1]  # from the right: angle first; kind and default depth always stay
    print_table(headers, rows, optional, right=("segments at default",))


def render_command(
    kind: Annotated[str, typer.Argument(help="Kind name, see `fractal-pipeline kinds`")],
    depth: Annotated[int | None, typer.Argument(help="Rewriting iterations (default: the kind's default)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG path (default <key>.png)")] = None,
    size: Annotated[int, typer.Option(help="Image edge in pixels")] = 1024,
    palette: Annotated[str, typer.Option(help=", ".join(PALETTES))] = "rainbow",
) -> None:
    """Render one fractal to a PNG file, without Dagster."""
    try:
        written = render_file(kind, depth, size, palette, output)
    except (InvalidSpec, OutputError) as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    term.console.print(Text(written), highlight=False)
