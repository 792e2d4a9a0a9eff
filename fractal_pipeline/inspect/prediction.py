"""A run's predicted render time, recorded in its tags when it was launched, against what it took."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fractal_pipeline.defs.cost import RecordedPrediction
from fractal_pipeline.inspect.timeline import Timeline

if TYPE_CHECKING:
    import dagster as dg

#: What ``events`` says of a render run launched without a prediction (or before predictions were recorded).
NO_PREDICTION = "no prediction: this run was launched without one (by the UI, or before predictions were recorded)"
#: What ``events`` says of a run that renders nothing (the specs, the collage): there is nothing to predict.
NOTHING_TO_PREDICT = "no prediction: this run renders no fractal_images partitions"


def prediction_vs_actual(instance: dg.DagsterInstance, run_id: str, timeline: Timeline) -> dict[str, Any]:
    """``line``: one line comparing the prediction with the run's render + encode CPU seconds and its
    render wall time (first worker start to last put); and the figures behind it."""
    run = instance.get_run_by_id(run_id)
    predicted = RecordedPrediction.from_tags(run.tags if run is not None else {})
    lanes = timeline.render_lanes
    actual_s = (
        sum(event.duration_ms or 0.0 for lane in lanes for event in lane.events if event.event in ("render", "encode"))
        / 1000
    )
    wall_s = max(lane.end for lane in lanes) - min(lane.start for lane in lanes) if lanes else None
    if predicted is None:
        line = NO_PREDICTION if timeline.run.renders_images else NOTHING_TO_PREDICT
        return {"line": line, "predicted_render_s": None, "actual_render_s": round(actual_s, 3)}
    line = predicted.compared(actual_s, wall_s)
    if timeline.run.status in ("CANCELED", "CANCELING"):  # the prediction is for the whole batch
        rendered = sum(lane.partitions for lane in lanes)
        line += f" (canceled: actual covers only the {rendered} PNGs rendered before it stopped)"
    return {
        "line": line,
        "predicted_render_s": predicted.render_s,
        "predicted_wall_s": predicted.wall_s,
        "predicted_cost_usd": predicted.cost_usd,
        "basis": predicted.basis,
        "actual_render_s": round(actual_s, 3),
        "actual_wall_s": None if wall_s is None else round(wall_s, 3),
    }
