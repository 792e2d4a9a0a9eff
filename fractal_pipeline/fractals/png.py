"""PNG bytes: the indexed PNGs the core writes (deflated with zlib-ng, zlib where it is missing), and reading them back.

Every decoder reads them (IHDR, PLTE, tEXt, IDAT, IEND); the text chunks carry the spec, its key and the
encoder that made the bytes.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image, PngImagePlugin

from .spec import FractalSpec

#: Deflate level for PNGs zlib writes (the fallback, and Pillow for images that are not indexed): the
#: fastest level that still finds the long runs of background these line drawings are made of.
PNG_COMPRESS_LEVEL: Final = 1
#: zlib-ng's level: its level 1 (``deflate_quick``) codes with fixed Huffman tables and makes these files
#: larger than zlib's level 1; level 2 (``deflate_fast``, zlib's greedy parse) makes them smaller, still
#: several times faster than zlib. benchmarks/bench_render.py reports the sizes.
ZLIB_NG_LEVEL: Final = 2
#: PNG text chunk that carries the spec, so a PNG found in a bucket says what it is.
PNG_SPEC_CHUNK: Final = "fractal_pipeline.spec"
PNG_KEY_CHUNK: Final = "fractal_pipeline.key"
#: PNG text chunk naming the deflate library, its version and level that made the bytes (the same spec
#: gives the same bytes only with the same encoder).
PNG_ENCODER_CHUNK: Final = "fractal_pipeline.encoder"
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def _load_zlib_ng() -> tuple[Any, str]:
    """zlib-ng's zlib interface and the encoder it makes, or (None, "") where ``zlib-ng`` is not installed.

    The encoder names the zlib-ng library that the ``zlib-ng`` package bundles (its code makes the
    bytes), the package's version and the level.
    """
    try:
        import zlib_ng
        from zlib_ng import zlib_ng as zlib_ng_zlib
    except ImportError:
        return None, ""
    library = zlib_ng_zlib.ZLIBNG_RUNTIME_VERSION
    return zlib_ng_zlib, f"zlib-ng {library} (python zlib-ng {zlib_ng.__version__}), level {ZLIB_NG_LEVEL}"


# zlib-ng picks some of its deflate code by CPU features at run time (SSE2, AVX2, AVX-512 or NEON
# versions of the match comparison, the window slide and adler32), but every version computes the same
# values and, since zlib-ng 2.2, the hash is one C function for every CPU, so the bytes depend on the
# input, the library version and the level only (docs/performance.md, "Issue 16: a deterministic
# encoder"). pyproject.toml and deploy/Dockerfile.lambda pin one zlib-ng version.
_zlib_ng, _zlib_ng_encoder = _load_zlib_ng()
#: The encoder this process writes PNGs with, as recorded in their :data:`PNG_ENCODER_CHUNK`.
PNG_ENCODER: Final = _zlib_ng_encoder or f"zlib {zlib.ZLIB_RUNTIME_VERSION}, level {PNG_COMPRESS_LEVEL}"
_fallback_reported = False


def deflate(data: npt.NDArray[np.uint8]) -> bytes:
    """zlib-format deflate of ``data``: zlib-ng when installed, else zlib (said once, as a warning)."""
    global _fallback_reported
    if _zlib_ng is not None:
        return bytes(_zlib_ng.compress(data, ZLIB_NG_LEVEL))
    if not _fallback_reported:
        _fallback_reported = True
        warnings.warn(
            "zlib-ng is not installed: PNGs are deflated with zlib (slower, other bytes); pip install zlib-ng",
            RuntimeWarning,
            stacklevel=3,
        )
    return zlib.compress(data.data, PNG_COMPRESS_LEVEL)


def inflate(data: bytes) -> bytes:
    """The inverse of :func:`deflate` (zlib-ng when installed: faster than zlib); raises zlib.error."""
    if _zlib_ng is not None:
        try:
            return bytes(_zlib_ng.decompress(data))
        except _zlib_ng.error as exc:
            raise zlib.error(str(exc)) from exc
    return zlib.decompress(data)


def encode_png(image: Image.Image, spec: FractalSpec | None = None) -> bytes:
    """PNG bytes of ``image``; deterministic for the same pixels, spec and :data:`PNG_ENCODER`.

    An indexed ("P") image, what :func:`render_indexed` draws, is written by :func:`write_png`;
    another mode goes through Pillow's encoder.
    """
    text = spec_text(spec)
    if image.mode == "P":
        return write_png(np.asarray(image), image.getpalette() or [0, 0, 0], text)
    info = PngImagePlugin.PngInfo()
    for keyword, value in text:
        info.add_text(keyword, value)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def spec_text(spec: FractalSpec | None) -> list[tuple[str, str]]:
    """The text chunks of a rendered PNG: key, spec and the encoder that made it."""
    if spec is None:
        return []
    return [
        (PNG_KEY_CHUNK, spec.key),
        (PNG_SPEC_CHUNK, json.dumps(spec.as_dict(), sort_keys=True)),
        (PNG_ENCODER_CHUNK, PNG_ENCODER),
    ]


def write_png(indexes: npt.NDArray[np.uint8], palette: Sequence[int], text: Sequence[tuple[str, str]] = ()) -> bytes:
    """An 8-bit indexed PNG of ``indexes`` (height x width) with ``palette`` and ``text`` chunks.

    Written here rather than by Pillow: no filter (palette images compress best unfiltered) and one
    deflate call over all scanlines (:func:`deflate`). Every PNG decoder reads it (IHDR, PLTE, tEXt,
    IDAT, IEND), and the same pixels, text and encoder give the same bytes.
    """
    height, width = indexes.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "none" for every scanline
    rows[:, 1:] = indexes
    return png_from_scanlines(rows.ravel(), width, height, palette, text)


def png_from_scanlines(
    scanlines: npt.NDArray[np.uint8], width: int, height: int, palette: Sequence[int], text: Sequence[tuple[str, str]]
) -> bytes:
    """The PNG of ``scanlines`` (flat: every row a filter byte and ``width`` palette indexes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    chunks = [PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"PLTE", bytes(palette[: 3 * 256]))]
    chunks += [_chunk(b"tEXt", f"{keyword}\0{value}".encode("latin-1")) for keyword, value in text]
    chunks += [_chunk(b"IDAT", deflate(scanlines)), _chunk(b"IEND", b"")]
    return b"".join(chunks)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def indexed_png(image: Image.Image) -> bytes:
    """PNG bytes of a small "P" image (a :func:`preview`), with no text chunks (:func:`write_png`)."""
    if image.mode != "P":
        raise ValueError(f"image mode: {image.mode!r} is not an indexed image; use encode_png")
    return write_png(np.asarray(image), image.getpalette() or [0, 0, 0])


def indexed_image(indexes: npt.NDArray[np.uint8], palette: Sequence[int] | None) -> Image.Image:
    """A "P" image of ``indexes`` (a height x width array) with ``palette``."""
    height, width = indexes.shape
    image = Image.new("P", (width, height), 0)
    if palette is not None:
        image.putpalette(palette)
    image.frombytes(np.ascontiguousarray(indexes))  # one copy, into Pillow's block-reusing memory
    return image


def scanlines_image(scanlines: npt.NDArray[np.uint8], width: int, height: int, palette: Sequence[int]) -> Image.Image:
    """A "P" image of PNG ``scanlines`` (flat, each row a filter byte 0 and ``width`` indexes)."""
    image = Image.new("P", (width, height), 0)
    image.putpalette(palette)
    # Pillow reads the rows ``width + 1`` bytes apart itself: one copy, none to make them contiguous first.
    image.frombytes(scanlines.data[1:], "raw", "P", width + 1)
    return image


def read_png(data: bytes) -> Image.Image | None:
    """A PNG as :func:`write_png` writes them (8-bit palette, not interlaced, no filter) as a "P"
    image, or None for any other PNG (for Pillow to open).

    Inflated with zlib-ng and handed to Pillow row by row, which is faster than Pillow's own decoder
    (the collage reads every stored image). Text chunks are skipped.
    """
    if not data.startswith(PNG_SIGNATURE):
        return None
    header = palette = b""
    pieces = []
    position = len(PNG_SIGNATURE)
    while True:
        if position + 12 > len(data):
            return None
        (length,) = struct.unpack_from(">I", data, position)
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if len(body) != length or data[position + 8 + length : position + 12 + length] != struct.pack(
            ">I", zlib.crc32(body, zlib.crc32(kind))
        ):
            return None
        position += 12 + length
        if kind == b"IEND":
            break
        if kind == b"IHDR":
            header = body
        elif kind == b"PLTE":
            palette = body
        elif kind == b"IDAT":
            pieces.append(body)
        elif kind != b"tEXt":
            return None  # transparency, gamma, ...: Pillow knows what to do with them
    if len(header) != 13 or not palette or len(palette) % 3:
        return None
    width, height, depth, colour, *methods = struct.unpack(">IIBBBBB", header)
    if (depth, colour, *methods) != (8, 3, 0, 0, 0) or not 0 < width * height <= (Image.MAX_IMAGE_PIXELS or 1 << 62):
        return None
    try:
        scanlines = np.frombuffer(inflate(b"".join(pieces)), dtype=np.uint8)
    except zlib.error:
        return None
    if scanlines.size != height * (width + 1) or scanlines[:: width + 1].any():
        return None
    return scanlines_image(scanlines, width, height, palette)


def spec_of_png(data: bytes) -> FractalSpec | None:
    """The spec recorded in a PNG made by :func:`render_png`, or None."""
    with Image.open(io.BytesIO(data)) as image:
        text = getattr(image, "text", {})
        key = text.get(PNG_KEY_CHUNK)
    return FractalSpec.from_key(key) if isinstance(key, str) else None
