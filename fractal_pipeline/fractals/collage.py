"""Tile many fractal images into one collage, streaming: thumbnails only."""

from __future__ import annotations

import io
import itertools
import math
import os
from collections.abc import Callable, Iterable, Sized
from typing import TypeAlias

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from .png import read_png

#: What a tile can be made from: an image, PNG bytes, a path, or a loader
#: returning one of those (called when the tile is drawn, not before).
ImageSource: TypeAlias = Image.Image | bytes | str | os.PathLike[str] | Callable[[], Image.Image | bytes]
#: A tile with a caption.
CaptionedSource = tuple[str, ImageSource]

#: The collage is at most this wide; tiles shrink as the count grows.
MAX_COLLAGE_PX = 4096
MAX_TILE_PX = 256
MIN_TILE_PX = 16
GAP_PX = 2
BACKGROUND = (12, 12, 16)


def tile_size_for(count: int, max_px: int = MAX_COLLAGE_PX) -> int:
    """Tile edge for ``count`` tiles: as large as fits a square grid ``max_px``
    wide, between 16 and 256 px (10,000 tiles -> 38 px, a 4 MB canvas)."""
    columns = max(1, math.ceil(math.sqrt(max(count, 1))))
    return max(MIN_TILE_PX, min(MAX_TILE_PX, max_px // columns - GAP_PX))


class UnreadableImage(ValueError):
    """A tile's bytes are not an image Pillow can decode (an empty or damaged file)."""


def _open(source: ImageSource) -> Image.Image:
    if callable(source) and not isinstance(source, Image.Image):
        source = source()
    if isinstance(source, Image.Image):
        return source
    if not isinstance(source, bytes):
        with open(source, "rb") as file:
            source = file.read()
    try:
        # The core's own PNGs (every stored image) decode faster by read_png than by Pillow.
        return read_png(source) or Image.open(io.BytesIO(source))
    except UnidentifiedImageError as exc:  # its message names only the in-memory file object
        raise UnreadableImage(f"{len(source):,} bytes in no image format Pillow reads") from exc
    except Exception as exc:  # Pillow and zlib raise many kinds for bad bytes: all mean the same here
        raise UnreadableImage(f"{len(source):,} bytes that are not an image ({exc})") from exc


def _shrink(image: Image.Image, tile: int) -> Image.Image:
    """``image`` shrunk to fit a ``tile`` square by a box filter, aspect kept.

    Where the image is a whole multiple of the result (1024 px into 256 px tiles), one
    ``reduce`` does it: the box average ``thumbnail`` makes in two passes (a reduce and a
    resize), in one. Other sizes go through ``thumbnail``: a whole-factor ``reduce`` followed by
    a resize would shift their pixels visibly.
    """
    width, height = image.size
    factor = max(width, height) // tile
    if factor > 1 and max(width, height) == factor * tile and width % factor == 0 and height % factor == 0:
        return image.reduce(factor)
    image.thumbnail((tile, tile), Image.Resampling.BOX)
    return image


def thumbnail(source: ImageSource, tile: int) -> Image.Image:
    """Decode one source and shrink it to fit a ``tile`` square (RGB).

    Images opened here (from bytes, a path or a loader) are closed; a PIL
    image passed in belongs to the caller and is left untouched.
    """
    image = _open(source)
    owned = image is not source
    try:
        if owned:
            image.draft("RGB", (tile, tile))
        return _shrink(image.convert("RGB"), tile)
    except OSError as exc:  # Pillow decodes lazily: a damaged file can fail only here
        raise UnreadableImage(f"a damaged image ({exc})") from exc
    finally:
        if owned:
            image.close()


def fit_caption(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float) -> str:
    """``text`` shortened with an ellipsis so it fits ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def make_collage(
    images: Iterable[ImageSource | CaptionedSource],
    *,
    count: int | None = None,
    tile: int | None = None,
    columns: int | None = None,
    captions: bool = True,
    progress: Callable[[int], None] | None = None,
    on_unreadable: Callable[[str, UnreadableImage], None] | None = None,
) -> Image.Image:
    """Tile ``images`` into one RGB collage, consuming the iterable lazily.

    Each item is an image source (PIL image, PNG bytes, path, or loader) or a
    ``(caption, source)`` pair. Only one full-size image is decoded at a time;
    what stays in memory is the canvas. The grid needs the tile count up
    front: pass ``count``, or a sized collection. Items past ``count`` are not
    read. ``progress`` is called with the number of tiles placed so far.
    With ``on_unreadable``, an item that does not decode is left out and reported
    to it (with its caption) instead of raising :class:`UnreadableImage`.
    """
    if count is None:
        if not isinstance(images, Sized):
            raise ValueError("count: make_collage needs count= for an iterator without len()")
        count = len(images)
    if count < 1:
        raise ValueError("count: a collage needs at least one image")
    tile = tile or tile_size_for(count)
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    pitch = tile + GAP_PX
    canvas = Image.new("RGB", (columns * pitch + GAP_PX, rows * pitch + GAP_PX), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(8, tile // 12))
    placed = 0
    for item in itertools.islice(images, count):  # never pulls items past count
        caption, source = item if isinstance(item, tuple) else (None, item)
        try:
            thumb = thumbnail(source, tile)
        except UnreadableImage as exc:
            if on_unreadable is None:
                raise
            on_unreadable(caption or "", exc)
            continue
        x = GAP_PX + (placed % columns) * pitch
        y = GAP_PX + (placed // columns) * pitch
        canvas.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        if captions and caption and tile >= 64:
            # At the bottom of the cell, not of the (possibly smaller, centred) thumbnail.
            text = fit_caption(caption, font, tile - 6)
            draw.text((x + 3, y + tile - tile // 12 - 4), text, fill=(230, 230, 230), font=font)
        placed += 1
        if progress is not None:
            progress(placed)
    if placed == 0:
        raise ValueError("images: no images to tile")
    return canvas
