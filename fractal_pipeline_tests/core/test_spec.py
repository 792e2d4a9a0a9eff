"""FractalSpec: validation, invertible keys, from_fields, check_budget, random_specs."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fractal_pipeline.fractals import (
    DEFAULT_PALETTE,
    DEFAULT_SIZE,
    KINDS,
    MAX_SIZE,
    MAX_SPECS,
    MIN_SIZE,
    PALETTES,
    FractalSpec,
    InvalidSpec,
    check_budget,
    random_specs,
)
from fractal_pipeline.fractals.spec import MAX_KEY_LENGTH

KEY_CHARS = re.compile(r"[a-z0-9_-]+")

FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def specs(draw: st.DrawFn) -> FractalSpec:
    kind = draw(st.sampled_from(sorted(KINDS)))
    depth = draw(st.integers(0, min(KINDS[kind].max_depth, 8)))
    size = draw(st.one_of(st.just(DEFAULT_SIZE), st.integers(MIN_SIZE, MAX_SIZE)))
    palette = draw(st.sampled_from(sorted(PALETTES)))
    return FractalSpec(kind, depth, size, palette)


#: Strings shaped like keys: real or near-miss kinds, depths and options in any order.
_NEAR_OPTIONS = st.sampled_from(
    ["512px", "1024px", "16px", "15px", "8192px", "8193px", "0512px", "px", "fire", "ice", "mono", "Fire", "blue", ""]
)
near_keys = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_]{0,22}_[0-9]{1,4}(-[a-z0-9]{0,8})*", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_./-]{0,70}", fullmatch=True),
    st.builds(
        lambda kind, depth, options: f"{kind}_{depth}" + "".join(f"-{option}" for option in options),
        st.one_of(st.sampled_from(sorted(KINDS)), st.sampled_from(["dragn", "Dragon", "hilbert", "koch", "x"])),
        st.one_of(st.integers(0, 30).map(str), st.sampled_from(["00", "012", "-1", "1000", ""])),
        st.lists(_NEAR_OPTIONS, max_size=3),
    ),
)


def assert_invalid(call: Callable[[], object], field: str, *fragments: str) -> InvalidSpec:
    """``call`` raises InvalidSpec (a ValueError) whose message names ``field`` first."""
    with pytest.raises(InvalidSpec) as caught:
        call()
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.field == field
    message = str(error)
    assert message.startswith(f"{field}: "), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return error


# -- keys ---------------------------------------------------------------------------------


def test_default_key_is_kind_and_depth() -> None:
    spec = FractalSpec("dragon", 12)
    assert spec.key == "dragon_12"
    assert (spec.size, spec.palette) == (DEFAULT_SIZE, DEFAULT_PALETTE)
    assert FractalSpec("dragon", 12, 512, "fire").key == "dragon_12-512px-fire"
    assert FractalSpec("dragon", 12, 512).key == "dragon_12-512px"
    assert FractalSpec("dragon", 12, palette="fire").key == "dragon_12-fire"
    assert FractalSpec("sierpinski_arrowhead", 0).key == "sierpinski_arrowhead_0"
    assert FractalSpec.from_key("sierpinski_arrowhead_0") == FractalSpec("sierpinski_arrowhead", 0)
    assert FractalSpec.from_key("hilbert2_3-mono") == FractalSpec("hilbert2", 3, palette="mono")


@FAST
@given(specs())
def test_key_round_trips(spec: FractalSpec) -> None:
    key = spec.key
    assert FractalSpec.from_key(key) == spec
    assert KEY_CHARS.fullmatch(key), key
    assert len(key) <= MAX_KEY_LENGTH


@FAST
@given(specs(), specs())
def test_different_specs_have_different_keys(a: FractalSpec, b: FractalSpec) -> None:
    assert (a == b) == (a.key == b.key)


def test_keys_are_unique_over_the_whole_space() -> None:
    sizes = [MIN_SIZE, 100, 512, DEFAULT_SIZE, 1000, 4096, MAX_SIZE]
    seen: dict[str, FractalSpec] = {}
    for name, lsys in KINDS.items():
        for depth, size, palette in itertools.product(range(lsys.max_depth + 1), sizes, PALETTES):
            spec = FractalSpec(name, depth, size, palette)
            assert spec.key not in seen, (spec, seen.get(spec.key))
            assert KEY_CHARS.fullmatch(spec.key) and len(spec.key) <= MAX_KEY_LENGTH
            seen[spec.key] = spec
    assert len(seen) == sum(lsys.max_depth + 1 for lsys in KINDS.values()) * len(sizes) * len(PALETTES)


def _parse_or_invalid(text: str) -> None:
    try:
        spec = FractalSpec.from_key(text)
    except InvalidSpec as error:
        assert error.field in ("key", "kind", "depth", "size", "palette"), error
        return
    assert isinstance(spec, FractalSpec)
    assert spec.key == text


@FAST
@given(st.text())
def test_arbitrary_text_is_a_key_or_invalid(text: str) -> None:
    _parse_or_invalid(text)


@FAST
@given(near_keys)
def test_near_keys_are_keys_or_invalid(text: str) -> None:
    _parse_or_invalid(text)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "dragon",
        "dragon_",
        "dragon_012",
        "dragon_00",
        "../etc",
        "../etc/passwd_1",
        "dragon_12-fire-512px",  # options in non-canonical order
        "dragon_12-1024px",  # default size spelled out
        "dragon_12-rainbow",  # default palette spelled out
        "dragon_12-fire-fire",
        "dragon_12-512px-512px",
        "dragon_12-0512px",
        "dragon_12-blue",
        "dragon_12-",
        "Dragon_12",
        "dragon_12 ",
        " dragon_12",
        "dragon_12\n",
        "dragon-12",
        "x" * 65,
    ],
)
def test_malformed_keys_are_refused(key: str) -> None:
    assert_invalid(lambda: FractalSpec.from_key(key), "key")


def test_non_canonical_key_suggests_the_canonical_one() -> None:
    assert_invalid(lambda: FractalSpec.from_key("dragon_12-fire-512px"), "key", "'dragon_12-512px-fire'")


def test_key_for_invalid_spec_names_the_spec_field() -> None:
    assert_invalid(lambda: FractalSpec.from_key("dragn_12"), "kind", "did you mean 'dragon'")
    assert_invalid(lambda: FractalSpec.from_key("dragon_99"), "depth")
    assert_invalid(lambda: FractalSpec.from_key("dragon_12-15px"), "size")
    assert_invalid(lambda: FractalSpec.from_key("dragon_12-8193px"), "size")
    assert_invalid(lambda: FractalSpec.from_key(12), "key")  # type: ignore[arg-type]


# -- validation ---------------------------------------------------------------------------


def test_unknown_kind_suggests_the_closest() -> None:
    assert_invalid(lambda: FractalSpec("dragn", 5), "kind", "'dragn'", "did you mean 'dragon'")
    assert_invalid(lambda: FractalSpec("", 5), "kind")
    assert_invalid(lambda: FractalSpec(None, 5), "kind")  # type: ignore[arg-type]
    assert_invalid(lambda: FractalSpec(["dragon"], 5), "kind")  # type: ignore[arg-type]


@pytest.mark.parametrize("depth", [-1, -100])
def test_negative_depth_is_refused(depth: int) -> None:
    assert_invalid(lambda: FractalSpec("dragon", depth), "depth", str(depth))


@pytest.mark.parametrize("name", ["dragon", "peano", "segment_curve", "koch_snowflake"])
def test_depth_above_max_depth_is_refused(name: str) -> None:
    lsys = KINDS[name]
    assert FractalSpec(name, lsys.max_depth).depth == lsys.max_depth
    assert_invalid(lambda: FractalSpec(name, lsys.max_depth + 1), "depth", f"0..{lsys.max_depth}")


def test_huge_depth_is_refused_fast() -> None:
    for depth in (40, 64, 10**6):
        started = time.perf_counter()
        assert_invalid(lambda depth=depth: FractalSpec("dragon", depth), "depth")
        assert_invalid(lambda depth=depth: FractalSpec.from_key(f"koch_snowflake_{min(depth, 999)}"), "depth")
        assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize("depth", [True, False, 12.0, "12", None])
def test_depth_must_be_an_int(depth: object) -> None:
    assert_invalid(lambda: FractalSpec("dragon", depth), "depth")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [15, 8193, 0, -1024, True, 512.0, "512"])
def test_bad_size_is_refused(size: object) -> None:
    assert_invalid(lambda: FractalSpec("dragon", 5, size), "size")  # type: ignore[arg-type]


def test_size_limits_are_inclusive() -> None:
    assert FractalSpec("dragon", 5, 16).size == 16
    assert FractalSpec("dragon", 5, 8192).size == 8192


def test_unknown_palette_is_refused() -> None:
    assert_invalid(lambda: FractalSpec("dragon", 5, 512, "firee"), "palette", "'firee'", "did you mean 'fire'")
    assert_invalid(lambda: FractalSpec("dragon", 5, 512, "Fire"), "palette")
    assert_invalid(lambda: FractalSpec("dragon", 5, 512, None), "palette")  # type: ignore[arg-type]


def test_spec_is_immutable_and_hashable() -> None:
    spec = FractalSpec("dragon", 5)
    with pytest.raises(AttributeError):
        spec.depth = 6  # type: ignore[misc]
    assert {spec, FractalSpec("dragon", 5)} == {spec}


def test_check_budget() -> None:
    spec = FractalSpec("dragon", 12, 128)
    assert check_budget(spec) == 4096
    assert check_budget(spec, max_segments=4096) == 4096
    assert_invalid(lambda: check_budget(spec, max_segments=1000), "depth", "4,096", "1,000")


# -- from_fields --------------------------------------------------------------------------


def test_from_fields_accepts_loose_types() -> None:
    assert FractalSpec.from_fields({"kind": "dragon", "depth": "12"}) == FractalSpec("dragon", 12)
    assert FractalSpec.from_fields({"kind": "dragon", "depth": 12, "size": "", "palette": ""}) == FractalSpec(
        "dragon", 12
    )
    loose = {"kind": " dragon ", "depth": " 12 ", "size": "512", "palette": " fire "}
    assert FractalSpec.from_fields(loose) == FractalSpec("dragon", 12, 512, "fire")
    assert FractalSpec.from_fields({"kind": "dragon", "depth": 0, "size": 16}) == FractalSpec("dragon", 0, 16)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "dragon"}, "depth"),
        ({"kind": "dragon", "depth": ""}, "depth"),
        ({"kind": "dragon", "depth": None}, "depth"),
        ({"depth": 12}, "kind"),
        ({"kind": "dragon", "depth": 12, "colour": "red"}, "colour"),
        ({"kind": "dragon", "depth": 12.0}, "depth"),
        ({"kind": "dragon", "depth": 12.5}, "depth"),
        ({"kind": "dragon", "depth": "12.0"}, "depth"),
        ({"kind": "dragon", "depth": "twelve"}, "depth"),
        ({"kind": "dragon", "depth": True}, "depth"),
        ({"kind": "dragon", "depth": "99"}, "depth"),
        ({"kind": "dragon", "depth": 12, "size": "big"}, "size"),
        ({"kind": "dragon", "depth": 12, "size": 512.0}, "size"),
        ({"kind": "dragon", "depth": 12, "size": "15"}, "size"),
        ({"kind": "dragn", "depth": 12}, "kind"),
        ({"kind": "dragon", "depth": 12, "palette": "firee"}, "palette"),
        ({"kind": "dragon", "depth": 12, "palette": 3}, "palette"),
    ],
)
def test_from_fields_refuses_bad_fields(fields: dict, field: str) -> None:
    assert_invalid(lambda: FractalSpec.from_fields(fields), field)


def test_from_fields_refuses_non_mappings() -> None:
    assert_invalid(lambda: FractalSpec.from_fields(["dragon", 12]), "spec")  # type: ignore[arg-type]
    assert_invalid(lambda: FractalSpec.from_fields("dragon_12"), "spec")  # type: ignore[arg-type]


# -- random_specs -------------------------------------------------------------------------


def test_random_specs_same_seed_same_list() -> None:
    first = random_specs(50, seed=7)
    assert first == random_specs(50, seed=7)
    assert first != random_specs(50, seed=8)
    assert len(first) == 50
    assert len(set(first)) == 50
    assert all(isinstance(spec, FractalSpec) for spec in first)


def test_random_specs_respect_depth_ranges_and_defaults() -> None:
    batch = random_specs(90, seed=1)
    assert len(set(batch)) == 90
    for spec in batch:
        low, high = KINDS[spec.kind].random_depths
        assert low <= spec.depth <= high
        assert (spec.size, spec.palette) == (DEFAULT_SIZE, DEFAULT_PALETTE)
    assert len({spec.kind for spec in batch}) > 10


def test_random_specs_kinds_filter_size_and_palette() -> None:
    batch = random_specs(10, seed=3, kinds=["dragon", "peano"], size=256, palette="fire")
    assert {spec.kind for spec in batch} <= {"dragon", "peano"}
    assert all(spec.size == 256 and spec.palette == "fire" for spec in batch)
    mixed = random_specs(30, seed=3, kinds=["dragon"], palette=None)
    assert len(set(mixed)) == 30
    assert {spec.kind for spec in mixed} == {"dragon"}
    assert len({spec.palette for spec in mixed}) > 1


def test_random_specs_can_exhaust_the_space() -> None:
    low, high = KINDS["dragon"].random_depths
    space = high - low + 1
    batch = random_specs(space, seed=0, kinds=["dragon"])
    assert sorted(spec.depth for spec in batch) == list(range(low, high + 1))
    assert_invalid(lambda: random_specs(space + 1, seed=0, kinds=["dragon"]), "count", str(space + 1))


@pytest.mark.parametrize("count", [0, -1, MAX_SPECS + 1, True, 2.5])
def test_random_specs_refuses_bad_counts(count: object) -> None:
    assert_invalid(lambda: random_specs(count, seed=0), "count")  # type: ignore[arg-type]


def test_random_specs_whole_space_with_random_palettes() -> None:
    space = sum(high - low + 1 for low, high in (lsys.random_depths for lsys in KINDS.values())) * len(PALETTES)
    batch = random_specs(space, seed=0, palette=None)
    assert len(batch) == len(set(batch)) == space
    assert_invalid(lambda: random_specs(space + 1, seed=0, palette=None), "count")


def test_random_specs_refuses_unknown_or_no_kinds() -> None:
    assert_invalid(lambda: random_specs(3, seed=0, kinds=["dragon", "dragn"]), "kind", "did you mean 'dragon'")
    assert_invalid(lambda: random_specs(3, seed=0, kinds=[]), "kinds")
    assert_invalid(lambda: random_specs(3, seed=0, palette="firee"), "palette")
