"""FractalSpec: what to render, validated, with a readable invertible key."""

from __future__ import annotations

import difflib
import random
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .catalog import KINDS, SEGMENT_BUDGET
from .palette import DEFAULT_PALETTE, PALETTES

DEFAULT_SIZE = 1024
MIN_SIZE = 16
MAX_SIZE = 8192
MAX_KEY_LENGTH = 64
#: Most specs one request may ask for (random batch, spec file, CLI).
MAX_SPECS = 10_000

_KEY_RE = re.compile(r"(?P<kind>[a-z][a-z0-9_]*?)_(?P<depth>0|[1-9][0-9]{0,2})(?P<options>(?:-[a-z0-9]+)*)")
_SIZE_OPT_RE = re.compile(r"(?P<size>[1-9][0-9]{0,3})px")
FIELDS = ("kind", "depth", "size", "palette")


class InvalidSpec(ValueError):
    """A spec, key or request is not acceptable; the message names field, value and fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value.lower(), list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _as_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidSpec(field, f"{value!r} is not a whole number")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,9}", text):
            raise InvalidSpec(field, f"{value!r} is not a whole number")
        return int(text)
    return value


@dataclass(frozen=True, order=True)
class FractalSpec:
    """One image to render. Immutable, hashable, validated on construction.

    ``key`` is ``<kind>_<depth>`` for the default size and palette (e.g.
    ``dragon_12``); other options are appended, e.g. ``dragon_12-512px-fire``.
    """

    kind: str
    depth: int
    size: int = DEFAULT_SIZE
    palette: str = DEFAULT_PALETTE

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            shown = self.kind if isinstance(self.kind, str) else repr(self.kind)
            hint = _did_you_mean(shown, KINDS) if isinstance(self.kind, str) else ""
            raise InvalidSpec(
                "kind",
                f"unknown kind {shown!r}{hint} (run `fractal-pipeline kinds` for the {len(KINDS)} kinds)",
            )
        lsys = KINDS[self.kind]
        if isinstance(self.depth, bool) or not isinstance(self.depth, int):
            raise InvalidSpec("depth", f"{self.depth!r} is not a whole number")
        if not 0 <= self.depth <= lsys.max_depth:
            raise InvalidSpec(
                "depth",
                f"{self.depth} is out of range for {self.kind}: allowed 0..{lsys.max_depth} "
                f"(the {SEGMENT_BUDGET:,}-segment budget); default is {lsys.default_depth}",
            )
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise InvalidSpec("size", f"{self.size!r} is not a whole number of pixels")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise InvalidSpec("size", f"{self.size} px is out of range: allowed {MIN_SIZE}..{MAX_SIZE}")
        if not isinstance(self.palette, str) or self.palette not in PALETTES:
            hint = _did_you_mean(self.palette, PALETTES) if isinstance(self.palette, str) else ""
            raise InvalidSpec(
                "palette",
                f"unknown palette {self.palette!r}{hint}; choose one of {', '.join(PALETTES)}",
            )

    @property
    def key(self) -> str:
        """Readable, invertible, filesystem- and S3-safe identifier of this spec."""
        key = f"{self.kind}_{self.depth}"
        if self.size != DEFAULT_SIZE:
            key += f"-{self.size}px"
        if self.palette != DEFAULT_PALETTE:
            key += f"-{self.palette}"
        return key

    @property
    def segments(self) -> int:
        """Number of segments this spec draws."""
        return KINDS[self.kind].segment_count(self.depth)

    @classmethod
    def from_key(cls, key: str) -> FractalSpec:
        """Invert :attr:`key`. Only canonical keys are accepted (one key per spec)."""
        if not isinstance(key, str):
            raise InvalidSpec("key", f"{key!r} is not a string")
        shown = key if len(key) <= MAX_KEY_LENGTH else key[:MAX_KEY_LENGTH] + "..."
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidSpec("key", f"{shown!r} is longer than {MAX_KEY_LENGTH} characters")
        match = _KEY_RE.fullmatch(key)
        if not match:
            raise InvalidSpec(
                "key",
                f"{shown!r} is not a spec key; expected <kind>_<depth>[-<size>px][-<palette>], e.g. 'dragon_12'",
            )
        size = DEFAULT_SIZE
        palette = DEFAULT_PALETTE
        options = [o for o in match["options"].split("-") if o]
        for option in options:
            size_match = _SIZE_OPT_RE.fullmatch(option)
            if size_match:
                size = int(size_match["size"])
            elif option in PALETTES:
                palette = option
            else:
                raise InvalidSpec(
                    "key",
                    f"{shown!r} has unknown option {option!r}; options are <size>px and one of {', '.join(PALETTES)}",
                )
        spec = cls(match["kind"], int(match["depth"]), size, palette)
        if spec.key != key:
            raise InvalidSpec("key", f"{shown!r} is not canonical; use {spec.key!r}")
        return spec

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> FractalSpec:
        """Build a spec from loosely typed fields (a CSV row, a JSON object).

        ``kind`` and ``depth`` are required; ``size`` and ``palette`` may be
        missing or empty. Numbers may be given as digit strings.
        """
        if not isinstance(fields, Mapping):
            raise InvalidSpec("spec", f"expected an object with {', '.join(FIELDS)}, got {type(fields).__name__}")
        unknown = sorted(str(k) for k in fields if k not in FIELDS)
        if unknown:
            raise InvalidSpec(unknown[0], f"unknown field; allowed fields are {', '.join(FIELDS)}")
        for required in ("kind", "depth"):
            if fields.get(required) in (None, ""):
                raise InvalidSpec(required, "is missing")
        kind = fields["kind"]
        if isinstance(kind, str):
            kind = kind.strip()
        size = fields.get("size")
        palette = fields.get("palette")
        if isinstance(palette, str):
            palette = palette.strip()
        return cls(
            kind=kind,
            depth=_as_int("depth", fields["depth"]),
            size=DEFAULT_SIZE if size in (None, "") else _as_int("size", size),
            palette=DEFAULT_PALETTE if palette in (None, "") else palette,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain fields, e.g. for JSON and PNG text chunks."""
        return {"kind": self.kind, "depth": self.depth, "size": self.size, "palette": self.palette}


def segment_count(spec: FractalSpec) -> int:
    """Segments ``spec`` draws, from the count recurrence (never expands the string)."""
    return spec.segments


def check_budget(spec: FractalSpec, max_segments: int = SEGMENT_BUDGET) -> int:
    """Return the segment count, or raise :class:`InvalidSpec` if it exceeds ``max_segments``."""
    segments = spec.segments
    if segments > max_segments:
        raise InvalidSpec(
            "depth",
            f"{spec.key} draws {segments:,} segments, over the budget of {max_segments:,}; lower the depth",
        )
    return segments


def _random_space(kinds: Iterable[str] | None, size: int, palette: str | None) -> list[FractalSpec]:
    names = sorted(KINDS) if kinds is None else sorted(set(kinds))
    if not names:
        raise InvalidSpec("kinds", "is empty; leave it unset for all kinds or name at least one")
    for name in names:
        FractalSpec(name, 0)  # raises the did-you-mean error for unknown kinds
    palettes = sorted(PALETTES) if palette is None else [palette]
    return [
        FractalSpec(name, depth, size, pal)
        for name in names
        for depth in range(KINDS[name].random_depths[0], KINDS[name].random_depths[1] + 1)
        for pal in palettes
    ]


def max_random_specs(kinds: Iterable[str] | None = None, palette: str | None = DEFAULT_PALETTE) -> int:
    """How many distinct specs :func:`random_specs` can draw for these kinds and palette (any size)."""
    return min(MAX_SPECS, len(_random_space(kinds, DEFAULT_SIZE, palette)))


def check_random_count(count: object, kinds: Iterable[str] | None = None, palette: str | None = DEFAULT_PALETTE) -> int:
    """``count`` as an int if :func:`random_specs` can draw that many distinct specs, else
    :class:`InvalidSpec` naming the real limit and advice that fits the options given."""
    count = _as_int("count", count)
    limit = max_random_specs(kinds, palette)
    if 1 <= count <= limit:
        return count
    if count < 1 or limit == MAX_SPECS:
        raise InvalidSpec("count", f"{count:,} is out of range: allowed 1..{limit:,}")
    fixes = ["ask for fewer"]
    if kinds is not None and len(set(kinds)) < len(KINDS):
        fixes.append("name more kinds")
    if palette is not None:
        fixes.append("use a random palette")
    chosen = ("these kinds" if kinds is not None else "all 26 kinds") + (
        " with a random palette" if palette is None else f" in the {palette} palette"
    )
    advice = fixes[0] if len(fixes) == 1 else ", ".join(fixes[:-1]) + " or " + fixes[-1]
    raise InvalidSpec(
        "count", f"{count:,} is out of range: allowed 1..{limit:,}, the distinct specs of {chosen}; {advice}"
    )


def random_specs(
    count: int,
    seed: int | None = None,
    kinds: Iterable[str] | None = None,
    size: int = DEFAULT_SIZE,
    palette: str | None = DEFAULT_PALETTE,
) -> list[FractalSpec]:
    """``count`` distinct random specs; the same seed gives the same list.

    Depths come from each kind's ``random_depths`` range (a good-looking image
    in bounded time). ``palette=None`` picks a palette per spec at random.
    """
    count = check_random_count(count, kinds, palette)
    space = _random_space(kinds, size, palette)
    rng = random.Random(secrets.randbits(64) if seed is None else seed)
    return rng.sample(space, count)
