"""The rendering core: L-system fractals to antialiased, deterministic PNGs.

Pure Python + numpy + Pillow (+ aggdraw for antialiasing, zlib-ng for deflate). Imports nothing
from Dagster, boto3 or the rest of ``fractal_pipeline``; everything else calls
this API::

    from fractal_pipeline.fractals import FractalSpec, render_png

    spec = FractalSpec("dragon", 12)          # spec.key == "dragon_12"
    png = render_png(spec)                    # same spec, same bytes
"""

from .allocator import tune_allocator
from .catalog import KINDS, SEGMENT_BUDGET, LSystem
from .collage import UnreadableImage, make_collage, thumbnail, tile_size_for
from .palette import DEFAULT_PALETTE, PALETTES
from .png import encode_png, indexed_png, spec_of_png
from .render import Drawing, draw, preview, render, render_indexed, render_png, render_with_preview
from .spec import (
    DEFAULT_SIZE,
    MAX_SIZE,
    MAX_SPECS,
    MIN_SIZE,
    FractalSpec,
    InvalidSpec,
    check_budget,
    check_random_count,
    max_random_specs,
    random_specs,
    segment_count,
)
from .version import CORE_VERSION

__all__ = [
    "CORE_VERSION",
    "DEFAULT_PALETTE",
    "DEFAULT_SIZE",
    "KINDS",
    "MAX_SIZE",
    "MAX_SPECS",
    "MIN_SIZE",
    "PALETTES",
    "SEGMENT_BUDGET",
    "Drawing",
    "FractalSpec",
    "InvalidSpec",
    "LSystem",
    "UnreadableImage",
    "check_budget",
    "check_random_count",
    "draw",
    "encode_png",
    "indexed_png",
    "make_collage",
    "max_random_specs",
    "preview",
    "random_specs",
    "render",
    "render_indexed",
    "render_png",
    "render_with_preview",
    "segment_count",
    "spec_of_png",
    "thumbnail",
    "tile_size_for",
    "tune_allocator",
]
