"""The cost model fed from this instance: recorded timings in, predictions out, and their run tags.

:mod:`fractal_pipeline.cost` is the pure model; this module reads the history it is calibrated on
(``fractal_images`` partitions rendered by the current core and encoder) and records a prediction on
the run that renders the batch, so that the run's check and ``fractal-pipeline events`` compare the
actual time with what was predicted when it was launched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dagster as dg

from fractal_pipeline.cost import RENDER_VERSION, CostModel, Prediction, Sample, predict
from fractal_pipeline.defs import tags
from fractal_pipeline.defs.settings import CostSettings
from fractal_pipeline.fractals import FractalSpec, InvalidSpec
from fractal_pipeline.workers.pool import default_workers

IMAGES_ASSET = dg.AssetKey("fractal_images")
#: The most recent partitions the model is calibrated on.
HISTORY_LIMIT = 1000
#: The metadata entry naming the core and encoder that made a partition's timings.
RENDER_VERSION_METADATA = "render_version"


def _value(metadata: Mapping[str, object], name: str) -> object:
    entry = metadata.get(name)
    return getattr(entry, "value", entry)


def recorded_samples(instance: dg.DagsterInstance, limit: int = HISTORY_LIMIT) -> list[Sample]:
    """The most recent ``fractal_images`` partitions rendered by this core and encoder, as samples."""
    records = instance.fetch_materializations(IMAGES_ASSET, limit=limit, ascending=False).records
    samples = []
    for record in records:
        materialization = record.asset_materialization
        if materialization is None or not materialization.partition:
            continue
        metadata = materialization.metadata
        if _value(metadata, RENDER_VERSION_METADATA) != RENDER_VERSION:
            continue
        render_ms, encode_ms = _value(metadata, "render_ms"), _value(metadata, "encode_ms")
        if not isinstance(render_ms, (int, float)) or not isinstance(encode_ms, (int, float)):
            continue
        try:
            spec = FractalSpec.from_key(materialization.partition)
        except InvalidSpec:
            continue
        worker = str(_value(metadata, "worker") or "")
        on_lambda = worker.startswith("lambda-")
        samples.append(Sample(spec.segments, spec.size * spec.size, render_ms + encode_ms, on_lambda))
    return samples


def cost_model(instance: dg.DagsterInstance) -> CostModel:
    """The model calibrated on what this instance recorded."""
    return CostModel.from_samples(recorded_samples(instance))


def predict_specs(
    model: CostModel, specs: Iterable[FractalSpec], settings: CostSettings, workers: int = 0
) -> Prediction:
    """The prediction for rendering ``specs`` on the settings' backend (``workers`` 0: one per CPU)."""
    return predict(list(specs), model, settings.prices, workers or default_workers(), settings.backend)


def predict_keys(model: CostModel, keys: Iterable[str], settings: CostSettings, workers: int = 0) -> Prediction:
    """:func:`predict_specs` for partition keys (a key that names no spec costs nothing: it fails at once)."""
    specs = []
    for key in keys:
        try:
            specs.append(FractalSpec.from_key(key))
        except InvalidSpec:
            continue
    return predict_specs(model, specs, settings, workers)


def prediction_tags(prediction: Prediction) -> dict[str, str]:
    """The run tags that record a prediction when its run is launched."""
    return {
        tags.PREDICTED_RENDER_S: f"{prediction.predicted_render_s:.3f}",
        tags.PREDICTED_WALL_S: f"{prediction.wall_s[prediction.backend]:.3f}",
        tags.PREDICTED_COST_USD: json.dumps({k: round(v, 6) for k, v in prediction.cost_usd.items()}),
        tags.PREDICTION_BASIS: f"{prediction.backend}: {prediction.basis[prediction.backend]}"[:250],
    }


@dataclass(frozen=True)
class RecordedPrediction:
    """What a run's tags say was predicted for it when it was launched."""

    render_s: float
    wall_s: float | None
    cost_usd: dict[str, float]
    basis: str

    @classmethod
    def from_tags(cls, run_tags: Mapping[str, str]) -> RecordedPrediction | None:
        """The prediction in ``run_tags``; None for runs launched without one (or before predictions)."""
        try:
            render_s = float(run_tags[tags.PREDICTED_RENDER_S])
        except (KeyError, ValueError):
            return None
        try:
            wall_s: float | None = float(run_tags.get(tags.PREDICTED_WALL_S, ""))
        except ValueError:
            wall_s = None
        try:
            cost = {str(k): float(v) for k, v in json.loads(run_tags.get(tags.PREDICTED_COST_USD, "{}")).items()}
        except (ValueError, TypeError, AttributeError):
            cost = {}
        return cls(render_s, wall_s, cost, run_tags.get(tags.PREDICTION_BASIS, ""))

    def compared(self, actual_render_s: float, actual_wall_s: float | None = None) -> str:
        """One line: predicted against actual render CPU seconds (and wall seconds when known)."""
        ratio = actual_render_s / self.render_s if self.render_s > 0 else float("inf")
        line = f"predicted {self.render_s:.2f} s of render CPU, actual {actual_render_s:.2f} s ({ratio:.2f}x)"
        if self.wall_s is not None and actual_wall_s is not None:
            line += f"; wall predicted {self.wall_s:.2f} s, actual {actual_wall_s:.2f} s"
        return line


def prediction_markdown(prediction: Prediction, budget_s: float) -> str:
    """Markdown of a batch's prediction: render and wall seconds and cost by backend, and the coefficients."""
    lines = [
        f"**{prediction.specs}** specs to render, {prediction.segments:,} segments, "
        f"{prediction.pixels / 1e6:,.1f} Mpx; predicted {prediction.predicted_render_s:,.2f} s of render CPU "
        f"on {prediction.backend} (budget {budget_s:,.0f} s)",
        "",
        "| backend | render CPU s | wall s | cost USD | coefficients |",
        "|---|---:|---:|---:|---|",
    ]
    for backend, render_s in prediction.render_s.items():
        cost = prediction.cost_usd.get(backend)
        shown = f"{cost:.6f}" if cost is not None else "-"
        lines.append(
            f"| {backend} | {render_s:,.2f} | {prediction.wall_s[backend]:,.2f} | {shown} | "
            f"{prediction.basis[backend]} |"
        )
    return "\n".join(lines)
