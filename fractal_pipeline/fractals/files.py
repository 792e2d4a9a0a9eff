"""One spec rendered into a PNG file, for ``python -m fractal_pipeline.fractals`` and ``fractal-pipeline render``."""

from __future__ import annotations

import time
from pathlib import Path

from .catalog import KINDS
from .render import render_png
from .spec import FractalSpec


class OutputError(Exception):
    """The PNG cannot be written where asked; the message names the path and the fix."""


def render_file(kind: str, depth: int | None, size: int, palette: str, output: Path | None = None) -> str:
    """Render the spec (``depth`` None: the kind's default) into ``output`` (default ``<key>.png``) and return
    the line that says what was written. InvalidSpec for a bad spec; OutputError if the file cannot be written.
    """
    chosen = depth if depth is not None else (KINDS[kind].default_depth if kind in KINDS else 0)
    spec = FractalSpec(kind, chosen, size, palette)
    path = output or Path(f"{spec.key}.png")
    if path.is_dir():
        raise _cannot_write(path, "is a folder")
    if path.suffix.lower() != ".png":  # also a bare ".png", which is a hidden file's name with no suffix
        raise OutputError(f"--output: {path} is not a <name>.png path; the file is a PNG, so name it <name>.png")
    started = time.perf_counter()
    data = render_png(spec)
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise _cannot_write(path, exc.strerror or str(exc)) from None
    elapsed = (time.perf_counter() - started) * 1000
    return f"{path}: {spec.key}, {spec.segments:,} segments, {len(data):,} bytes, {elapsed:.0f} ms"


def _cannot_write(path: Path, reason: str) -> OutputError:
    return OutputError(f"--output: cannot write {path} ({reason}); give a file path in an existing, writable folder")
