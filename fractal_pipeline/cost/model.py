"""The cost model: a batch's render time, wall time and price, predicted from its specs' segments and pixels.

One spec's render plus encode time is ``fixed_ms + segment_us * segments / 1000 + mpixel_ms * pixels / 1e6``:
drawing is one polyline point per segment, and the band filter, quantisation and deflate touch every pixel.
The coefficients come from what this instance recorded (:func:`fit` over :class:`Sample`), for timings made
by the current core and encoder (:data:`RENDER_VERSION`), or else from :data:`BUILT_IN`, which
``benchmarks/bench_cost_model.py`` measures (docs/cost.md). Pure Python and numpy: no Dagster, no boto3.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fractal_pipeline.fractals import CORE_VERSION, FractalSpec
from fractal_pipeline.fractals.png import PNG_ENCODER

#: The core and encoder that make this process's timings; partitions record it as ``render_version``.
RENDER_VERSION = f"core {CORE_VERSION}, {PNG_ENCODER}"
BACKENDS = ("local", "lambda", "fargate")
#: Predicted render CPU seconds one batch (a spec file, a ``run``, a schedule tick) may take.
BUDGET_ENV = "FRACTALS_MAX_BATCH_SECONDS"
DEFAULT_MAX_BATCH_SECONDS = 3600.0
#: Recorded partitions needed to fit all three coefficients (over at least two image sizes).
MIN_FIT_SAMPLES = 30
#: Recorded partitions needed to scale the built-in coefficients to this machine's speed.
MIN_SCALE_SAMPLES = 5
#: Lambda gives a function one full vCPU at this memory size, and a share of one below it.
LAMBDA_FULL_VCPU_MB = 1769


@dataclass(frozen=True)
class Coefficients:
    """Render plus encode milliseconds of one spec, and where the numbers come from (``basis``)."""

    fixed_ms: float
    segment_us: float
    mpixel_ms: float
    basis: str

    def spec_ms(self, segments: int, pixels: int) -> float:
        return self.fixed_ms + self.segment_us * segments / 1000 + self.mpixel_ms * pixels / 1e6

    def scaled(self, factor: float, basis: str) -> Coefficients:
        return Coefficients(self.fixed_ms * factor, self.segment_us * factor, self.mpixel_ms * factor, basis)


#: Measured by ``benchmarks/bench_cost_model.py`` for the current core (docs/cost.md has the run).
BUILT_IN = Coefficients(fixed_ms=2.38, segment_us=0.598, mpixel_ms=5.65, basis="built-in (bench_cost_model)")


@dataclass(frozen=True)
class Sample:
    """One rendered partition: its spec's segments and pixels, its render plus encode ms, where it ran."""

    segments: int
    pixels: int
    ms: float
    on_lambda: bool = False


def _features(samples: Sequence[Sample]) -> np.ndarray:
    return np.array([[1.0, s.segments / 1000, s.pixels / 1e6] for s in samples], dtype=np.float64)


def fit(samples: Sequence[Sample], basis: str) -> Coefficients:
    """Non-negative least squares of the three coefficients, each sample weighted by ``1 / sqrt(ms)``.

    Between absolute errors (which serve the batch total but let a few large specs decide) and relative
    ones (which serve each spec but bias the total): both are what a prediction is read for. With three
    unknowns the non-negative fit is the best of the fits over each subset of the terms.
    """
    if not samples:
        raise ValueError("fit: no samples")
    x = _features(samples)
    y = np.array([s.ms for s in samples], dtype=np.float64)
    weight = 1.0 / np.sqrt(np.maximum(y, 0.05))
    best: tuple[float, np.ndarray] | None = None
    for size in (3, 2, 1):
        for columns in itertools.combinations(range(3), size):
            chosen = list(columns)
            solution, *_ = np.linalg.lstsq(x[:, chosen] * weight[:, None], y * weight, rcond=None)
            if (solution < 0).any():
                continue
            full = np.zeros(3)
            full[chosen] = solution
            error = float(np.sum(((x @ full - y) * weight) ** 2))
            if best is None or error < best[0]:
                best = (error, full)
    coefficients = best[1] if best is not None else np.array([float(np.mean(y)), 0.0, 0.0])
    fixed_ms, segment_us, mpixel_ms = (float(c) for c in coefficients)
    return Coefficients(fixed_ms, segment_us, mpixel_ms, basis)


def calibrated(samples: Sequence[Sample], fallback: Coefficients, where: str) -> Coefficients:
    """Coefficients for ``samples`` recorded ``where``: fitted with enough varied history, the ``fallback``
    scaled to their speed with a little, the ``fallback`` itself with less."""
    sizes = {s.pixels for s in samples}
    if len(samples) >= MIN_FIT_SAMPLES and len(sizes) >= 2:
        return fit(samples, f"fitted on {len(samples)} partitions recorded {where} ({RENDER_VERSION})")
    if len(samples) >= MIN_SCALE_SAMPLES:
        predicted = sum(fallback.spec_ms(s.segments, s.pixels) for s in samples)
        factor = sum(s.ms for s in samples) / max(predicted, 1e-9)
        return fallback.scaled(
            factor, f"{fallback.basis} x {factor:.2f}, scaled to {len(samples)} partitions recorded {where}"
        )
    return fallback


@dataclass(frozen=True)
class Prices:
    """What AWS charges, and the sizes it charges for (us-east-1 list prices of January 2025 by default)."""

    lambda_gb_s: float = 0.0000166667
    lambda_request: float = 0.20 / 1_000_000
    lambda_memory_mb: int = LAMBDA_FULL_VCPU_MB
    lambda_chunk: int = 8
    lambda_concurrency: int = 16
    fargate_vcpu_h: float = 0.04048
    fargate_gb_h: float = 0.004445
    fargate_vcpu: int = 2
    fargate_gb: float = 4.0

    def with_values(self, values: Mapping[str, float]) -> Prices:
        """These prices with some replaced (names as the fields); ValueError naming an unknown one."""
        known = set(self.__dataclass_fields__)
        for name in values:
            if name not in known:
                raise ValueError(f"{name!r} is not a price; use {', '.join(sorted(known))}")
        typed: dict[str, Any] = {
            name: max(1, round(value)) if isinstance(getattr(self, name), int) else float(value)
            for name, value in values.items()
        }
        return replace(self, **typed)


@dataclass(frozen=True)
class CostModel:
    """Coefficients for the local process pool (and Fargate, a vCPU taken as one core here) and for Lambda."""

    local: Coefficients = BUILT_IN
    on_lambda: Coefficients | None = None

    @classmethod
    def from_samples(cls, samples: Iterable[Sample]) -> CostModel:
        """Calibrated from recorded partitions (of the current :data:`RENDER_VERSION`; the caller filters)."""
        recorded = list(samples)
        local = [s for s in recorded if not s.on_lambda]
        remote = [s for s in recorded if s.on_lambda]
        on_lambda = calibrated(remote, BUILT_IN, "on Lambda") if remote else None
        return cls(calibrated(local, BUILT_IN, "locally"), on_lambda)

    def lambda_coefficients(self, prices: Prices) -> Coefficients:
        """Lambda's: its recorded timings when there are any, else the local ones slowed to its CPU share."""
        if self.on_lambda is not None:
            return self.on_lambda
        factor = max(1.0, LAMBDA_FULL_VCPU_MB / prices.lambda_memory_mb)
        return self.local.scaled(
            factor,
            f"{self.local.basis}; no Lambda timings recorded: a vCPU taken as one core here, "
            f"x {factor:.2f} for {prices.lambda_memory_mb} MB",
        )


@dataclass(frozen=True)
class Prediction:
    """A batch's predicted render CPU seconds, wall seconds and cost, by backend, and their basis."""

    backend: str
    specs: int
    segments: int
    pixels: int
    render_s: dict[str, float]
    wall_s: dict[str, float]
    cost_usd: dict[str, float]
    basis: dict[str, str]
    spec_s: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def predicted_render_s(self) -> float:
        """CPU seconds of render plus encode on the backend that renders the batch."""
        return self.render_s[self.backend]

    def over_budget(self, budget_s: float) -> str | None:
        """One line if the batch's predicted render seconds exceed ``budget_s``, else None."""
        if self.predicted_render_s <= budget_s:
            return None
        return (
            f"{BUDGET_ENV}: the batch's predicted render time, {self.predicted_render_s:,.2f} CPU s for "
            f"{self.specs:,} specs, is over the budget of {budget_s:,g} s; raise {BUDGET_ENV} to render it"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "specs_to_render": self.specs,
            "segments": self.segments,
            "pixels": self.pixels,
            "predicted_render_s": round(self.predicted_render_s, 3),
            "predicted_render_s_by_backend": {k: round(v, 3) for k, v in self.render_s.items()},
            "predicted_wall_s": {k: round(v, 3) for k, v in self.wall_s.items()},
            "cost_usd": {k: round(v, 6) for k, v in self.cost_usd.items()},
            "coefficients": dict(self.basis),
        }


def _wall(seconds: Sequence[float], parallel: int) -> float:
    """Wall seconds of ``seconds`` of work over ``parallel`` processes: at least the longest single piece."""
    if not seconds:
        return 0.0
    return max(sum(seconds) / max(1, min(parallel, len(seconds))), max(seconds))


def predict(
    specs: Sequence[FractalSpec], model: CostModel, prices: Prices, workers: int, backend: str = "local"
) -> Prediction:
    """The prediction for rendering ``specs`` (those not stored yet) with ``workers`` processes on this machine."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    on_lambda = model.lambda_coefficients(prices)
    local_s = [model.local.spec_ms(s.segments, s.size * s.size) / 1000 for s in specs]
    lambda_s = [on_lambda.spec_ms(s.segments, s.size * s.size) / 1000 for s in specs]
    invocations = math.ceil(len(specs) / prices.lambda_chunk)
    lambda_chunks = [sum(lambda_s[i : i + prices.lambda_chunk]) for i in range(0, len(specs), prices.lambda_chunk)]
    fargate_wall = _wall(local_s, prices.fargate_vcpu)
    render = {"local": sum(local_s), "lambda": sum(lambda_s), "fargate": sum(local_s)}
    return Prediction(
        backend=backend,
        specs=len(specs),
        segments=sum(s.segments for s in specs),
        pixels=sum(s.size * s.size for s in specs),
        render_s=render,
        wall_s={
            "local": _wall(local_s, workers),
            "lambda": _wall(lambda_chunks, prices.lambda_concurrency),
            "fargate": fargate_wall,
        },
        cost_usd={
            "lambda": render["lambda"] * prices.lambda_memory_mb / 1024 * prices.lambda_gb_s
            + invocations * prices.lambda_request,
            "fargate": fargate_wall
            / 3600
            * (prices.fargate_vcpu * prices.fargate_vcpu_h + prices.fargate_gb * prices.fargate_gb_h),
        },
        basis={"local": model.local.basis, "lambda": on_lambda.basis, "fargate": model.local.basis},
        spec_s={s.key: seconds for s, seconds in zip(specs, local_s if backend != "lambda" else lambda_s, strict=True)},
    )
