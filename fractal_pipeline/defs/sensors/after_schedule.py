"""``render_random_fractals``: after a scheduled specs run succeeds, render its partitions in one run."""

import dagster as dg

from fractal_pipeline.defs import tags
from fractal_pipeline.defs.assets.specs import fractal_specs
from fractal_pipeline.defs.jobs import RANDOM_JOB_NAME, random_fractals_job, render_job
from fractal_pipeline.defs.resources import FractalStoreResource
from fractal_pipeline.defs.schedules import RENDER_AFTER_SCHEDULE_NAME
from fractal_pipeline.defs.sensors.plan import PartitionPlan
from fractal_pipeline.defs.settings import DEFAULT_INTERVAL_S, CostSettings


def _keys_of_specs_run(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=1000
    ).records
    for record in records:
        materialization = record.asset_materialization
        if materialization is not None and materialization.asset_key == fractal_specs.key:
            value = materialization.metadata.get("keys")
            if value is not None and isinstance(value.value, list):
                return [str(key) for key in value.value]
    return []


def render_after_schedule_sensor(
    minimum_interval_seconds: int = DEFAULT_INTERVAL_S, cost: CostSettings | None = None
) -> dg.SensorDefinition:
    """After a successful ``random_fractals`` run, render its specs' partitions in one batched run (its
    prediction in its tags; the schedule's tick checked the budget)."""

    @dg.run_status_sensor(
        name=RENDER_AFTER_SCHEDULE_NAME,
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[random_fractals_job],
        request_job=render_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Renders the partitions a successful {RANDOM_JOB_NAME} run registered (one batched run).",
    )
    def _render(context: dg.RunStatusSensorContext, store: FractalStoreResource) -> dg.RunRequest | dg.SkipReason:
        run_id = context.dagster_run.run_id
        keys = _keys_of_specs_run(context.instance, run_id)
        plan = PartitionPlan.load(context.instance, store.get_store(), cost)
        request = plan.render_request(keys, f"{RANDOM_JOB_NAME}:{run_id}", {tags.SPECS_RUN: run_id})
        if request is None:
            return dg.SkipReason(f"run {run_id[:8]}: all {len(keys)} specs are already stored")
        context.log.info(f"run {run_id[:8]}: rendering {len(plan.requested)} of its {len(keys)} specs in one run")
        return request

    return _render
