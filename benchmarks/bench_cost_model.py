"""How well the cost model predicts render time: fit on one random batch, score on another.

Run from the repository root::

    python benchmarks/bench_cost_model.py                  # 200 specs per batch, fit seed 1, score seed 2
    python benchmarks/bench_cost_model.py --specs 100 --fit-seed 3 --score-seed 4

Each batch is ``--specs`` random specs of mixed sizes (an equal share at 128, 256, 512, 1024 and 2048 px;
random kinds, depths and palettes), each rendered and encoded once in this process the way a worker does
(``render_spec``: the ``render_ms + encode_ms`` a partition records). The model
(:func:`fractal_pipeline.cost.model.fit`, segments and pixels) is fitted on the fit batch and scored on
the score batch: the error of the predicted total render seconds, and the median per-spec error. The
baseline, measured in the same run: the mean seconds per spec of the fit batch, times the number of specs.
The fitted coefficients are what :data:`fractal_pipeline.cost.model.BUILT_IN` holds (docs/cost.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fractal_pipeline.cost.model import BUILT_IN, Coefficients, Sample, fit  # noqa: E402
from fractal_pipeline.fractals import FractalSpec, random_specs, tune_allocator  # noqa: E402
from fractal_pipeline.workers.results import render_spec  # noqa: E402

SIZES = (128, 256, 512, 1024, 2048)


def batch(count: int, seed: int) -> list[FractalSpec]:
    """``count`` random specs, an equal share at each of :data:`SIZES`."""
    specs: list[FractalSpec] = []
    for index, size in enumerate(SIZES):
        share = count // len(SIZES) + (1 if index < count % len(SIZES) else 0)
        specs += random_specs(share, seed=seed * 100 + index, size=size, palette=None)
    return specs


def measure(specs: list[FractalSpec]) -> list[Sample]:
    """Render and encode each spec once (after one warm-up), as a worker does; its ms as a sample."""
    tune_allocator()  # as a worker: buffers reused, not faulted in afresh
    render_spec(specs[0].key)
    samples = []
    for spec in specs:
        rendered = render_spec(spec.key)
        ms = (rendered.encoded_at - rendered.started_at) * 1000
        samples.append(Sample(spec.segments, spec.size * spec.size, ms))
    return samples


def score(predicted: list[float], actual: list[float]) -> tuple[float, float]:
    """Error of the total (signed, %) and the median per-spec error (absolute, %)."""
    total = (sum(predicted) - sum(actual)) / sum(actual) * 100
    per_spec = statistics.median(abs(p - a) / a * 100 for p, a in zip(predicted, actual, strict=True))
    return total, per_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", type=int, default=200, help="specs per batch")
    parser.add_argument("--fit-seed", type=int, default=1)
    parser.add_argument("--score-seed", type=int, default=2)
    args = parser.parse_args()
    if args.fit_seed == args.score_seed:
        parser.error("--fit-seed and --score-seed must differ: the model is scored on specs it was not fitted on")

    print(f"fit batch: {args.specs} specs, seed {args.fit_seed}; score batch: the same count, seed {args.score_seed}")
    fitted_on = measure(batch(args.specs, args.fit_seed))
    scored = measure(batch(args.specs, args.score_seed))
    coefficients = fit(fitted_on, "fitted")
    mean_ms = statistics.fmean(s.ms for s in fitted_on)
    actual = [s.ms for s in scored]
    models: list[tuple[str, list[float]]] = [
        ("segments + pixels, fitted on the fit batch", [coefficients.spec_ms(s.segments, s.pixels) for s in scored]),
        ("built-in coefficients (BUILT_IN)", [BUILT_IN.spec_ms(s.segments, s.pixels) for s in scored]),
        ("baseline: mean ms per spec of the fit batch", [mean_ms] * len(scored)),
    ]
    print(f"actual total render + encode of the score batch: {sum(actual) / 1000:.2f} s\n")
    print(f"{'model':<46} {'predicted s':>11} {'total error':>12} {'median per-spec error':>22}")
    errors = {}
    for name, predicted in models:
        total, per_spec = score(predicted, actual)
        errors[name] = (total, per_spec)
        print(f"{name:<46} {sum(predicted) / 1000:>11.2f} {total:>+11.1f}% {per_spec:>21.1f}%")
    model_total, model_median = errors[models[0][0]]
    base_total, base_median = errors[models[2][0]]
    print(
        f"\nratio model / baseline: total error {abs(model_total) / max(abs(base_total), 1e-9):.2f}x, "
        f"median per-spec error {model_median / max(base_median, 1e-9):.2f}x"
    )
    print(f"goal: total within +-25 %: {'met' if abs(model_total) <= 25 else 'NOT met'}")
    print(f"fitted coefficients: {_shown(coefficients)}")


def _shown(c: Coefficients) -> str:
    return f"fixed_ms={c.fixed_ms:.3f}, segment_us={c.segment_us:.4f}, mpixel_ms={c.mpixel_ms:.3f}"


if __name__ == "__main__":
    main()
