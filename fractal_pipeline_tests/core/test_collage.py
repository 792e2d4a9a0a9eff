"""Collage: mixed sources, grid geometry, lazy streaming, bounded memory."""

from __future__ import annotations

import io
import math
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from fractal_pipeline.fractals import FractalSpec, UnreadableImage, make_collage, render_png, thumbnail, tile_size_for
from fractal_pipeline.fractals.collage import BACKGROUND, GAP_PX, MAX_COLLAGE_PX, MAX_TILE_PX, MIN_TILE_PX


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def cell(canvas: Image.Image, index: int, columns: int, tile: int) -> np.ndarray:
    pitch = tile + GAP_PX
    x = GAP_PX + (index % columns) * pitch
    y = GAP_PX + (index // columns) * pitch
    return np.asarray(canvas.crop((x, y, x + tile, y + tile)))


def is_background(pixels: np.ndarray) -> bool:
    return bool((pixels == np.array(BACKGROUND, dtype=np.uint8)).all())


def test_collage_of_mixed_sources(tmp_path) -> None:
    red = Image.new("RGB", (300, 200), (255, 0, 0))
    path = tmp_path / "blue.png"
    Image.new("RGB", (64, 64), (0, 0, 255)).save(path)
    sources = [
        red,
        render_png(FractalSpec("dragon", 6, 128)),
        path,
        ("from a str path", str(path)),
        lambda: Image.new("L", (500, 500), 200),
        ("loader of bytes", lambda: png_bytes(Image.new("RGB", (50, 80), (0, 255, 0)))),
        ("caption", red),  # the same caller-owned image twice
    ]
    placed: list[int] = []
    canvas = make_collage(sources, progress=placed.append)
    columns = rows = 3
    tile = tile_size_for(7)
    assert tile == MAX_TILE_PX
    pitch = tile + GAP_PX
    assert canvas.mode == "RGB"
    assert canvas.size == (columns * pitch + GAP_PX, rows * pitch + GAP_PX)
    assert placed == list(range(1, 8))
    for index in range(7):
        assert not is_background(cell(canvas, index, columns, tile)), index
    for index in (7, 8):
        assert is_background(cell(canvas, index, columns, tile)), index
    # Tile contents: the red image is centred in its cell, aspect kept (256 x 171).
    first = cell(canvas, 0, columns, tile)
    assert first[tile // 2, tile // 2].tolist() == [255, 0, 0]
    assert is_background(first[:20]) and is_background(first[-20:])
    assert cell(canvas, 2, columns, tile)[tile // 2, tile // 2].tolist() == [0, 0, 255]
    # Captions sit at the bottom of their own cell, also under small, centred thumbnails.
    for index in (3, 5, 6):
        assert not is_background(cell(canvas, index, columns, tile)[-tile // 8 :]), index
    for index in (0, 2):  # uncaptioned, smaller than the tile
        assert is_background(cell(canvas, index, columns, tile)[-tile // 8 :]), index
    # Nothing spills into the gaps between cells.
    pixels = np.asarray(canvas)
    for line in range(columns + 1):
        assert is_background(pixels[:, line * pitch : line * pitch + GAP_PX]), line
        assert is_background(pixels[line * pitch : line * pitch + GAP_PX, :]), line
    # The caller's image is still usable after the collage.
    assert red.getpixel((0, 0)) == (255, 0, 0)


def test_collage_columns_and_tile() -> None:
    images = [Image.new("RGB", (40, 40), (i * 30, 0, 0)) for i in range(7)]
    canvas = make_collage(images, tile=32, columns=7)
    assert canvas.size == (7 * (32 + GAP_PX) + GAP_PX, 32 + 2 * GAP_PX)
    canvas = make_collage(images, tile=32, columns=2)
    assert canvas.size == (2 * 34 + GAP_PX, 4 * 34 + GAP_PX)


def test_collage_streams_lazily_and_frees_each_image() -> None:
    pulled = 0
    loads = 0
    alive: list[weakref.ref[Image.Image]] = []
    most_alive = 0

    def count_alive() -> int:
        return sum(ref() is not None for ref in alive)

    def loader(index: int) -> Callable[[], Image.Image]:
        def load() -> Image.Image:
            nonlocal loads, most_alive
            loads += 1
            # The previous full-size image is gone before the next is loaded.
            assert count_alive() == 0
            image = Image.new("RGB", (1024, 1024), (index * 40 % 256, 90, 200))
            alive.append(weakref.ref(image))
            most_alive = max(most_alive, count_alive())
            return image

        return load

    def sources() -> Iterator[tuple[str, Callable[[], Image.Image]]]:
        nonlocal pulled
        for index in range(1_000_000):
            # When asked for the next item, earlier images are no longer referenced.
            assert count_alive() == 0
            pulled += 1
            yield f"tile {index}", loader(index)

    canvas = make_collage(sources(), count=5, tile=64)
    assert pulled == 5, "items past count were pulled"
    assert loads == 5
    assert most_alive == 1
    assert count_alive() == 0
    assert canvas.size == (3 * 66 + GAP_PX, 2 * 66 + GAP_PX)


def test_collage_stops_at_count_for_short_iterables() -> None:
    images = iter([Image.new("RGB", (20, 20), (255, 0, 0))] * 3)
    canvas = make_collage(images, count=4, tile=32)
    assert canvas.size == (2 * 34 + GAP_PX, 2 * 34 + GAP_PX)
    assert is_background(cell(canvas, 3, 2, 32))
    assert not is_background(cell(canvas, 2, 2, 32))


def test_collage_needs_count_for_iterators() -> None:
    def gen() -> Iterator[Image.Image]:
        yield Image.new("RGB", (20, 20))

    for images in (gen(), iter([Image.new("RGB", (20, 20))]), map(lambda x: x, [])):
        with pytest.raises(ValueError, match="count"):
            make_collage(images)


def test_collage_refuses_empty() -> None:
    with pytest.raises(ValueError, match="count"):
        make_collage([])
    with pytest.raises(ValueError, match="count"):
        make_collage([Image.new("RGB", (20, 20))], count=0)
    with pytest.raises(ValueError, match="images"):
        make_collage(iter([]), count=3)


def test_thumbnail_fits_the_tile() -> None:
    thumb = thumbnail(lambda: Image.new("P", (400, 100)), 64)
    assert thumb.mode == "RGB"
    assert thumb.size == (64, 16)
    assert thumbnail(png_bytes(Image.new("RGB", (30, 30))), 64).size == (30, 30)


def test_tile_size_keeps_canvas_bounded() -> None:
    assert tile_size_for(1) == MAX_TILE_PX
    assert tile_size_for(10_000) == 38
    for count in [*range(1, 2000), 5000, 9999, 10_000]:
        tile = tile_size_for(count)
        columns = math.ceil(math.sqrt(count))
        assert MIN_TILE_PX <= tile <= MAX_TILE_PX
        assert columns * (tile + GAP_PX) + GAP_PX <= MAX_COLLAGE_PX + GAP_PX, count
    # Tiles only shrink as the count grows.
    sizes = [tile_size_for(count) for count in range(1, 10_001)]
    assert sizes == sorted(sizes, reverse=True)


def test_collage_of_10000_tiles_stays_within_4096_px() -> None:
    source = Image.new("RGB", (8, 8), (255, 255, 0))
    canvas = make_collage((source for _ in range(10_000)), count=10_000, captions=False)
    assert max(canvas.size) <= MAX_COLLAGE_PX + GAP_PX
    assert canvas.size == (100 * 40 + GAP_PX, 100 * 40 + GAP_PX)


def _damaged(data: bytes) -> bytes:
    """``data`` with its compressed pixels overwritten (its chunk checksums no longer match)."""
    middle = len(data) // 2
    return data[:middle] + bytes(64) + data[middle + 64 :]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"not a png",
        render_png(FractalSpec("dragon", 8, size=64))[:200],
        _damaged(render_png(FractalSpec("dragon", 8, size=64))),
    ],
    ids=["empty", "text", "truncated", "damaged"],
)
def test_an_unreadable_image_is_reported_and_left_out_or_raised(bad: bytes) -> None:
    good = [(f"good-{n}", render_png(FractalSpec("levy_c", 6 + n, size=64))) for n in range(3)]
    items = [good[0], ("bad", bad), good[1], good[2]]
    reported: list[tuple[str, UnreadableImage]] = []
    placed: list[int] = []
    canvas = make_collage(
        items, tile=32, columns=2, progress=placed.append, on_unreadable=lambda k, e: reported.append((k, e))
    )
    assert [key for key, _ in reported] == ["bad"]
    assert "object at 0x" not in str(reported[0][1])  # says what the bytes are, not which Python object held them
    assert placed == [1, 2, 3]  # the three good ones, in the first three cells
    pitch = 32 + GAP_PX
    last_cell = canvas.crop((GAP_PX + pitch, GAP_PX + pitch, GAP_PX + pitch + 32, GAP_PX + pitch + 32))
    assert [color for _, color in last_cell.getcolors() or []] == [BACKGROUND]  # the fourth cell stays empty
    with pytest.raises(UnreadableImage):
        make_collage(items, tile=32, columns=2)  # without on_unreadable, it is the caller's error
