"""The fast render path computes exactly what its plain definition says; the collage reads our PNGs.

``reference_indexes`` is the renderer written the straightforward way (a band grid dilated one
shift at a time, coverage quantised in 16-bit arithmetic, one canvas as wide as the image). The
core's flat-array version must give the same palette index for every pixel, including the images
so small that the drawing reaches the edge (the core then lays its rows out differently).
"""

from __future__ import annotations

import importlib
import io
import math

import aggdraw
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from fractal_pipeline.fractals import KINDS, FractalSpec, render_indexed, render_png, thumbnail
from fractal_pipeline.fractals.lsystem import turtle_path

render_module = importlib.import_module("fractal_pipeline.fractals.render")
png_module = importlib.import_module("fractal_pipeline.fractals.png")
BANDS, LEVELS = render_module.BANDS, render_module.LEVELS


def reference_indexes(spec: FractalSpec) -> npt.NDArray[np.uint8]:
    size = spec.size
    path = turtle_path(KINDS[spec.kind], spec.depth)
    segments = len(path) - 1
    if segments == 0:
        return np.zeros((size, size), dtype=np.uint8)
    bands = max(1, min(BANDS, segments))
    pixels, segment_px = render_module.fit_to_canvas(path, size)
    width = render_module.line_width(segment_px, size)
    coverage = aggdraw.Draw("L", (size, size), 0)
    pen = aggdraw.Pen(255, width)
    bounds = np.linspace(0, segments, bands + 1).round().astype(np.int64)
    for band in range(bands):
        coverage.line(pixels[bounds[band] : bounds[band + 1] + 1].ravel().tolist(), pen)
    # Band grid: points every <= 0.7 px along each band, later bands win, then a square max filter.
    grid = np.zeros((size, size), dtype=np.uint8)
    steps = max(1, math.ceil(segment_px / 0.7))
    fractions = np.arange(steps) / steps
    for band in range(bands):
        points = pixels[bounds[band] : bounds[band + 1] + 1]
        inner = points[:-1, None, :] + (points[1:] - points[:-1])[:, None, :] * fractions[None, :, None]
        cells = np.clip(np.rint(np.concatenate([inner.reshape(-1, 2), points[-1:]])), 0, size - 1).astype(int)
        grid[cells[:, 1], cells[:, 0]] = band
    reach = math.ceil(width / 2 + 1.5)
    padded = np.pad(grid, reach)
    spread = np.zeros_like(grid)
    for dy in range(2 * reach + 1):
        for dx in range(2 * reach + 1):
            np.maximum(spread, padded[dy : dy + size, dx : dx + size], out=spread)
    level = np.frombuffer(coverage.tobytes(), dtype=np.uint8).reshape(size, size).astype(np.uint16)
    level = (level * (LEVELS - 1) + 127) // 255
    return np.where(level > 0, spread * LEVELS + level, 0).astype(np.uint8)


SPECS = [
    *(FractalSpec(name, lsys.default_depth, 256) for name, lsys in KINDS.items()),
    *(FractalSpec(name, 2, size) for name in ("dragon", "koch_snowflake", "pentaplexity") for size in (16, 23, 48)),
    FractalSpec("hilberts", 0, 64),
    FractalSpec("levy_c", 10, 1024, "ice"),
    FractalSpec("ter_dragon", 8, 1000, "fire"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.key)
def test_render_is_its_plain_definition(spec: FractalSpec) -> None:
    assert np.array_equal(np.asarray(render_indexed(spec)), reference_indexes(spec))


# -- reading our own PNGs -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["dragon_8", "koch_snowflake_3-200px-fire", "hilberts_0-64px", "moore_2-17px-mono"])
def test_read_png_decodes_our_pngs_as_pillow_does(key: str) -> None:
    data = render_png(FractalSpec.from_key(key))
    ours = png_module.read_png(data)
    with Image.open(io.BytesIO(data)) as pillows:
        assert ours is not None and ours.mode == pillows.mode == "P" and ours.size == pillows.size
        assert ours.tobytes() == pillows.tobytes() and ours.getpalette() == pillows.getpalette()


def _png(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()


def test_read_png_leaves_other_pngs_to_pillow() -> None:
    indexed = render_indexed(FractalSpec("dragon", 5, 64))
    ours = render_png(FractalSpec("dragon", 5, 64))
    corrupt = bytearray(ours)
    corrupt[-20] ^= 1  # inside the IDAT chunk: its CRC no longer matches
    filtered = png_module.png_from_scanlines(  # the same pixels with filter type 1 ("sub") on every row
        np.concatenate([np.ones((64, 1), dtype=np.uint8), np.asarray(indexed)], axis=1).ravel(), 64, 64, [0] * 768, []
    )
    for data in (
        _png(indexed.convert("RGB")),
        _png(indexed, transparency=0),
        _png(indexed.convert("L")),
        bytes(corrupt),
        filtered,
        ours[:-30],
        b"not a png",
    ):
        assert png_module.read_png(data) is None


def test_a_thumbnail_of_a_whole_multiple_is_one_box_average() -> None:
    """1024 px into a 256 px tile: one reduce, within 1 per channel of Pillow's two-pass thumbnail."""
    data = render_png(FractalSpec("peano_gosper", 4))
    with Image.open(io.BytesIO(data)) as image:
        expected = image.convert("RGB")
    expected.thumbnail((256, 256), Image.Resampling.BOX)
    thumb = thumbnail(data, 256)
    assert thumb.size == expected.size == (256, 256)
    assert np.abs(np.asarray(thumb, dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max() <= 1
