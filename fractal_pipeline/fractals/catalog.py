"""The 26 L-system kinds: axiom, rewriting rules, turn angle and depth limits.

Turtle alphabet: ``F`` draws one segment forward, ``+`` turns right by the
angle, ``-`` turns left, every other symbol only takes part in rewriting.

The definitions are the reference data of the original batch-fractal example
(``shared/lsystems.json``); ``random_depths`` is ours: the depth range that
gives a good-looking image in bounded time, used by :func:`random_specs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: Hard cap on drawn segments for one image (4,194,304 = 2**22). A spec over
#: it is refused before any work; callers may pass a lower budget.
SEGMENT_BUDGET = 1 << 22

#: Rewriting iterations are never run past this, whatever the rules.
ABSOLUTE_MAX_DEPTH = 64

DRAW = "F"
TURN_RIGHT = "+"
TURN_LEFT = "-"


@dataclass(frozen=True)
class LSystem:
    """One kind of fractal: an L-system plus the depths that make sense for it."""

    name: str
    axiom: str
    rules: Mapping[str, str]
    angle: int
    default_depth: int
    random_depths: tuple[int, int]
    max_depth: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))
        depth = 0
        while depth < ABSOLUTE_MAX_DEPTH and self.symbol_counts(depth + 1)[DRAW] <= SEGMENT_BUDGET:
            depth += 1
        object.__setattr__(self, "max_depth", depth)

    def symbol_counts(self, depth: int) -> dict[str, int]:
        """Occurrences of every symbol after ``depth`` rewrites, by count recurrence.

        Never expands the string: cost is O(depth x alphabet), so asking about
        depth 40 takes microseconds.
        """
        counts: dict[str, int] = {DRAW: 0}
        for symbol in self.axiom:
            counts[symbol] = counts.get(symbol, 0) + 1
        for _ in range(depth):
            nxt: dict[str, int] = {DRAW: 0}
            for symbol, n in counts.items():
                if n:
                    for produced in self.rules.get(symbol, symbol):
                        nxt[produced] = nxt.get(produced, 0) + n
            counts = nxt
        return counts

    def segment_count(self, depth: int) -> int:
        """Number of drawn segments (``F`` symbols) at ``depth``."""
        return self.symbol_counts(depth)[DRAW]


def _kind(
    name: str,
    axiom: str,
    rules: dict[str, str],
    angle: int,
    default_depth: int,
    random_depths: tuple[int, int],
) -> LSystem:
    return LSystem(name, axiom, rules, angle, default_depth, random_depths)


_SQUARE = "F+F+F+F"
_DRAGON = {"X": "X+YF+", "Y": "-FX-Y"}
_HILBERT = {"L": "+RF-LFL-FR+", "R": "-LF+RFR+FL-"}

_ALL = (
    _kind("board", _SQUARE, {"F": "FF+F+F+F+FF"}, 90, 3, (2, 4)),
    _kind("box", "F-F-F-F", {"F": "F-F+F+F-F"}, 90, 4, (3, 5)),
    _kind("cross", _SQUARE, {"F": "F+FF++F+F"}, 90, 3, (3, 5)),
    _kind("cross2", _SQUARE, {"F": "F+F-F+F+F"}, 90, 3, (3, 5)),
    _kind("crystal", _SQUARE, {"F": "FF+F++F+F"}, 90, 3, (3, 5)),
    _kind("dragon", "FX", _DRAGON, 90, 8, (8, 14)),
    _kind(
        "hilbert2",
        "X",
        {"X": "XFYFX+F+YFXFY-F-XFYFX", "Y": "YFXFY-F-XFYFX+F+YFXFY"},
        90,
        4,
        (2, 4),
    ),
    _kind("hilberts", "L", _HILBERT, 90, 4, (3, 6)),
    _kind("koch_island", _SQUARE, {"F": "F-F+F+FFF-F-F+F"}, 90, 2, (2, 3)),
    _kind("koch_snowflake", "F--F--F", {"F": "F+F--F+F"}, 60, 4, (3, 5)),
    _kind("krishna_anklets", " -X--X", {"X": "XFX--XFX"}, 45, 3, (3, 6)),
    _kind("levy_c", "F", {"F": "+F--F+"}, 45, 10, (8, 14)),
    _kind("moore", "LFL-F-LFL", _HILBERT, 90, 2, (2, 5)),
    _kind("peano", "F", {"F": "F+F-F-F-F+F+F+F-F"}, 90, 4, (2, 4)),
    _kind(
        "peano_gosper",
        "FX",
        {"X": "X+YF++YF-FX--FXFX-YF+", "Y": "-FX+YFYF++YF+FX--FX-Y"},
        60,
        4,
        (2, 4),
    ),
    _kind("pentaplexity", "F++F++F++F++F", {"F": "F++F++F+++++F-F++F"}, 36, 1, (1, 3)),
    _kind("rings", _SQUARE, {"F": "FF+F+F+F+F+F-F"}, 90, 2, (2, 4)),
    _kind(
        "segment_curve",
        _SQUARE,
        {"F": "-F+F-F-F+F+FF-F+F+FF+F-F-FF+FF-FF+F+F-FF-F-F+FF-F-F+F+F-F+"},
        90,
        2,
        (1, 3),
    ),
    _kind("sierpinski", "F+XF+F+XF", {"X": "XF-F+F-XF+F+XF-F+F-X"}, 90, 4, (3, 5)),
    _kind("sierpinski_arrowhead", "YF", {"X": "YF+XF+Y", "Y": "XF-YF-X"}, 60, 4, (3, 7)),
    _kind(
        "sierpinski_sieve",
        "FXF--FF--FF",
        {"F": "FF", "X": "--FXF++FXF++FXF--"},
        60,
        5,
        (3, 6),
    ),
    _kind("ter_dragon", "F", {"F": "F-F+F"}, 120, 8, (5, 9)),
    _kind("three_dragon", "FX+FX+FX", _DRAGON, 90, 9, (8, 13)),
    _kind("tiles", _SQUARE, {"F": "FF+F-F+F+FF"}, 90, 3, (2, 4)),
    _kind("triangle", "F+F+F", {"F": "F-F+F"}, 120, 6, (4, 7)),
    _kind("twin_dragon", "FX+FX", _DRAGON, 90, 9, (8, 13)),
)

#: Read-only mapping from kind name to its :class:`LSystem`, in name order.
KINDS: Mapping[str, LSystem] = MappingProxyType({k.name: k for k in _ALL})
