"""The look of every kind is held against golden renders (default depth, 1024 px, rainbow).

The golden PNGs were rendered by the core before its speed-up work and are kept in the test
data. A render may differ in bytes (another encoder, another rasterisation order), not in look:
per kind, the coverage masks (non-background pixels) overlap with IoU >= 0.9 and the mean
absolute RGB difference is at most 10.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fractal_pipeline.fractals import KINDS, FractalSpec, render_png

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
MIN_IOU = 0.9
MAX_MEAN_RGB_DIFF = 10.0


def _rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def look_difference(new: bytes, golden: bytes) -> tuple[float, float]:
    """(IoU of the coverage masks, mean absolute RGB difference) of two renders of one spec."""
    a, b = _rgb(new), _rgb(golden)
    assert a.shape == b.shape
    mask_a, mask_b = a.any(axis=2), b.any(axis=2)
    union = np.logical_or(mask_a, mask_b).sum()
    iou = float(np.logical_and(mask_a, mask_b).sum() / union) if union else 1.0
    return iou, float(np.abs(a - b).mean())


def test_there_is_a_golden_render_of_every_kind() -> None:
    assert sorted(path.stem for path in GOLDEN.glob("*.png")) == sorted(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_render_looks_like_its_golden_image(kind: str) -> None:
    iou, diff = look_difference(
        render_png(FractalSpec(kind, KINDS[kind].default_depth)), (GOLDEN / f"{kind}.png").read_bytes()
    )
    assert iou >= MIN_IOU, f"{kind}: coverage IoU {iou:.3f} < {MIN_IOU}"
    assert diff <= MAX_MEAN_RGB_DIFF, f"{kind}: mean RGB difference {diff:.2f} > {MAX_MEAN_RGB_DIFF}"


def test_the_look_measure_catches_a_changed_look() -> None:
    """The thresholds are not vacuous: another palette, or the drawing moved by 6 px, fails them."""
    golden = (GOLDEN / "hilbert2.png").read_bytes()
    other_palette = render_png(FractalSpec("hilbert2", KINDS["hilbert2"].default_depth, palette="fire"))
    assert look_difference(other_palette, golden)[1] > MAX_MEAN_RGB_DIFF
    shifted = np.roll(_rgb(golden), 6, axis=1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(shifted).save(out, format="PNG")
    assert look_difference(out.getvalue(), golden)[0] < MIN_IOU
