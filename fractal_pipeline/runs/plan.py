"""The plan of a ``fractal-pipeline run`` before anything is recorded: its specs, what is stored, the images
run it forms, and what that run is predicted to cost. ``run`` and ``run --dry-run`` both make it here."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fractal_pipeline.cost import Prediction
from fractal_pipeline.defs.batch_plan import BatchPlan, plan_batch
from fractal_pipeline.defs.cost import cost_model, predict_specs
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.defs.settings import CostSettings
from fractal_pipeline.fractals import FractalSpec, random_specs
from fractal_pipeline.runs.options import RunOptions

if TYPE_CHECKING:
    import dagster as dg

    from fractal_pipeline.store import FractalStore


@dataclass(frozen=True)
class RunPlan:
    """What ``run`` with these options does now: the seed, its specs, the batch plan and the prediction."""

    options: RunOptions
    seed: int
    specs: tuple[FractalSpec, ...]
    batch: BatchPlan
    prediction: Prediction
    budget_s: float

    @property
    def over_budget(self) -> str | None:
        """One line naming ``FRACTALS_MAX_BATCH_SECONDS`` if the batch is predicted over it, else None."""
        return self.prediction.over_budget(self.budget_s)

    @property
    def command(self) -> str:
        """The ``run`` command that renders this plan (the same seed)."""
        return self.options.command(self.seed)

    def to_json(self) -> dict[str, Any]:
        run = self.batch.run
        return {
            "seed": self.seed,
            "command": self.command,
            "specs": [
                {
                    "key": spec.key,
                    "segments": spec.segments,
                    "pixels": spec.size * spec.size,
                    "stored": spec.key in self.batch.stored,
                    "predicted_render_s": round(self.prediction.spec_s.get(spec.key, 0.0), 4),
                }
                for spec in self.specs
            ],
            "run": None if run is None else {"first": run.first, "last": run.last, "renders": run.renders},
            **self.prediction.to_json(),
            "budget_s": self.budget_s,
            "over_budget": self.over_budget is not None,
        }


def plan_run(options: RunOptions, instance: dg.DagsterInstance, store: FractalStore, settings: CostSettings) -> RunPlan:
    """Plan ``options`` against the instance's partitions and the store, recording nothing.

    Keys not registered yet are placed after the registered ones, as ``fractal_specs`` registers them,
    and :func:`~fractal_pipeline.defs.batch_plan.plan_batch` forms the images run as ``run`` does.
    """
    seed = options.seed if options.seed is not None else secrets.randbits(32)
    specs = random_specs(options.count, seed=seed, kinds=options.kinds, size=options.size, palette=options.spec_palette)
    keys = [spec.key for spec in specs]
    registered = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    known = set(registered)
    order = registered + [key for key in keys if key not in known]
    batch = plan_batch(keys, order, store.stored_images(keys))
    to_render = [spec for spec in specs if spec.key not in batch.stored]
    prediction = predict_specs(cost_model(instance), to_render, settings, options.workers)
    return RunPlan(options, seed, tuple(specs), batch, prediction, settings.max_batch_s)
