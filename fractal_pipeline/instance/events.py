"""Per-partition materializations recorded in short batches: Dagster stores a batch in one transaction."""

from __future__ import annotations

import time

import dagster as dg
from dagster._core.events import DagsterEventBatchMetadata, generate_event_batch_id


class MaterializationBatcher:
    """Records per-partition materializations in short batches: a few database transactions a second.

    Each ``dg.AssetMaterialization`` becomes the event Dagster makes of a yielded
    one (``DagsterEvent.asset_materialization``), marked as part of a batch. With
    ``DAGSTER_EVENT_BATCH_SIZE`` set (:mod:`fractal_pipeline.instance.storage` sets it; so does
    deploy/template.yaml for the Postgres instance), Dagster holds a batch's
    events until its last one and hands them to the event log's
    ``store_event_batch``: one transaction instead of one per partition. Without
    it, each event is stored when made, as if yielded. A batch closes once its
    oldest event is ``window_s`` old (checked on each :meth:`add` and on
    :meth:`tick`, the render loop's idle heartbeat) or on :meth:`flush`: a
    partition is recorded at most ~``window_s`` after its PNG is stored, and
    never before.
    """

    def __init__(self, context: dg.AssetExecutionContext, window_s: float):
        self._step = context.get_step_execution_context()
        self._window_s = window_s
        self._pending: list[dg.AssetMaterialization] = []
        self._opened = 0.0

    def add(self, materialization: dg.AssetMaterialization) -> list[dg.DagsterEvent]:
        """Buffer one; returns the recorded events if that closed the batch (to yield from the step)."""
        if not self._pending:
            self._opened = time.monotonic()
        self._pending.append(materialization)
        return self.tick()

    def tick(self) -> list[dg.DagsterEvent]:
        """Close the batch if its oldest event is ``window_s`` old."""
        if self._pending and time.monotonic() - self._opened >= self._window_s:
            return self.flush()
        return []

    def flush(self) -> list[dg.DagsterEvent]:
        """Record everything buffered, now."""
        pending, self._pending = self._pending, []
        batch_id = generate_event_batch_id()
        last = len(pending) - 1
        return [
            dg.DagsterEvent.asset_materialization(
                self._step, materialization, DagsterEventBatchMetadata(batch_id, index == last)
            )
            for index, materialization in enumerate(pending)
        ]
