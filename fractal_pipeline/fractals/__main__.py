"""Render one fractal by hand: ``python -m fractal_pipeline.fractals dragon 12 -o dragon.png``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import KINDS, PALETTES, InvalidSpec
from .files import OutputError, render_file
from .spec import DEFAULT_SIZE


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, render, write the PNG; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m fractal_pipeline.fractals", description=__doc__)
    parser.add_argument("kind", help=f"one of: {', '.join(KINDS)}")
    parser.add_argument("depth", nargs="?", type=int, help="rewriting iterations (default: the kind's default)")
    parser.add_argument("-o", "--output", type=Path, help="PNG path (default: <key>.png)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="edge in pixels (16..8192)")
    parser.add_argument("--palette", default="rainbow", help=f"one of: {', '.join(PALETTES)}")
    args = parser.parse_args(argv)
    try:
        print(render_file(args.kind, args.depth, args.size, args.palette, args.output))
    except (InvalidSpec, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
