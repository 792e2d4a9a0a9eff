"""Render a FractalSpec to an antialiased RGB image and to deterministic PNG bytes."""

from __future__ import annotations

import io
import json
import math
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import Any, Final

import aggdraw
import numpy as np
import numpy.typing as npt
from PIL import Image, PngImagePlugin

from .catalog import KINDS, SEGMENT_BUDGET
from .lsystem import turtle_path
from .palette import PALETTES
from .spec import FractalSpec, check_budget

#: Colour bands along the path (one polyline call each) and antialiasing
#: levels per band: together they fill a 256-colour PNG palette. Indexed
#: PNGs are a third of the pixels to compress, which makes encoding ~3x
#: faster and files ~3x smaller than RGB, with no visible loss on line art.
BANDS: Final = 16
LEVELS: Final = 16
#: Fraction of the image left empty on each side.
MARGIN: Final = 0.05
#: Deflate level for PNGs (ISA-L's 1, else zlib's): the fastest level that still finds the long runs of
#: background these line drawings are made of; benchmarks/bench_render.py reports the sizes.
PNG_COMPRESS_LEVEL: Final = 1
#: PNG text chunk that carries the spec, so a PNG found in a bucket says what it is.
PNG_SPEC_CHUNK: Final = "fractal_pipeline.spec"
PNG_KEY_CHUNK: Final = "fractal_pipeline.key"
#: PNG text chunk naming the deflate library and version that made the bytes (the same spec gives the same
#: bytes only with the same encoder).
PNG_ENCODER_CHUNK: Final = "fractal_pipeline.encoder"
BACKGROUND: Final = (0, 0, 0)


def _load_isal() -> tuple[Any, str]:
    """ISA-L's zlib interface and its version, or (None, "") where ``isal`` is not installed.

    ISA-L deflates these scanlines several times faster than zlib, into smaller files
    (docs/performance.md); zlib stays as a fallback so that the core runs without it.
    """
    try:
        import isal
        from isal import isal_zlib
    except ImportError:
        return None, ""
    return isal_zlib, str(isal.__version__)


_isal_zlib, _isal_version = _load_isal()
#: The encoder this process writes PNGs with, as recorded in their :data:`PNG_ENCODER_CHUNK`.
PNG_ENCODER: Final = f"isal {_isal_version}" if _isal_zlib is not None else f"zlib {zlib.ZLIB_RUNTIME_VERSION}"
_fallback_reported = False


def _deflate(data: bytes) -> bytes:
    """zlib-format deflate of ``data``: ISA-L when installed, else zlib (said once, as a warning)."""
    global _fallback_reported
    if _isal_zlib is not None:
        return bytes(_isal_zlib.compress(data, PNG_COMPRESS_LEVEL))
    if not _fallback_reported:
        _fallback_reported = True
        warnings.warn(
            "isal is not installed: PNGs are deflated with zlib (slower, other bytes); pip install isal",
            RuntimeWarning,
            stacklevel=3,
        )
    return zlib.compress(data, PNG_COMPRESS_LEVEL)


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


def band_index(
    pixels: npt.NDArray[np.float64], bounds: npt.NDArray[np.int64], size: int, segment_px: float, radius: int
) -> npt.NDArray[np.uint8]:
    """Per pixel, the colour band of the path nearby (``size`` x ``size``).

    Points sampled along the path at most 0.7 px apart are scattered into a
    grid (later bands win), then spread by a separable max filter of
    ``radius`` so every pixel the antialiased pen touches has a band. This is
    a few numpy passes instead of a second polyline rasterisation.
    """
    grid = np.zeros((size, size), dtype=np.uint8)
    steps = max(1, math.ceil(segment_px / 0.7))
    fractions = np.arange(steps, dtype=np.float64) / steps
    for band in range(len(bounds) - 1):
        points = pixels[int(bounds[band]) : int(bounds[band + 1]) + 1]
        if steps > 1:
            deltas = points[1:] - points[:-1]
            inner = points[:-1, None, :] + deltas[:, None, :] * fractions[None, :, None]
            points = np.concatenate([inner.reshape(-1, 2), points[-1:]])
        cells = np.clip(np.rint(points), 0, size - 1).astype(np.intp)
        grid[cells[:, 1], cells[:, 0]] = band
    for axis in (1, 0):
        source = grid.copy()
        for shift in range(1, radius + 1):
            ahead = [slice(None)] * 2
            behind = [slice(None)] * 2
            ahead[axis] = slice(shift, None)
            behind[axis] = slice(None, -shift)
            np.maximum(grid[tuple(ahead)], source[tuple(behind)], out=grid[tuple(ahead)])
            np.maximum(grid[tuple(behind)], source[tuple(ahead)], out=grid[tuple(behind)])
    return grid


def _draw_indexes(spec: FractalSpec, max_segments: int) -> tuple[npt.NDArray[np.uint8], list[int]]:
    """The palette index of every pixel of ``spec`` (``size`` x ``size``) and the palette."""
    check_budget(spec, max_segments)
    size = spec.size
    path = turtle_path(KINDS[spec.kind], spec.depth)
    segments = len(path) - 1
    bands = max(1, min(BANDS, segments))
    palette = palette_table(spec.palette, bands)
    if segments == 0:
        return np.zeros((size, size), dtype=np.uint8), palette
    pixels, segment_px = fit_to_canvas(path, size)
    del path
    width = line_width(segment_px, size)
    coverage = aggdraw.Draw("L", (size, size), 0)
    pen = aggdraw.Pen(255, width)
    bounds = np.linspace(0, segments, bands + 1).round().astype(np.int64)
    for band in range(bands):
        coverage.line(pixels[int(bounds[band]) : int(bounds[band + 1]) + 1].ravel().tolist(), pen)
    bands_grid = band_index(pixels, bounds, size, segment_px, math.ceil(width / 2 + 1.5))
    del pixels
    level = np.frombuffer(coverage.tobytes(), dtype=np.uint8).astype(np.uint16)
    level *= LEVELS - 1
    level += 127
    level //= 255
    index = bands_grid.ravel() * np.uint8(LEVELS)
    index += level.astype(np.uint8)
    index[level == 0] = 0
    return index.reshape(size, size), palette


def _indexed_image(indexes: npt.NDArray[np.uint8], palette: list[int] | None) -> Image.Image:
    """A "P" image of ``indexes`` (a height x width array) with ``palette``."""
    height, width = indexes.shape
    image = Image.new("P", (width, height), 0)
    if palette is not None:
        image.putpalette(palette)
    image.frombytes(np.ascontiguousarray(indexes))  # one copy, into Pillow's block-reusing memory
    return image


def render_indexed(spec: FractalSpec, max_segments: int = SEGMENT_BUDGET) -> Image.Image:
    """Draw ``spec`` as a palette ("P") image: what :func:`render_png` encodes.

    One antialiased polyline per colour band gives a coverage mask; the band
    of each pixel comes from :func:`band_index`. Pixel value =
    ``band * LEVELS + coverage quantised to LEVELS``.
    """
    return _indexed_image(*_draw_indexes(spec, max_segments))


def render_with_preview(
    spec: FractalSpec, max_px: int, max_segments: int = SEGMENT_BUDGET
) -> tuple[Image.Image, Image.Image]:
    """:func:`render_indexed` and its :func:`preview`, pooled from the pixels before they go into Pillow."""
    indexes, palette = _draw_indexes(spec, max_segments)
    return _indexed_image(indexes, palette), _indexed_image(_max_pool(indexes, max_px), palette)


def render(spec: FractalSpec, max_segments: int = SEGMENT_BUDGET) -> Image.Image:
    """Draw ``spec`` as an RGB ``size`` x ``size`` image on black.

    The fractal is fitted and centred with a margin, drawn antialiased, and
    coloured along its path by the spec's palette (in ``BANDS`` bands).
    """
    return render_indexed(spec, max_segments).convert("RGB")


def encode_png(image: Image.Image, spec: FractalSpec | None = None) -> bytes:
    """PNG bytes of ``image``; deterministic for the same pixels, spec and :data:`PNG_ENCODER`.

    An indexed ("P") image, what :func:`render_indexed` draws, is written by :func:`write_png`;
    another mode goes through Pillow's encoder.
    """
    text = _spec_text(spec)
    if image.mode == "P":
        return write_png(np.asarray(image), image.getpalette() or [0, 0, 0], text)
    info = PngImagePlugin.PngInfo()
    for keyword, value in text:
        info.add_text(keyword, value)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def _spec_text(spec: FractalSpec | None) -> list[tuple[str, str]]:
    """The text chunks of a rendered PNG: key, spec and the encoder that made it."""
    if spec is None:
        return []
    return [
        (PNG_KEY_CHUNK, spec.key),
        (PNG_SPEC_CHUNK, json.dumps(spec.as_dict(), sort_keys=True)),
        (PNG_ENCODER_CHUNK, PNG_ENCODER),
    ]


def write_png(indexes: npt.NDArray[np.uint8], palette: list[int], text: Sequence[tuple[str, str]] = ()) -> bytes:
    """An 8-bit indexed PNG of ``indexes`` (height x width) with ``palette`` and ``text`` chunks.

    Written here rather than by Pillow: no filter (palette images compress best unfiltered) and one
    deflate call over all scanlines (:func:`_deflate`). Every PNG decoder reads it (IHDR, PLTE, tEXt,
    IDAT, IEND), and the same pixels, text and encoder give the same bytes.
    """
    height, width = indexes.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "none" for every scanline
    rows[:, 1:] = indexes
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    chunks = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", header), _png_chunk(b"PLTE", bytes(palette[: 3 * 256]))]
    chunks += [_png_chunk(b"tEXt", f"{keyword}\0{value}".encode("latin-1")) for keyword, value in text]
    chunks += [_png_chunk(b"IDAT", _deflate(rows.tobytes())), _png_chunk(b"IEND", b"")]
    return b"".join(chunks)


def indexed_png(image: Image.Image) -> bytes:
    """PNG bytes of a small "P" image (a :func:`preview`), with no text chunks (:func:`write_png`)."""
    if image.mode != "P":
        raise ValueError(f"image mode: {image.mode!r} is not an indexed image; use encode_png")
    return write_png(np.asarray(image), image.getpalette() or [0, 0, 0])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def render_png(spec: FractalSpec, max_segments: int = SEGMENT_BUDGET) -> bytes:
    """Render ``spec`` and encode it as an indexed PNG; the same spec and encoder give the same bytes."""
    indexes, palette = _draw_indexes(spec, max_segments)
    return write_png(indexes, palette, _spec_text(spec))


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
    fades them. Stays indexed (same palette): ~0.6 ms and ~2 KB as a PNG for
    a 1024 px image, against ~1.8 ms and ~8 KB for an RGB reduce.
    :func:`render_with_preview` makes the same preview while rendering.
    """
    factor = max(1, -(-max(image.size) // max_px))
    if factor == 1 or image.mode != "P":
        small = image.copy()
        small.thumbnail((max_px, max_px), Image.Resampling.BOX)
        return small
    return _indexed_image(_max_pool(np.asarray(image), max_px), image.getpalette())


def spec_of_png(data: bytes) -> FractalSpec | None:
    """The spec recorded in a PNG made by :func:`render_png`, or None."""
    with Image.open(io.BytesIO(data)) as image:
        text = getattr(image, "text", {})
        key = text.get(PNG_KEY_CHUNK)
    return FractalSpec.from_key(key) if isinstance(key, str) else None
