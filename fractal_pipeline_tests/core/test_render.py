"""Rendering: every kind draws, geometry is right, output is deterministic, the CLI works."""

from __future__ import annotations

import hashlib
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from fractal_pipeline.fractals import (
    KINDS,
    FractalSpec,
    InvalidSpec,
    draw,
    encode_png,
    indexed_png,
    preview,
    render,
    render_indexed,
    render_png,
    render_with_preview,
    spec_of_png,
    tune_allocator,
)
from fractal_pipeline.fractals.__main__ import main as cli_main
from fractal_pipeline.fractals.lsystem import turtle_path
from fractal_pipeline.fractals.render import MARGIN

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZE = 128

RENDER_CASES = [(name, depth) for name, lsys in KINDS.items() for depth in range(lsys.default_depth + 1)]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


# -- every kind renders ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "depth"), RENDER_CASES)
def test_every_kind_renders(name: str, depth: int) -> None:
    spec = FractalSpec(name, depth, SIZE)
    image = render(spec)
    assert image.mode == "RGB"
    assert image.size == (SIZE, SIZE)
    pixels = np.asarray(image)
    if spec.segments > 0:
        assert image.getbbox() is not None, f"{spec.key} draws {spec.segments} segments but is blank"
        assert (pixels.max(axis=2) > 0).sum() >= SIZE // 2
    else:
        assert image.getbbox() is None, f"{spec.key} draws nothing but is not blank"
    # Corners are background: the margin is left empty.
    assert pixels[0, 0].tolist() == pixels[-1, -1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("name", list(KINDS))
def test_fractal_fills_the_margin_box(name: str) -> None:
    spec = FractalSpec(name, KINDS[name].default_depth, SIZE)
    image = render(spec)
    bbox = image.getbbox()
    assert bbox is not None
    left, top, right, bottom = bbox
    inner = SIZE * MARGIN
    outer = SIZE * (1 - MARGIN)
    tolerance = 2
    gaps = [left - inner, top - inner, outer - right, outer - bottom]
    # Nothing drawn in the margin (beyond the pen's half width).
    assert min(gaps) >= -tolerance, (bbox, gaps)
    # The longer extent spans the margin box: at least two sides touch it.
    assert sum(abs(gap) <= tolerance for gap in gaps) >= 2, (bbox, gaps)
    # Centred: opposite gaps are equal.
    assert abs(gaps[0] - gaps[2]) <= tolerance and abs(gaps[1] - gaps[3]) <= tolerance, (bbox, gaps)


def test_render_indexed_is_the_palette_image_of_render() -> None:
    spec = FractalSpec("dragon", 8, SIZE, "fire")
    indexed = render_indexed(spec)
    assert indexed.mode == "P"
    assert indexed.size == (SIZE, SIZE)
    assert np.array_equal(np.asarray(indexed.convert("RGB")), np.asarray(render(spec)))


def test_preview_keeps_one_pixel_lines_by_max_pooling() -> None:
    spec = FractalSpec("hilberts", 5, 1024, "ice")  # 1 px lines: averaged down 8x they would fade
    image = render_indexed(spec)
    small = preview(image, 128)
    assert small.mode == "P" and small.size == (128, 128)
    assert small.getpalette() == image.getpalette()
    pixels = np.asarray(image)
    expected = pixels.reshape(128, 8, 128, 8).max(axis=(1, 3))
    assert np.array_equal(np.asarray(small), expected)
    assert np.count_nonzero(expected) > 0.5 * np.count_nonzero(pixels.reshape(128, 8, 128, 8).any(axis=(1, 3)))


@pytest.mark.parametrize("key", ["dragon_12", "koch_snowflake_3-200px-fire", "hilberts_0-64px", "levy_c_9-1000px"])
def test_render_with_preview_is_render_indexed_and_its_preview(key: str) -> None:
    spec = FractalSpec.from_key(key)
    image, small = render_with_preview(spec, 128)
    reference = render_indexed(spec)
    assert image.mode == "P" and image.tobytes() == reference.tobytes()
    assert image.getpalette() == reference.getpalette()
    expected = preview(reference, 128)
    assert small.size == expected.size and max(small.size) <= 128
    assert small.tobytes() == expected.tobytes() and small.getpalette() == expected.getpalette()
    assert encode_png(image, spec) == render_png(spec)


@pytest.mark.parametrize("key", ["dragon_12", "koch_snowflake_3-200px-fire", "hilberts_0-64px", "levy_c_9-1000px"])
def test_one_drawing_gives_the_png_the_image_and_the_thumbnail(key: str) -> None:
    """What a worker makes from one drawing equals what the separate functions make."""
    spec = FractalSpec.from_key(key)
    drawing = draw(spec)
    assert drawing.png() == render_png(spec)
    reference = render_indexed(spec)
    assert drawing.image().tobytes() == reference.tobytes()
    assert drawing.preview_png(128) == indexed_png(preview(reference, 128))


_TUNED_CHILD = """
import resource, sys
from fractal_pipeline.fractals import FractalSpec, render_png, tune_allocator
ok = tune_allocator()
specs = [FractalSpec.from_key(k) for k in sys.argv[1:]]
render_png(specs[0])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
data = b"".join(render_png(spec) for spec in specs)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(ok, after - before, data.hex())
"""


def test_tune_allocator_reuses_buffers_and_changes_no_pixel() -> None:
    keys = [f"dragon_{depth}" for depth in range(8, 14)] * 3  # 1024 px: ~1-2 MB buffers per render
    tuned = subprocess.run(
        [sys.executable, "-c", _TUNED_CHILD, *keys], env=subprocess_env(), capture_output=True, text=True, check=True
    )
    ok, faults, data = tuned.stdout.split()
    assert ok == "True"
    # Without the tuning, each render here faults in ~1,500 fresh pages (glibc maps and unmaps its buffers).
    assert int(faults) < 100 * len(keys), f"{faults} page faults for {len(keys)} renders"
    assert bytes.fromhex(data) == b"".join(render_png(FractalSpec.from_key(k)) for k in keys)
    assert tune_allocator() is True  # idempotent, in this process too


def test_palettes_change_colours_not_shape() -> None:
    images = {p: np.asarray(render(FractalSpec("levy_c", 8, SIZE, p))) for p in ("rainbow", "fire", "mono")}
    masks = {p: image.max(axis=2) > 0 for p, image in images.items()}
    assert np.array_equal(masks["rainbow"], masks["fire"])
    assert np.array_equal(masks["rainbow"], masks["mono"])
    assert not np.array_equal(images["rainbow"], images["fire"])
    # Mono is grey; rainbow is not.
    mono = images["mono"][masks["mono"]]
    assert (mono[:, 0] == mono[:, 1]).all() and (mono[:, 1] == mono[:, 2]).all()
    rainbow = images["rainbow"][masks["rainbow"]]
    assert not (rainbow[:, 0] == rainbow[:, 2]).all()


def test_render_refuses_over_budget_before_work() -> None:
    with pytest.raises(InvalidSpec) as caught:
        render(FractalSpec("dragon", 20, SIZE), max_segments=1000)
    assert caught.value.field == "depth"
    with pytest.raises(InvalidSpec):
        render_png(FractalSpec("dragon", 20, SIZE), max_segments=1000)


# -- geometry -------------------------------------------------------------------------


def _rounded_set(points: np.ndarray) -> list[tuple[float, float]]:
    # + 0.0 turns -0.0 into 0.0 so the tuples compare and sort alike.
    return sorted(map(tuple, np.round(points, 6) + 0.0))


@pytest.mark.parametrize("depth", range(6))
def test_koch_snowflake_is_closed_and_threefold_symmetric(depth: int) -> None:
    path = turtle_path(KINDS["koch_snowflake"], depth)
    assert path.shape == (3 * 4**depth + 1, 2)
    assert np.allclose(np.linalg.norm(np.diff(path, axis=0), axis=1), 1.0, atol=1e-9)
    assert np.abs(path[-1] - path[0]).max() <= 1e-9
    vertices = path[:-1]
    assert len(_rounded_set(vertices)) == len(set(_rounded_set(vertices)))
    centroid = vertices.mean(axis=0)
    for degrees in (120, 240):
        theta = math.radians(degrees)
        rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        rotated = (vertices - centroid) @ rotation.T + centroid
        assert _rounded_set(rotated) == _rounded_set(vertices)
    # Not trivially symmetric: a 90 degree turn does not map it onto itself.
    theta = math.radians(90)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    assert _rounded_set((vertices - centroid) @ rotation.T + centroid) != _rounded_set(vertices)


def _lattice(path: np.ndarray) -> np.ndarray:
    lattice = np.rint(path)
    assert np.abs(path - lattice).max() <= 1e-9, "vertices are not lattice points"
    return lattice.astype(np.int64)


def _assert_visits_grid_once(path: np.ndarray, side: int) -> None:
    cells = _lattice(path)
    assert len(cells) == side * side
    # Each step moves to a neighbouring cell.
    assert (np.abs(np.diff(cells, axis=0)).sum(axis=1) == 1).all()
    cells -= cells.min(axis=0)
    assert cells.max(axis=0).tolist() == [side - 1, side - 1]
    visited = {tuple(cell) for cell in cells.tolist()}
    assert len(visited) == len(cells), "a cell is visited twice"
    assert visited == {(x, y) for x in range(side) for y in range(side)}


@pytest.mark.parametrize("depth", range(7))
def test_hilbert_curve_visits_every_cell_once(depth: int) -> None:
    _assert_visits_grid_once(turtle_path(KINDS["hilberts"], depth), 2**depth)


@pytest.mark.parametrize("depth", range(6))
def test_moore_curve_visits_every_cell_once_and_closes(depth: int) -> None:
    path = turtle_path(KINDS["moore"], depth)
    _assert_visits_grid_once(path, 2 ** (depth + 1))
    # A Moore curve is a loop: its end is next to its start.
    assert np.abs(path[-1] - path[0]).sum() == pytest.approx(1.0)


def test_turtle_plus_turns_right_and_minus_left() -> None:
    # Starting east, "+" is clockwise: F+F ends below the x axis (y points up).
    from fractal_pipeline.fractals.catalog import LSystem

    right = turtle_path(LSystem("r", "F+F", {}, 90, 0, (0, 0)), 0)
    left = turtle_path(LSystem("l", "F-F", {}, 90, 0, (0, 0)), 0)
    assert right.tolist() == [[0.0, 0.0], [1.0, 0.0], [1.0, -1.0]]
    assert left.tolist() == [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]


def test_dragon_path_has_no_drift_at_depth_20() -> None:
    path = turtle_path(KINDS["dragon"], 20)
    assert path.shape == (2**20 + 1, 2)
    _lattice(path)
    # The dragon curve never traverses the same edge twice.
    cells = np.rint(path).astype(np.int64)
    edges = np.sort(np.stack([cells[:-1] @ [1, 1 << 21], cells[1:] @ [1, 1 << 21]], axis=1), axis=1)
    assert len(np.unique(edges, axis=0)) == 2**20


# -- PNG bytes, determinism -----------------------------------------------------------

DETERMINISM_KEYS = ["dragon_10-256px", "koch_snowflake_4-128px-fire", "peano_gosper_3-200px-ice", "hilberts_0-64px"]
#: What issue 16 holds to the same bytes: every kind at its default depth, 1024 px, and a few others.
DETERMINISM_SPECS = [FractalSpec.from_key(key) for key in DETERMINISM_KEYS] + [
    FractalSpec(name, lsys.default_depth) for name, lsys in KINDS.items()
]

_CHILD = """
import hashlib, sys
from fractal_pipeline.fractals import FractalSpec, render_png
for key in sys.argv[1:]:
    print(hashlib.sha256(render_png(FractalSpec.from_key(key))).hexdigest())
"""


def test_render_png_is_identical_across_processes() -> None:
    # Fresh processes, each with its own address layout and hash seed: with ISA-L, the encoder before,
    # an image came out as other bytes in some processes (docs/performance.md, issue 16).
    in_process = [hashlib.sha256(render_png(spec)).hexdigest() for spec in DETERMINISM_SPECS]
    keys = [spec.key for spec in DETERMINISM_SPECS]
    for hash_seed in ("1", "2", "3", "random"):
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, *keys],
            env=subprocess_env(PYTHONHASHSEED=hash_seed),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert result.stdout.split() == in_process, hash_seed
    assert len(set(in_process)) == len(in_process)


#: sha256 over the deflated scanlines of the 26 golden renders, as :data:`PINNED_ENCODER` writes them.
PINNED_ENCODER = "zlib-ng 2.3.3 (python zlib-ng 1.1.0), level 2"
PINNED_GOLDEN_DEFLATE = "82c61c8c9f4ffe8c34fcd2f41966478c29ea57a42db44e1beb031bde58ae8825"


def test_the_encoder_gives_the_pinned_bytes_on_any_machine() -> None:
    # The same scanlines and encoder version give these bytes on every CPU of the architecture (zlib-ng's
    # CPU-specific code computes the same values), so a machine that gives others shows it here. The
    # scanlines come from the golden PNGs in the test data, not from the core, so that a change to the
    # renderer leaves this alone; a new zlib-ng version is a new encoder, pinned anew.
    from fractal_pipeline.fractals.png import PNG_ENCODER, deflate

    if PNG_ENCODER != PINNED_ENCODER:
        pytest.skip(f"pinned for {PINNED_ENCODER!r}, this install encodes with {PNG_ENCODER!r}")
    digest = hashlib.sha256()
    for path in sorted((REPO / "fractal_pipeline_tests" / "data" / "golden").glob("*.png")):
        with Image.open(path) as image:
            assert image.mode == "P"
            indexes = np.asarray(image)
        rows = np.zeros((indexes.shape[0], indexes.shape[1] + 1), dtype=np.uint8)
        rows[:, 1:] = indexes
        digest.update(deflate(rows.ravel()))
    assert digest.hexdigest() == PINNED_GOLDEN_DEFLATE


def test_pngs_are_at_most_15_percent_larger_than_zlib_level_1() -> None:
    # Issue 16's limit on file size, against what the core wrote before (Pillow, zlib level 1), on the
    # same images and text chunks: the 26 kinds at their default depth, 1024 px.
    from fractal_pipeline.fractals.png import spec_text

    ours = baseline = 0
    for name, lsys in KINDS.items():
        spec = FractalSpec(name, lsys.default_depth)
        ours += len(render_png(spec))
        info = PngImagePlugin.PngInfo()
        for keyword, value in spec_text(spec):
            info.add_text(keyword, value)
        out = io.BytesIO()
        render_indexed(spec).save(out, format="PNG", pnginfo=info, compress_level=1)
        baseline += len(out.getvalue())
    assert ours <= 1.15 * baseline, (ours, baseline)


@pytest.mark.parametrize("kind", ["twin_dragon", "segment_curve", "crystal", "moore"])
def test_deflate_does_not_depend_on_where_the_scanlines_sit(kind: str) -> None:
    # The kinds whose IDAT bytes were seen to differ between processes with ISA-L (docs/performance.md,
    # "ISA-L and the CPU"): the same scanlines deflate to the same bytes at any address, whatever bytes lie
    # before and after them, and every scanline byte handed to the encoder is written (filter bytes 0).
    from fractal_pipeline.fractals.png import deflate
    from fractal_pipeline.fractals.render import SEGMENT_BUDGET, _draw_scanlines

    scanlines, _ = _draw_scanlines(FractalSpec(kind, KINDS[kind].default_depth), SEGMENT_BUDGET)
    assert not scanlines[:: 1024 + 1].any()
    expected = deflate(scanlines.copy())
    rng = np.random.default_rng(16)
    room = np.empty(scanlines.size + 3 * 4096, dtype=np.uint8)
    for offset in rng.integers(0, 2 * 4096, 32):
        room[:] = rng.integers(0, 256, room.size, dtype=np.uint8)
        placed = room[offset : offset + scanlines.size]
        placed[:] = scanlines
        assert deflate(placed) == expected


def test_render_png_is_a_valid_indexed_png_carrying_its_spec() -> None:
    spec = FractalSpec("sierpinski", 3, 96, "forest")
    data = render_png(spec)
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size == (96, 96)
        assert image.mode == "P"
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(render(spec)))
    assert spec_of_png(data) == spec
    assert render_png(spec) == data


@pytest.mark.parametrize("key", ["dragon_0-16px", "twin_dragon_5-8192px-mono", "hilbert2_2-333px-ice", "triangle_3"])
def test_spec_of_png_round_trips(key: str) -> None:
    spec = FractalSpec.from_key(key)
    # Only the text chunk matters here: do not render a huge image.
    data = encode_png(Image.new("P", (16, 16)), spec) if spec.size > 1024 else render_png(spec)
    assert spec_of_png(data) == spec


def test_spec_of_png_without_spec_is_none() -> None:
    assert spec_of_png(encode_png(Image.new("RGB", (16, 16)))) is None
    plain = io.BytesIO()
    Image.new("RGB", (16, 16)).save(plain, format="PNG")
    assert spec_of_png(plain.getvalue()) is None


# -- command line ---------------------------------------------------------------------


def core_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m fractal_pipeline.fractals ARGS`` as a user runs it, in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "fractal_pipeline.fractals", *args],
        env=subprocess_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_a_png(tmp_path: Path) -> None:
    output = tmp_path / "X.png"
    result = core_cli("dragon", "5", "-o", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "dragon_5" in result.stdout
    data = output.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(output) as image:
        image.verify()
    with Image.open(output) as image:
        assert image.size == (1024, 1024)
    assert spec_of_png(data) == FractalSpec("dragon", 5)
    assert data == render_png(FractalSpec("dragon", 5))


def test_cli_unknown_kind_exits_2_with_one_line(tmp_path: Path) -> None:
    result = core_cli("dragn", "5", "-o", str(tmp_path / "X.png"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: kind: ")
    assert "did you mean 'dragon'" in lines[0]
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("missing/x.png", "--output: cannot write {tmp}/missing/x.png (No such file or directory); give a file path"),
        (".", "--output: cannot write {tmp} (is a folder)"),
        ("x.jpg", "--output: {tmp}/x.jpg is not a <name>.png path; the file is a PNG, so name it <name>.png"),
        (".png", "--output: {tmp}/.png is not a <name>.png path"),
    ],
)
def test_cli_bad_output_exits_2_with_one_line(output: str, expected: str, tmp_path: Path) -> None:
    """As ``fractal-pipeline render`` does: one line naming --output and the fix, nothing written."""
    target = tmp_path / output if output != "." else tmp_path
    result = core_cli("dragon", "5", "--size", "16", "-o", str(target), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected.format(tmp=tmp_path)}"), result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["dragon", "99"], "depth"),
        (["dragon", "-1"], "depth"),
        (["dragon", "5", "--size", "15"], "size"),
        (["dragon", "5", "--palette", "firee"], "palette"),
    ],
)
def test_cli_bad_values_exit_2(argv: list[str], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main([*argv, "-o", str(tmp_path / "out.png")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), captured.err
    assert not (tmp_path / "out.png").exists()


def test_cli_default_depth_and_output_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main(["koch_snowflake", "--size", "64", "--palette", "ice"]) == 0
    expected = FractalSpec("koch_snowflake", KINDS["koch_snowflake"].default_depth, 64, "ice")
    written = tmp_path / f"{expected.key}.png"
    assert spec_of_png(written.read_bytes()) == expected


def test_a_png_records_its_encoder_and_every_decoder_reads_it(tmp_path: Path) -> None:
    from fractal_pipeline.fractals.png import PNG_ENCODER, PNG_ENCODER_CHUNK

    data = render_png(FractalSpec("dragon", 10))
    assert PNG_ENCODER.startswith("zlib-ng ")  # the declared dependency is what this install encodes with
    with Image.open(io.BytesIO(data)) as image:
        assert image.text[PNG_ENCODER_CHUNK] == PNG_ENCODER
        image.load()
    path = tmp_path / "dragon.png"
    path.write_bytes(data)
    described = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, check=True).stdout
    assert described.startswith("PNG image data, 1024 x 1024, 8-bit colormap"), described


_WITHOUT_ZLIB_NG = """
import sys, warnings
sys.modules["zlib_ng"] = None  # as if not installed: `import zlib_ng` raises ImportError
warnings.simplefilter("always")
from fractal_pipeline.fractals import FractalSpec, render_png
from fractal_pipeline.fractals.png import PNG_ENCODER
with warnings.catch_warnings(record=True) as caught:
    first = render_png(FractalSpec("dragon", 6, 64))
    assert render_png(FractalSpec("dragon", 6, 64)) == first
print(PNG_ENCODER)
print(len(caught), caught[0].message if caught else "")
sys.stdout.write(first.hex())
"""


def test_without_zlib_ng_the_core_falls_back_to_zlib_and_says_so_once() -> None:
    from fractal_pipeline.fractals.png import PNG_ENCODER_CHUNK

    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ZLIB_NG], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    encoder, warned, data = result.stdout.split("\n", 2)
    assert encoder.startswith("zlib ")
    assert warned.startswith("1 zlib-ng is not installed: PNGs are deflated with zlib")  # once, for two PNGs
    png = bytes.fromhex(data)
    with Image.open(io.BytesIO(png)) as image:
        assert image.text[PNG_ENCODER_CHUNK] == encoder  # the bytes say which encoder made them
        fallback = np.asarray(image)
    with Image.open(io.BytesIO(render_png(FractalSpec("dragon", 6, 64)))) as image:
        assert np.array_equal(np.asarray(image), fallback)  # other bytes, the same pixels
