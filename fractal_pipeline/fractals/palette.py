"""Colour palettes: a function from position along the path (0..1) to RGB."""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Mapping
from types import MappingProxyType

RGB = tuple[int, int, int]


def _rgb(r: float, g: float, b: float) -> RGB:
    return (round(255 * r), round(255 * g), round(255 * b))


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def _rainbow(t: float) -> RGB:
    # One full HSV hue turn along the path, as the original example cycled
    # its bands through the hue circle.
    return _rgb(*colorsys.hsv_to_rgb(t % 1.0, 0.85, 1.0))


def _fire(t: float) -> RGB:
    # Deep red -> orange -> yellow -> near white.
    return _rgb(_clamp(0.55 + 1.5 * t), _clamp(1.6 * t - 0.15), _clamp(2.0 * t - 1.1))


def _ice(t: float) -> RGB:
    # Deep blue -> cyan -> white.
    return _rgb(_clamp(1.6 * t - 0.6), _clamp(0.35 + 0.7 * t), 1.0)


def _forest(t: float) -> RGB:
    return _rgb(*colorsys.hsv_to_rgb(0.22 + 0.18 * t, 0.8, 0.55 + 0.45 * t))


def _mono(t: float) -> RGB:
    return (235, 235, 235)


#: Palette name -> colour function, read-only. ``rainbow`` is the default.
PALETTES: Mapping[str, Callable[[float], RGB]] = MappingProxyType(
    {
        "rainbow": _rainbow,
        "fire": _fire,
        "ice": _ice,
        "forest": _forest,
        "mono": _mono,
    }
)

DEFAULT_PALETTE = "rainbow"
