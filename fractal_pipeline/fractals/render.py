"""Render a FractalSpec to an antialiased RGB image and to deterministic PNG bytes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import aggdraw
import numpy as np
import numpy.typing as npt
from PIL import Image

from .catalog import KINDS, SEGMENT_BUDGET
from .lsystem import turtle_path
from .palette import PALETTES
from .png import indexed_image, png_from_scanlines, scanlines_image, spec_text, write_png
from .spec import FractalSpec, check_budget

#: Colour bands along the path (one polyline call each) and antialiasing
#: levels per band: together they fill a 256-colour PNG palette. Indexed
#: PNGs are a third of the bytes of RGB to compress, so they encode faster
#: and make smaller files, with no visible loss on line art.
BANDS: Final = 16
LEVELS: Final = 16
#: Fraction of the image left empty on each side.
MARGIN: Final = 0.05
BACKGROUND: Final = (0, 0, 0)


def fit_to_canvas(path: npt.NDArray[np.float64], size: int) -> tuple[npt.NDArray[np.float64], float]:
    """Scale and centre ``path`` into a ``size`` square with a margin; y points up.

    Returns the pixel coordinates and the length of one unit segment in pixels.
    """
    lo = path.min(axis=0)
    hi = path.max(axis=0)
    extent = float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-9))
    scale = size * (1 - 2 * MARGIN) / extent
    centre = (lo + hi) / 2
    pixels = np.empty_like(path)
    pixels[:, 0] = size / 2 + (path[:, 0] - centre[0]) * scale
    pixels[:, 1] = size / 2 - (path[:, 1] - centre[1]) * scale
    return pixels, scale


def line_width(segment_px: float, size: int) -> float:
    """Pen width: a third of a segment, so deep curves keep gaps between lines,
    at least 0.6 px (antialiasing keeps it visible) and at most size/256."""
    return float(min(max(0.35 * segment_px, 0.6), max(size / 256, 0.6)))


def palette_table(palette: str, bands: int) -> list[int]:
    """The 256-entry RGB palette: entry ``band * LEVELS + level`` is the band's
    colour at ``level / (LEVELS - 1)`` intensity; entry 0 is the background."""
    colour_of = PALETTES[palette]
    table: list[int] = []
    for band in range(BANDS):
        colour = colour_of((band + 0.5) / bands) if band < bands else BACKGROUND
        for level in range(LEVELS):
            table.extend(round(channel * level / (LEVELS - 1)) for channel in colour)
    return table


def _forward_max(
    grid: npt.NDArray[np.uint8], spare: npt.NDArray[np.uint8], stride: int, reach: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Running max of ``grid`` over ``2 * reach + 1`` elements ``stride`` apart, looking ahead only.

    Returns ``(result, spare)``: ``result[i]`` is the max of ``grid[i], grid[i + stride], ...`` up to
    ``grid[i + 2 * reach * stride]`` (fewer at the end). Windows are doubled rather than widened one
    element at a time (3 or 4 passes for a window of 7 or 9 instead of 6 or 8), on flat arrays so that
    each pass is one contiguous numpy loop; ``grid`` and ``spare`` take turns as input and output.
    """
    window = 2 * reach + 1
    span = 1
    while span < window:
        step = min(span, window - span)
        shift = step * stride
        np.maximum(grid[:-shift], grid[shift:], out=spare[:-shift])
        spare[-shift:] = grid[-shift:]
        grid, spare = spare, grid
        span += step
    return grid, spare


def _scatter_bands(
    grid: npt.NDArray[np.uint8],
    pixels: npt.NDArray[np.float64],
    bounds: Sequence[int],
    segment_px: float,
    row: int,
    offset: int,
) -> None:
    """Mark in ``grid`` the cell of points sampled along the path at most 0.7 px apart.

    Cell ``(x, y)`` is ``grid[offset + y * row + x]`` and holds ``LEVELS * band + 1`` of the latest
    band through it: bands are written in path order, one constant each, so a later band wins a cell
    whatever the order numpy writes repeated indexes in.
    """
    steps = max(1, math.ceil(segment_px / 0.7))
    fractions = np.arange(steps, dtype=np.float64) / steps
    for band in range(len(bounds) - 1):
        x = pixels[bounds[band] : bounds[band + 1] + 1, 0]
        y = pixels[bounds[band] : bounds[band + 1] + 1, 1]
        # Cells of points[i] + (points[i + 1] - points[i]) * fraction, the point itself first; the
        # next band starts at this band's last point.
        columns = np.multiply.outer(x[1:] - x[:-1], fractions)
        columns += x[:-1, None]
        np.rint(columns, out=columns)
        cells = np.multiply.outer(y[1:] - y[:-1], fractions)
        cells += y[:-1, None]
        np.rint(cells, out=cells)
        cells *= row
        cells += columns
        cells += offset
        grid[cells.astype(np.intp).ravel()] = LEVELS * band + 1
    end = pixels[-1]
    grid[offset + int(np.rint(end[1])) * row + int(np.rint(end[0]))] = LEVELS * (len(bounds) - 2) + 1


def _draw_scanlines(spec: FractalSpec, max_segments: int) -> tuple[npt.NDArray[np.uint8], bytes]:
    """The PNG scanlines of ``spec`` (every row a filter byte, 0, then ``size`` palette indexes, all
    in one flat array) and its palette.

    One antialiased polyline per colour band gives a coverage mask. The band of each pixel is the
    latest band with a point sampled along the path within ``reach`` pixels (a square max filter of
    the sampled points; a few numpy passes instead of a second rasterisation). Pixel value =
    ``band * LEVELS + coverage quantised to LEVELS``, or 0 where the quantised coverage is 0.
    """
    check_budget(spec, max_segments)
    size = spec.size
    path = turtle_path(KINDS[spec.kind], spec.depth)
    segments = len(path) - 1
    bands = max(1, min(BANDS, segments))
    palette = bytes(palette_table(spec.palette, bands))
    if segments == 0:
        return np.zeros(size * (size + 1), dtype=np.uint8), palette
    pixels, segment_px = fit_to_canvas(path, size)
    del path
    width = line_width(segment_px, size)
    reach = math.ceil(width / 2 + 1.5)
    # Every array below is flat with rows of ``row`` bytes. With one spare byte a row, the spare
    # bytes are the PNG filter bytes and the result needs no copy; the max filter runs along the
    # flat array, so a band near the left or right edge would reach the next row: then the rows
    # get room for the reach on both sides, and the indexes are copied out. The margin keeps every
    # point's cell inside the image.
    x_lo, x_hi = np.rint(pixels[:, 0].min()), np.rint(pixels[:, 0].max())
    row = size + 1 if reach <= x_lo and x_hi + reach <= size - 1 else size + 1 + 2 * reach
    count = size * row
    coverage = aggdraw.Draw("L", (row, size), 0)
    pen = aggdraw.Pen(255, width)
    # First segment of each band: np.linspace(0, segments, bands + 1).round(), in Python ints.
    bounds = [round(band * (segments / bands)) for band in range(bands)] + [segments]
    for band in range(bands):
        coverage.line(pixels[bounds[band] : bounds[band + 1] + 1].ravel().tolist(), pen)
    level = np.frombuffer(coverage.tobytes(), dtype=np.uint8)
    del coverage
    # The band grid holds LEVELS * band + 1 (1 where no band), so that below the sum with
    # (coverage - 9) // 17 never overflows a byte; 9 and 17 round coverage 0..255 to 0..15 as
    # (coverage * 15 + 127) // 255 does, and coverage under 9 is level 0. The grid is shifted by
    # ``lead`` so that the look-ahead max filter centres on each pixel.
    lead = reach * row + reach
    grid = np.ones(count + lead, dtype=np.uint8)
    _scatter_bands(grid, pixels, bounds, segment_px, row, lead)
    del pixels
    out = np.empty(count + lead + 1, dtype=np.uint8)
    out[0] = 0
    grid, spare = _forward_max(grid, out[1:], 1, reach)
    grid, spare = _forward_max(grid, spare, row, reach)
    quantised = spare[:count]
    np.subtract(level, np.uint8(9), out=quantised)
    quantised //= np.uint8(17)
    quantised += grid[:count]
    mask = grid[:count]
    np.greater(level, np.uint8(8), out=mask.view(np.bool_))
    indexes = out[1 : count + 1]
    np.multiply(quantised, mask, out=indexes)
    if row == size + 1:
        indexes[size::row] = 0  # the filter bytes of the rows after the first
        return out[:count], palette
    scanlines = np.zeros((size, size + 1), dtype=np.uint8)
    scanlines[:, 1:] = indexes.reshape(size, row)[:, :size]
    return scanlines.ravel(), palette


@dataclass(frozen=True)
class Drawing:
    """A spec drawn, not yet encoded: its pixels as the PNG's scanlines (every row a filter byte 0
    and ``size`` palette indexes) and its palette. The PNG, its preview and the Pillow image all
    come from these pixels, so a caller that needs two of them draws once."""

    spec: FractalSpec
    scanlines: npt.NDArray[np.uint8] = field(repr=False)
    palette: bytes = field(repr=False)

    def png(self) -> bytes:
        """The PNG :func:`render_png` writes; the same spec and encoder give the same bytes."""
        size = self.spec.size
        return png_from_scanlines(self.scanlines, size, size, self.palette, spec_text(self.spec))

    def image(self) -> Image.Image:
        """The palette ("P") image :func:`render_indexed` returns."""
        return scanlines_image(self.scanlines, self.spec.size, self.spec.size, self.palette)

    def preview(self, max_px: int) -> Image.Image:
        """:func:`preview` of :meth:`image`, pooled from the scanlines without making the image."""
        return indexed_image(self._pooled(max_px), self.palette)

    def preview_png(self, max_px: int) -> bytes:
        """:meth:`preview` as PNG bytes, as :func:`indexed_png` writes it (the thumbnail in metadata)."""
        return write_png(self._pooled(max_px), self.palette)

    def _pooled(self, max_px: int) -> npt.NDArray[np.uint8]:
        size = self.spec.size
        return _max_pool(self.scanlines.reshape(size, size + 1)[:, 1:], max_px)


def draw(spec: FractalSpec, max_segments: int = SEGMENT_BUDGET) -> Drawing:
    """Draw ``spec``: one antialiased polyline per colour band gives a coverage mask; the band of each
    pixel is the latest band of the path nearby. Pixel value = ``band * LEVELS + coverage quantised to
    LEVELS`` (:func:`_draw_scanlines`)."""
    scanlines, palette = _draw_scanlines(spec, max_segments)
    return Drawing(spec, scanlines, palette)


def render_indexed(spec: FractalSpec, max_segments: int = SEGMENT_BUDGET) -> Image.Image:
    """Draw ``spec`` as a palette ("P") image: what :func:`render_png` encodes (:func:`draw`)."""
    return draw(spec, max_segments).image()


def render_with_preview(
    spec: FractalSpec, max_px: int, max_segments: int = SEGMENT_BUDGET
) -> tuple[Image.Image, Image.Image]:
    """:func:`render_indexed` and its :func:`preview`, pooled from the pixels before they go into Pillow."""
    drawing = draw(spec, max_segments)
    return drawing.image(), drawing.preview(max_px)


def render(spec: FractalSpec, max_segments: int = SEGMENT_BUDGET) -> Image.Image:
    """Draw ``spec`` as an RGB ``size`` x ``size`` image on black.

    The fractal is fitted and centred with a margin, drawn antialiased, and
    coloured along its path by the spec's palette (in ``BANDS`` bands).
    """
    return render_indexed(spec, max_segments).convert("RGB")


def render_png(spec: FractalSpec, max_segments: int = SEGMENT_BUDGET) -> bytes:
    """Render ``spec`` and encode it as an indexed PNG; the same spec and encoder give the same bytes."""
    return draw(spec, max_segments).png()


def _max_pool(pixels: npt.NDArray[np.uint8], max_px: int) -> npt.NDArray[np.uint8]:
    """Each output pixel is the largest value of its ``f`` x ``f`` block, ``f = ceil(side / max_px)``."""
    factor = max(1, -(-max(pixels.shape) // max_px))
    height, width = (pixels.shape[0] // factor) * factor, (pixels.shape[1] // factor) * factor
    pixels = pixels[:height, :width]
    rows = pixels[0::factor].copy()
    for k in range(1, factor):
        np.maximum(rows, pixels[k::factor], out=rows)
    pooled = rows[:, 0::factor].copy()
    for k in range(1, factor):
        np.maximum(pooled, rows[:, k::factor], out=pooled)
    return pooled


def preview(image: Image.Image, max_px: int) -> Image.Image:
    """A small copy of an indexed image from :func:`render_indexed`, at most ``max_px`` a side.

    Each output pixel is the largest palette index of its ``f`` x ``f`` block
    (``f = size // max_px``): the strongest coverage of the latest band, so
    one-pixel lines stay visible at 1/8 scale, where averaging (``reduce``)
    fades them. Stays indexed (same palette): faster to make and smaller as a
    PNG than an RGB reduce.
    :func:`render_with_preview` makes the same preview while rendering.
    """
    factor = max(1, -(-max(image.size) // max_px))
    if factor == 1 or image.mode != "P":
        small = image.copy()
        small.thumbnail((max_px, max_px), Image.Resampling.BOX)
        return small
    return indexed_image(_max_pool(np.asarray(image), max_px), image.getpalette())
