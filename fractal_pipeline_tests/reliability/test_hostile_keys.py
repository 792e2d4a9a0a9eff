"""Hostile spec keys and object keys never escape fractals/ (locally) and never crash with a surprise."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fractal_pipeline.fractals import KINDS, MAX_SIZE, SEGMENT_BUDGET, FractalSpec, InvalidSpec
from fractal_pipeline.specfiles import parse_spec_file
from fractal_pipeline.store import LocalStore, StoreError, image_key, validate_object_key

NASTY = [
    "../dragon_3",
    "..",
    "dragon_3/../../etc/passwd",
    "/etc/passwd",
    "\\windows\\system32",
    "dragon_3\\..\\x",
    "dragon_3\x00",
    "dragon_3\n",
    "ｄragon_3",  # fullwidth d
    "drаgon_3",  # Cyrillic a
    "dragon_３",  # fullwidth digit
    "dragon_3 ",
    "DRAGON_3",
    "dragon_" + "1" * 100,
    "a" * 5000,
    "",
    "dragon_3-",
    "dragon_3--fire",
    "dragon_3-1024px",
    "dragon_3-fire-512px",
    "~/dragon_3",
    "dragon_3.png",
    "fractals/dragon_3",
]

# Keys that look like spec keys, built from the key alphabet plus traps.
near_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-./\\\x00 ~ｄаΑ", max_size=80)


@pytest.mark.reliability(
    "hostile input", "23 hand-picked traversal/look-alike/NUL/over-long keys refused naming the field"
)
@pytest.mark.parametrize("key", NASTY)
def test_nasty_keys_are_refused_with_the_field_named(key: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        FractalSpec.from_key(key)
    assert str(info.value).startswith("key:")
    with pytest.raises(ValueError):
        image_key(key)


@pytest.mark.reliability(
    "hostile input", "6,000 random and near-miss spec keys: a valid spec with that key or InvalidSpec, nothing else"
)
@settings(max_examples=6000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.one_of(st.text(max_size=100), near_keys))
def test_any_key_gives_a_spec_with_that_key_or_invalid_spec(key: str) -> None:
    try:
        spec = FractalSpec.from_key(key)
    except InvalidSpec:
        return
    assert spec.key == key
    assert image_key(key) == f"fractals/{key}.png"


@pytest.mark.reliability(
    "hostile input",
    "5,000 random object keys against the local store: nothing written outside its folder, no temp files left",
)
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.one_of(st.text(max_size=120), near_keys.map(lambda k: "fractals/" + k + ".png")))
def test_local_store_never_writes_outside_its_root(tmp_path: Path, key: str) -> None:
    # tmp_path is shared by all examples: the store accumulates objects, as a real one does.
    root = tmp_path / "store"
    store = LocalStore(root)
    try:
        validate_object_key(key)
    except ValueError:
        with pytest.raises(ValueError):
            store.put(key, b"x")
    else:
        try:
            written = Path(store.put(key, b"x"))
        except StoreError as exc:  # a key colliding with an earlier key's folder or file
            assert str(exc).startswith("key:")
        else:
            assert written.resolve().is_relative_to(root.resolve())
            assert store.get(key) == b"x"
            assert not [p for p in written.parent.iterdir() if p.name.startswith(".tmp-")]
    assert {p.name for p in tmp_path.iterdir()} <= {"store"}


# Spec-file fields: traversal strings, look-alikes, huge numbers and wrong types in every column.
hostile_field = st.one_of(
    st.sampled_from(["../../etc/passwd", "/abs", "dragon/../x", "dragon\\x", "ｄragon", "dragon\x00", "", " "]),
    st.sampled_from(sorted(KINDS)),
    st.integers(-(10**12), 10**12).map(str),
    st.text(max_size=30),
)


@settings(max_examples=5000, deadline=None)
@given(
    rows=st.lists(st.tuples(hostile_field, hostile_field, hostile_field, hostile_field), max_size=8),
    as_json=st.booleans(),
)
@pytest.mark.reliability(
    "hostile input", "5,000 hostile CSV/JSON spec files: only safe fractals/ keys, bounded segments and size"
)
def test_hostile_spec_files_only_ever_yield_safe_object_keys(rows: list[tuple[str, ...]], as_json: bool) -> None:
    if as_json:
        body = json.dumps([dict(zip(("kind", "depth", "size", "palette"), row, strict=True)) for row in rows])
        result = parse_spec_file("hostile.json", body.encode())
    else:
        buffer = io.StringIO()
        csv.writer(buffer).writerows([("kind", "depth", "size", "palette"), *rows])
        result = parse_spec_file("hostile.csv", buffer.getvalue().encode())
    for spec in result.specs:
        key = image_key(spec.key)
        assert validate_object_key(key) == key and key.startswith("fractals/") and ".." not in key
        assert spec.segments <= SEGMENT_BUDGET and spec.size <= MAX_SIZE  # work is bounded before rendering
    for row in result.rejected:
        assert row.line >= 1 and row.reason and "\n" not in row.reason


def test_local_store_refuses_keys_that_collide_with_folders_and_files(tmp_path: Path) -> None:
    """A key naming a folder, or lying under a file, fails with the key named; nothing is left behind."""
    store = LocalStore(tmp_path / "store")
    assert Path(store.put("a/b/c.png", b"first")).read_bytes() == b"first"  # folders made on first write
    with pytest.raises(StoreError, match=r"^key: 'a/b' is a folder in .*; use another key$"):
        store.put("a/b", b"x")
    with pytest.raises(
        StoreError, match=r"^key: 'a/b/c.png/d.png' lies under an existing object in .*; use another key$"
    ):
        store.put("a/b/c.png/d.png", b"x")
    with pytest.raises(StoreError, match=r"^key: 'a/b/c.png/e/f.png' lies under an existing object"):
        store.put("a/b/c.png/e/f.png", b"x")
    assert store.get("a/b/c.png") == b"first"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "store",
        "store/a",
        "store/a/b",
        "store/a/b/c.png",
    ]


def test_local_store_checks_and_lists_only_its_key_folders(tmp_path: Path) -> None:
    """FRACTALS_DIR may be a folder that holds much else: listing the PNGs walks only ``fractals/``, and
    the check fails in one line when ``fractals`` cannot hold them."""
    # /proc holds entries no one may read (another process's cwd): walking it would fail or never end
    assert list(LocalStore("/proc").list("fractals/")) == []
    (tmp_path / "fractals").write_bytes(b"not a folder")
    with pytest.raises(StoreError, match=r"^FRACTALS_DIR: .*/fractals is a file, not a folder; move it away"):
        LocalStore(tmp_path).check()
    assert list(LocalStore(tmp_path).list("fractals/")) == []
    store = LocalStore(tmp_path / "home")
    store.check()
    (tmp_path / "home" / "notes").mkdir()
    (tmp_path / "home" / "notes" / "fractals-list.png").write_bytes(b"x")
    store.put(image_key("crystal_4-64px-mono"), b"png")
    assert list(store.list("fractals/")) == [image_key("crystal_4-64px-mono")]
    assert [p.name for p in (tmp_path / "home" / "fractals").iterdir()] == ["crystal_4-64px-mono.png"]
