"""One tick's view of the partitions, and the one images run it requests for a batch of keys."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

from fractal_pipeline.cost import CostModel, Prediction
from fractal_pipeline.defs.batch_plan import plan_batch
from fractal_pipeline.defs.cost import cost_model, predict_keys, prediction_tags
from fractal_pipeline.defs.jobs import RENDER_JOB_NAME
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.defs.settings import CostSettings
from fractal_pipeline.store import FractalStore


@dataclass
class PartitionPlan:
    """One tick's view of the partitions: their order (with this tick's additions), what is stored, and the
    cost model that predicts each batch."""

    order: list[str]
    existing: set[str]
    stored: set[str]
    model: CostModel = field(default_factory=CostModel)
    cost: CostSettings = field(default_factory=CostSettings)
    added: list[str] = field(default_factory=list)
    requested: set[str] = field(default_factory=set)

    @classmethod
    def load(
        cls, instance: dg.DagsterInstance, store: FractalStore, cost: CostSettings | None = None
    ) -> "PartitionPlan":
        order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
        return cls(order, set(order), store.stored_images(order), cost_model(instance), cost or CostSettings())

    def register(self, keys: Iterable[str]) -> list[str]:
        """Append keys not registered yet (as the daemon will) and return them."""
        new = [key for key in keys if key not in self.existing]
        self.existing.update(new)
        self.order.extend(new)
        self.added.extend(new)
        return new

    def predict(self, keys: Sequence[str]) -> Prediction:
        """The prediction for those of ``keys`` neither stored nor requested this tick yet."""
        done = self.stored | self.requested
        return predict_keys(self.model, [key for key in dict.fromkeys(keys) if key not in done], self.cost)

    def over_budget(self, prediction: Prediction) -> str | None:
        """One line if ``prediction`` is over the batch budget (``FRACTALS_MAX_BATCH_SECONDS``), else None."""
        return prediction.over_budget(self.cost.max_batch_s)

    def render_request(self, keys: Sequence[str], run_key: str, tags: Mapping[str, str]) -> dg.RunRequest | None:
        """The one run that renders those of ``keys`` neither stored nor requested this tick yet
        (:func:`~fractal_pipeline.defs.batch_plan.plan_batch`), its prediction in its tags; None if there
        are none."""
        prediction = self.predict(keys)
        plan = plan_batch(keys, self.order, self.stored | self.requested)
        if plan.run is None:
            return None
        self.requested.update(plan.to_render)
        return dg.RunRequest(
            run_key=run_key,
            job_name=RENDER_JOB_NAME,
            run_config=plan.run.run_config(),
            tags={**tags, **plan.run.tags, **prediction_tags(prediction)},
        )
