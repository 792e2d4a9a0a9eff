"""Render one fractal by hand: ``python -m fractal_pipeline.fractals dragon 12 -o dragon.png``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import KINDS, PALETTES, FractalSpec, InvalidSpec, render_png
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
        depth = args.depth if args.depth is not None else KINDS[args.kind].default_depth if args.kind in KINDS else 0
        spec = FractalSpec(args.kind, depth, args.size, args.palette)
        started = time.perf_counter()
        data = render_png(spec)
    except InvalidSpec as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output = args.output or Path(f"{spec.key}.png")
    output.write_bytes(data)
    elapsed = (time.perf_counter() - started) * 1000
    print(f"{output}: {spec.key}, {spec.segments:,} segments, {len(data):,} bytes, {elapsed:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
