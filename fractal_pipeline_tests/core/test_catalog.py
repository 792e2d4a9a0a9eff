"""The 26 kinds: reference data, read-only catalog, segment counts and expansion."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from fractal_pipeline.fractals import KINDS, SEGMENT_BUDGET, FractalSpec, LSystem, segment_count
from fractal_pipeline.fractals.catalog import ABSOLUTE_MAX_DEPTH
from fractal_pipeline.fractals.lsystem import expand

#: The reference catalog the kinds were built from, kept with the tests (the core must match it exactly).
REFERENCE = Path(__file__).parents[1] / "data" / "lsystems.json"
#: Brute-force expansion stops before strings get longer than this.
BRUTE_FORCE_MAX_CHARS = 200_000


def reference_kinds() -> list[dict]:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))["kinds"]


def brute_force(lsys: LSystem, depth: int) -> str:
    """The plain textbook expansion: rewrite every symbol, one character at a time."""
    program = lsys.axiom
    for _ in range(depth):
        program = "".join(lsys.rules.get(symbol, symbol) for symbol in program)
    return program


def brute_force_depths(lsys: LSystem) -> list[int]:
    """Depths 0.. whose brute-force expansion stays small (at least 0..2)."""
    depths = []
    program = lsys.axiom
    depth = 0
    while depth <= lsys.max_depth and (len(program) <= BRUTE_FORCE_MAX_CHARS or depth <= 2):
        depths.append(depth)
        program = "".join(lsys.rules.get(symbol, symbol) for symbol in program)
        depth += 1
    return depths


BRUTE_FORCE_CASES = [(name, depth) for name, lsys in KINDS.items() for depth in brute_force_depths(lsys)]


def test_kinds_match_reference_exactly() -> None:
    reference = reference_kinds()
    assert len(reference) == 26
    assert list(KINDS) == [kind["name"] for kind in reference]
    assert list(KINDS) == sorted(KINDS), "KINDS is documented to be in name order"
    for kind in reference:
        lsys = KINDS[kind["name"]]
        assert lsys.name == kind["name"]
        assert lsys.axiom == kind["axiom"], kind["name"]
        assert dict(lsys.rules) == kind["rules"], kind["name"]
        assert lsys.angle == kind["angle"], kind["name"]
        assert lsys.default_depth == kind["default_depth"], kind["name"]


def test_kinds_is_read_only() -> None:
    with pytest.raises(TypeError):
        KINDS["dragon"] = KINDS["levy_c"]  # type: ignore[index]
    with pytest.raises(TypeError):
        KINDS["new_kind"] = KINDS["levy_c"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del KINDS["dragon"]  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        KINDS["dragon"].rules["X"] = "F"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        KINDS["dragon"].angle = 45  # type: ignore[misc]
    assert KINDS["dragon"].angle == 90
    assert dict(KINDS["dragon"].rules) == {"X": "X+YF+", "Y": "-FX-Y"}


def test_rules_are_copied_not_aliased() -> None:
    rules = {"F": "F+F"}
    lsys = LSystem("test", "F", rules, 90, 1, (1, 2))
    rules["F"] = "FFFF"
    assert lsys.rules["F"] == "F+F"


@pytest.mark.parametrize("name", list(KINDS))
def test_depth_limits_are_consistent(name: str) -> None:
    lsys = KINDS[name]
    low, high = lsys.random_depths
    assert 0 <= low <= high <= lsys.max_depth
    assert lsys.default_depth <= lsys.max_depth
    assert lsys.segment_count(lsys.max_depth) <= SEGMENT_BUDGET
    if lsys.max_depth < ABSOLUTE_MAX_DEPTH:
        assert lsys.segment_count(lsys.max_depth + 1) > SEGMENT_BUDGET


@pytest.mark.parametrize(("name", "depth"), BRUTE_FORCE_CASES)
def test_segment_count_matches_brute_force(name: str, depth: int) -> None:
    lsys = KINDS[name]
    program = brute_force(lsys, depth)
    expected = program.count("F")
    assert lsys.segment_count(depth) == expected
    spec = FractalSpec(name, depth, 128)
    assert segment_count(spec) == expected
    assert spec.segments == expected
    counts = {symbol: n for symbol, n in lsys.symbol_counts(depth).items() if n}
    assert counts == dict(Counter(program))


@pytest.mark.parametrize(("name", "depth"), BRUTE_FORCE_CASES)
def test_expand_is_the_turtle_program(name: str, depth: int) -> None:
    lsys = KINDS[name]
    program = expand(lsys, depth)
    assert isinstance(program, bytes)
    assert set(program) <= set(b"F+-")
    assert program.count(b"F") == lsys.segment_count(depth)
    expected = "".join(symbol for symbol in brute_force(lsys, depth) if symbol in "F+-")
    assert program == expected.encode("ascii")


def test_dragon_has_two_to_the_n_segments() -> None:
    dragon = KINDS["dragon"]
    for depth in range(dragon.max_depth + 1):
        assert dragon.segment_count(depth) == 2**depth
        assert segment_count(FractalSpec("dragon", depth, 128)) == 2**depth
    for depth in range(15):
        assert expand(dragon, depth).count(b"F") == 2**depth
    assert dragon.max_depth == 22  # 2**22 == SEGMENT_BUDGET


def test_segment_count_at_large_depth_is_exact_and_cheap() -> None:
    # The recurrence works on counts, never on strings: depth 60 is 2**60 exactly.
    assert KINDS["dragon"].segment_count(60) == 2**60
    assert KINDS["koch_snowflake"].segment_count(30) == 3 * 4**30
