"""Benchmark the rendering core: speed per kind, PNG size, a naive baseline, and a deep dragon.

Run from the repository root::

    python benchmarks/bench_render.py              # full run (the baseline takes a minute or two)
    python benchmarks/bench_render.py --quick      # baseline on 6 kinds only
    python benchmarks/bench_render.py --size 512 --repeat 5

Sections:

1. Every kind at its default depth: ``render_indexed`` (the palette image),
   ``encode_png`` and ``render_png`` (both together, the goal) times (best of
   ``--repeat`` rounds over all the kinds), PNG bytes (median and total), and for comparison the same
   image saved by Pillow with zlib level 1 and the same text chunks (what the
   core wrote before its own encoder: issue 16's size limit is 1.15x its total)
   and with zlib level 9.
2. Baseline: the straightforward renderer of the original example (string
   rewriting, a Python turtle loop with ``math.cos``/``math.sin`` per segment,
   one ``ImageDraw.line`` per segment on a 10x oversampled canvas, a LANCZOS
   downsample, then Pillow's PNG encoder) against ``render_png``. Both make the
   PNG bytes of one spec. The baseline runs once per kind.
3. Dragon at depth 20 in a fresh process: render + encode time and peak RSS.

Sections 1 and 2 run with the allocator tuned (``fractals.tune_allocator``), as the render workers and
the Lambda handler run ``render_png``.
4. Goals vs measured, PASS/FAIL.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from PIL import Image, ImageDraw, PngImagePlugin  # noqa: E402

from fractal_pipeline.fractals import (  # noqa: E402
    KINDS,
    FractalSpec,
    encode_png,
    render_indexed,
    render_png,
    tune_allocator,
)
from fractal_pipeline.fractals.palette import PALETTES  # noqa: E402
from fractal_pipeline.fractals.png import PNG_ENCODER, spec_text  # noqa: E402
from fractal_pipeline.fractals.render import BANDS, MARGIN, line_width  # noqa: E402

GOAL_MEDIAN_MS = 4.5
#: PNG bytes against Pillow's zlib level 1 on the same images (issue 16: larger by more than 15 % is not welcome).
GOAL_SIZE_RATIO = 1.15
GOAL_SPEEDUP = 250.0
GOAL_DRAGON_S = 1.0
GOAL_DRAGON_MB = 200.0
DRAGON_DEPTH = 20
OVERSAMPLE = 10
#: Kinds the baseline runs with --quick: a spread of angles and segment counts.
QUICK_KINDS = ("dragon", "hilberts", "koch_snowflake", "peano_gosper", "sierpinski_sieve", "levy_c")

T = TypeVar("T")


def best_of(repeat: int, function: Callable[[], T]) -> tuple[float, T]:
    """Smallest wall time in ms over ``repeat`` calls, and the last result."""
    best = math.inf
    result: T
    for _ in range(max(1, repeat)):
        started = time.perf_counter()
        result = function()
        best = min(best, (time.perf_counter() - started) * 1000)
    return best, result


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


# -- 1. render + encode per kind ----------------------------------------------------------


@dataclass
class KindTiming:
    spec: FractalSpec
    render_ms: float
    encode_ms: float
    png_bytes: int
    #: Pillow's zlib level 1 with the same text chunks (the size baseline).
    encode1_ms: float
    png1_bytes: int
    encode9_ms: float
    png9_bytes: int
    #: ``render_png`` end to end (what a worker and the Lambda function call), best of the repeats.
    total_ms: float


def time_kinds(specs: list[FractalSpec], repeat: int) -> list[KindTiming]:
    """Time every spec ``repeat`` times in rounds over all of them, keeping each spec's best.

    Rounds rather than back-to-back repeats: this VM's speed drifts by tens of percent within a
    minute, and a spec's repeats taken seconds apart are less likely to all fall in a slow spell.
    """
    for spec in specs:
        render_indexed(spec)  # warm-up: first-call costs (imports, font/codec setup) are not the renderer's
    best = {spec.key: [math.inf, math.inf, math.inf] for spec in specs}  # render, encode, render_png
    pngs: dict[str, bytes] = {}
    for _ in range(max(1, repeat)):
        for spec in specs:
            started = time.perf_counter()
            image = render_indexed(spec)
            rendered = time.perf_counter()
            encode_png(image, spec)
            encoded = time.perf_counter()
            pngs[spec.key] = render_png(spec)
            done = time.perf_counter()
            times = best[spec.key]
            times[0] = min(times[0], (rendered - started) * 1000)
            times[1] = min(times[1], (encoded - rendered) * 1000)
            times[2] = min(times[2], (done - encoded) * 1000)
    timings = []
    for spec in specs:
        image = render_indexed(spec)  # not kept from the rounds: held images would change what they measure
        info = PngImagePlugin.PngInfo()
        for keyword, value in spec_text(spec):
            info.add_text(keyword, value)

        def save(level: int, image: Image.Image = image, info: PngImagePlugin.PngInfo = info) -> bytes:
            out = io.BytesIO()
            image.save(out, format="PNG", compress_level=level, pnginfo=info if level == 1 else None)
            return out.getvalue()

        encode1_ms, data1 = best_of(repeat, lambda: save(1))
        encode9_ms, data9 = best_of(repeat, lambda: save(9))
        render_ms, encode_ms, total_ms = best[spec.key]
        png = pngs[spec.key]
        timings.append(
            KindTiming(spec, render_ms, encode_ms, len(png), encode1_ms, len(data1), encode9_ms, len(data9), total_ms)
        )
    return timings


def section_kinds(size: int, repeat: int) -> list[KindTiming]:
    print(
        f"\n## 1. Every kind at its default depth, {size} px (best of {repeat} rounds over the kinds; "
        f"PNG encoder: {PNG_ENCODER})\n"
    )
    timings = time_kinds([FractalSpec(name, lsys.default_depth, size) for name, lsys in KINDS.items()], repeat)
    rows = [
        [
            t.spec.kind,
            str(t.spec.depth),
            f"{t.spec.segments:,}",
            f"{t.render_ms:.1f}",
            f"{t.encode_ms:.1f}",
            f"{t.total_ms:.1f}",
            f"{t.png_bytes:,}",
            f"{t.png_bytes / t.png1_bytes:.2f}",
            f"{t.encode9_ms:.1f}",
            f"{t.png9_bytes:,}",
            f"{t.png9_bytes / t.png_bytes:.2f}",
        ]
        for t in timings
    ]
    print_table(
        [
            "kind",
            "depth",
            "segments",
            "ms render",
            "ms encode",
            "ms render_png",
            "PNG bytes",
            "x Pillow z1",
            "ms enc z9",
            "PNG bytes z9",
            "z9/z1",
        ],
        rows,
    )
    totals = [t.total_ms for t in timings]
    print(
        f"\nrender_png per image: median {statistics.median(totals):.2f} ms, "
        f"min {min(totals):.1f}, max {max(totals):.1f} (goal: median <= {GOAL_MEDIAN_MS} ms)"
    )
    sizes = [t.png_bytes for t in timings]
    print(f"PNG bytes: median {statistics.median(sizes):,.0f}, total {sum(sizes):,}")
    z1 = sum(t.png_bytes for t in timings)
    z9 = sum(t.png9_bytes for t in timings)
    e1 = sum(t.encode_ms for t in timings)
    e9 = sum(t.encode9_ms for t in timings)
    print(f"{PNG_ENCODER} vs Pillow's zlib 9: {z1:,} vs {z9:,} bytes ({z9 / z1:.2f}x), {e1:.0f} vs {e9:.0f} ms")
    p1 = sum(t.png1_bytes for t in timings)
    e_p1 = sum(t.encode1_ms for t in timings)
    print(
        f"{PNG_ENCODER} vs Pillow's zlib 1 (same text chunks): {z1:,} vs {p1:,} bytes ({z1 / p1:.3f}x), "
        f"{e1:.0f} vs {e_p1:.0f} ms (goal: bytes <= {GOAL_SIZE_RATIO:.2f}x)"
    )
    return timings


# -- 2. baseline ---------------------------------------------------------------------------


def baseline_render(spec: FractalSpec) -> Image.Image:
    """The original example's approach, made to draw the same picture as ``render``.

    Plain string rewriting, then a Python turtle that calls ``math.cos`` and
    ``math.sin`` for every ``F``, then one ``ImageDraw.line`` per segment on a
    canvas 10x the output size, coloured in the same bands, then LANCZOS down.
    """
    lsys = KINDS[spec.kind]
    program = lsys.axiom
    for _ in range(spec.depth):
        program = "".join(lsys.rules.get(symbol, symbol) for symbol in program)

    x = y = 0.0
    heading = 0.0
    points = [(x, y)]
    for symbol in program:
        if symbol == "F":
            radians = math.radians(heading)
            x += math.cos(radians)
            y += math.sin(radians)
            points.append((x, y))
        elif symbol == "+":
            heading -= lsys.angle
        elif symbol == "-":
            heading += lsys.angle

    big = spec.size * OVERSAMPLE
    image = Image.new("RGB", (big, big), (0, 0, 0))
    segments = len(points) - 1
    if segments:
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)
        extent = max(hi_x - lo_x, hi_y - lo_y, 1e-9)
        scale = big * (1 - 2 * MARGIN) / extent
        centre_x, centre_y = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
        width = max(1, round(line_width(scale / OVERSAMPLE, spec.size) * OVERSAMPLE))
        bands = max(1, min(BANDS, segments))
        colour_of = PALETTES[spec.palette]
        colours = [colour_of((band + 0.5) / bands) for band in range(bands)]
        draw = ImageDraw.Draw(image)
        previous = (big / 2 + (points[0][0] - centre_x) * scale, big / 2 - (points[0][1] - centre_y) * scale)
        for index in range(1, len(points)):
            px, py = points[index]
            current = (big / 2 + (px - centre_x) * scale, big / 2 - (py - centre_y) * scale)
            draw.line([previous, current], fill=colours[(index - 1) * bands // segments], width=width)
            previous = current
    return image.resize((spec.size, spec.size), Image.Resampling.LANCZOS)


def baseline_png(spec: FractalSpec) -> bytes:
    """:func:`baseline_render` saved as a PNG by Pillow (default settings), as the original example did."""
    out = io.BytesIO()
    baseline_render(spec).save(out, format="PNG")
    return out.getvalue()


def section_baseline(size: int, repeat: int, quick: bool) -> tuple[float, float, float]:
    names = list(QUICK_KINDS) if quick else list(KINDS)
    scope = f"{len(names)} kinds (--quick)" if quick else f"all {len(names)} kinds"
    print(
        f"\n## 2. Baseline: per-segment ImageDraw.line at {OVERSAMPLE}x ({size * OVERSAMPLE} px) + LANCZOS "
        f"+ Pillow PNG, vs render_png(); {scope}, {size} px, to PNG bytes\n"
        f"   (baseline: 1 run per kind; render_png(): best of {repeat})\n"
    )
    rows = []
    total_baseline = total_fast = 0.0
    speedups = []
    for name in names:
        spec = FractalSpec(name, KINDS[name].default_depth, size)
        render_png(spec)  # warm-up
        fast_ms, _ = best_of(repeat, functools.partial(render_png, spec))
        baseline_ms, _ = best_of(1, functools.partial(baseline_png, spec))
        total_baseline += baseline_ms
        total_fast += fast_ms
        speedups.append(baseline_ms / fast_ms)
        rows.append(
            [
                name,
                str(spec.depth),
                f"{spec.segments:,}",
                f"{baseline_ms:,.0f}",
                f"{fast_ms:.1f}",
                f"{speedups[-1]:.0f}x",
            ]
        )
    print_table(["kind", "depth", "segments", "ms baseline", "ms render_png", "speed-up"], rows)
    overall = total_baseline / total_fast
    print(
        f"\noverall (total baseline / total render_png): {total_baseline:,.0f} ms / {total_fast:.0f} ms "
        f"= {overall:.0f}x; "
        f"per-kind speed-up median {statistics.median(speedups):.0f}x, min {min(speedups):.0f}x "
        f"(goal: overall >= {GOAL_SPEEDUP:.0f}x)"
    )
    return overall, total_baseline, total_fast


# -- 3. deep dragon in a fresh process ----------------------------------------------------

_DRAGON_CHILD = """
import json, resource, sys, time
from fractal_pipeline.fractals import FractalSpec, encode_png, render_indexed
spec = FractalSpec("dragon", int(sys.argv[1]), int(sys.argv[2]))
before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
image = render_indexed(spec)
rendered = time.perf_counter()
data = encode_png(image, spec)
done = time.perf_counter()
try:
    with open("/proc/self/status") as status:
        hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    hwm_kb = 0
print(json.dumps({
    "segments": spec.segments,
    "render_s": rendered - started,
    "encode_s": done - rendered,
    "total_s": done - started,
    "png_bytes": len(data),
    "import_rss_mb": before_kb / 1024,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "vm_hwm_mb": hwm_kb / 1024,
}))
"""


def measure_dragon(size: int) -> dict[str, float]:
    """Render + encode dragon at depth 20 in a fresh interpreter; times and peak RSS.

    Call this before the benchmark allocates anything big: on Linux a child's
    ``ru_maxrss`` starts at its parent's high-water mark (it is carried across
    fork/vfork + exec), so a child of a process that just held a 10240 px
    baseline canvas would report the parent's peak, not its own. ``VmHWM``
    (reset by exec) is reported alongside as a cross-check.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-c", _DRAGON_CHILD, str(DRAGON_DEPTH), str(size)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    measured: dict[str, float] = json.loads(result.stdout)
    return measured


def section_dragon(size: int, measured: dict[str, float]) -> None:
    print(f"\n## 3. dragon at depth {DRAGON_DEPTH}, {size} px, in a fresh process (render_indexed + encode_png)\n")
    print("   (measured first, before this process allocated anything big; see measure_dragon)\n")
    print_table(
        ["segments", "s render", "s encode", "s total", "PNG bytes", "RSS after import MB", "peak RSS MB", "VmHWM MB"],
        [
            [
                f"{measured['segments']:,}",
                f"{measured['render_s']:.3f}",
                f"{measured['encode_s']:.3f}",
                f"{measured['total_s']:.3f}",
                f"{measured['png_bytes']:,}",
                f"{measured['import_rss_mb']:.0f}",
                f"{measured['peak_rss_mb']:.0f}",
                f"{measured['vm_hwm_mb']:.0f}",
            ]
        ],
    )
    print(
        f"\n(goals: <= {GOAL_DRAGON_S:.1f} s and <= {GOAL_DRAGON_MB:.0f} MB peak RSS, "
        "ru_maxrss of the whole process including the interpreter and imports)"
    )


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="image edge in pixels (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement, best kept (default 3)")
    parser.add_argument("--quick", action="store_true", help=f"baseline on {len(QUICK_KINDS)} kinds only")
    parser.add_argument("--no-baseline", action="store_true", help="skip the (slow) baseline section")
    parser.add_argument("--check", action="store_true", help="exit 1 if any goal fails")
    args = parser.parse_args(argv)

    print(
        f"# bench_render: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"size {args.size} px, repeat {args.repeat}{', quick' if args.quick else ''}"
    )
    started = time.perf_counter()
    dragon = measure_dragon(args.size)
    # As the render workers and the Lambda handler run render_png: buffers reused, not faulted in afresh.
    tune_allocator()
    timings = section_kinds(args.size, args.repeat)
    median_ms = statistics.median(t.total_ms for t in timings)
    goals: list[tuple[str, str, str, bool]] = [
        (
            f"median render_png, {len(timings)} kinds @ {args.size} px",
            f"<= {GOAL_MEDIAN_MS} ms",
            f"{median_ms:.1f} ms",
            median_ms <= GOAL_MEDIAN_MS,
        )
    ]
    size_ratio = sum(t.png_bytes for t in timings) / sum(t.png1_bytes for t in timings)
    goals.append(
        (
            f"PNG bytes vs Pillow's zlib 1, {len(timings)} kinds",
            f"<= {GOAL_SIZE_RATIO:.2f}x",
            f"{size_ratio:.3f}x",
            size_ratio <= GOAL_SIZE_RATIO,
        )
    )
    if not args.no_baseline:
        overall, _, _ = section_baseline(args.size, args.repeat, args.quick)
        scope = f"{len(QUICK_KINDS)} kinds" if args.quick else f"{len(KINDS)} kinds"
        goals.append(
            (
                f"speed-up vs per-segment baseline ({scope})",
                f">= {GOAL_SPEEDUP:.0f}x",
                f"{overall:.0f}x",
                overall >= GOAL_SPEEDUP,
            )
        )
    section_dragon(args.size, dragon)
    goals.append(
        (
            f"dragon_{DRAGON_DEPTH} render+encode time",
            f"<= {GOAL_DRAGON_S:.1f} s",
            f"{dragon['total_s']:.3f} s",
            dragon["total_s"] <= GOAL_DRAGON_S,
        )
    )
    goals.append(
        (
            f"dragon_{DRAGON_DEPTH} peak RSS",
            f"<= {GOAL_DRAGON_MB:.0f} MB",
            f"{dragon['peak_rss_mb']:.0f} MB",
            dragon["peak_rss_mb"] <= GOAL_DRAGON_MB,
        )
    )

    print("\n## 4. Summary\n")
    print_table(
        ["goal", "target", "measured", "result"],
        [[name, target, measured, "PASS" if ok else "FAIL"] for name, target, measured, ok in goals],
    )
    print(f"\n(benchmark wall time {time.perf_counter() - started:.0f} s)")
    return 1 if args.check and not all(ok for *_, ok in goals) else 0


if __name__ == "__main__":
    sys.exit(main())
