"""``fractal_images``: one PNG per spec partition, rendered in parallel and recorded as each is stored."""

import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from fractal_pipeline.defs.assets.common import GROUP, OWNERS, PROGRESS_EVERY_S, one_line_failure
from fractal_pipeline.defs.assets.specs import fractal_specs
from fractal_pipeline.defs.cancel import CancelWatch, canceled
from fractal_pipeline.defs.cost import RecordedPrediction
from fractal_pipeline.defs.metadata import SKIPPED_KEY, partition_metadata, unreported_metadata
from fractal_pipeline.defs.partitions import spec_partitions
from fractal_pipeline.defs.resources import FractalStoreResource, RenderBackendResource
from fractal_pipeline.defs.summary import batch_summary_markdown
from fractal_pipeline.fractals import FractalSpec, InvalidSpec
from fractal_pipeline.instance.events import MaterializationBatcher
from fractal_pipeline.store import StoreError
from fractal_pipeline.workers.pool import StartedWorkers
from fractal_pipeline.workers.results import RenderFailure, RenderResult
from fractal_pipeline.workers.timings import WorkItem

IMAGES_CHECK = "pngs_valid"
#: A stored PNG's partition is recorded within this long (materializations are written in batches).
MATERIALIZATION_WINDOW_S = 0.25


class RenderConfig(dg.Config):
    """How to render a batch of partitions."""

    workers: int = Field(default=0, ge=0, description="Worker processes; 0 = the resource's setting (one per CPU)")
    only: list[str] | None = Field(
        default=None,
        description=(
            "Render only these partitions of the run's range and skip the others (`fractal-pipeline run` and the "
            "sensors set it when the range holds partitions that are stored already or not theirs); "
            "unset = every partition of the range"
        ),
    )


def _materialized_in_run(context: dg.AssetExecutionContext) -> set[str]:
    """Partitions of this asset that this run already materialised (before a step retry)."""
    records = context.instance.get_records_for_run(
        context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=1_000_000
    ).records
    return {
        record.event_log_entry.dagster_event.partition
        for record in records
        if record.event_log_entry.dagster_event is not None and record.event_log_entry.dagster_event.partition
    }


#: Storage outages and dead workers are retried: the retry renders only what this run has not stored yet.
IMAGES_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)


# BackfillPolicy is beta in Dagster and this asset relies on it (a backfill of many partitions is one run):
# its warning is nothing a user of `dagster` or `dg` commands can act on.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    _images_asset = dg.asset(
        group_name=GROUP,
        kinds={"python", "pillow"},
        owners=OWNERS,
        partitions_def=spec_partitions,
        retry_policy=IMAGES_RETRY_POLICY,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="lambda_render",  # limited only where the instance sets a limit (deploy/dagster.yaml: 4 steps)
        deps=[fractal_specs],
        output_required=False,
        io_manager_key="png_io_manager",
        check_specs=[
            dg.AssetCheckSpec(
                IMAGES_CHECK,
                asset="fractal_images",
                description="Every PNG of the batch decodes, has its spec's size and is not blank.",
            )
        ],
        description=(
            "One PNG per spec at `fractals/<key>.png` in the fractal store. A backfill of many partitions "
            "is one run; the specs render in parallel worker processes and each partition is stored and "
            "materialised as soon as its PNG is written (thumbnail, location and timings in its metadata).\n\n"
            "Partition metadata: `thumbnail` (~128 px preview, *Show Markdown*), `location` (file or `s3://` URL), "
            "`segments`, `bytes` (PNG size), `render_ms` / `encode_ms` / `put_ms` (time per phase), `worker` "
            "(process or Lambda invocation), `worker_started_at`, `started_at`, `stored_at`, and `stored_by` when the "
            "step's process stored the PNG its worker rendered (a worker that leaves a CPU free), and `render_version` "
            "(the core and encoder that made the timings, which the cost model is calibrated on). The `pngs_valid` "
            "check of each batch carries `workers`, a per-worker table and timeline of the step, and `prediction`, "
            "the render time predicted at launch against the actual one; "
            "`fractal-pipeline events RUN_ID` prints the same timelines in a terminal."
        ),
    )


@_images_asset
def fractal_images(
    context: dg.AssetExecutionContext,
    config: RenderConfig,
    store: FractalStoreResource,
    renderer: RenderBackendResource,
    started_workers: dg.ResourceParam[StartedWorkers],
) -> Iterator[dg.DagsterEvent | dg.AssetCheckResult]:
    in_range = list(context.partition_keys)
    if not in_range:
        raise dg.Failure(description=_empty_range_message(context), allow_retries=False)
    wanted = set(config.only) if config.only is not None else None
    keys = in_range if wanted is None else [key for key in in_range if key in wanted]
    skipped = [] if wanted is None else [key for key in in_range if key not in wanted]
    try:
        yield from _render_images(context, config, store, renderer, keys, skipped, started_workers)
    except dg.Failure as exc:
        if skipped and (not exc.allow_retries or context.retry_number >= IMAGES_RETRY_POLICY.max_retries):
            yield from _record_skipped(context, skipped)
        raise


def _empty_range_message(context: dg.AssetExecutionContext) -> str:
    try:
        selected = context.partition_key_range
        shown = f"{selected.start}...{selected.end}"
    except Exception:  # no range to show: say what is wrong without it
        shown = "the run's partition range"
    return (
        f"--partition-range: {shown} selects no fractal_specs partition; partitions are ordered by registration, "
        "so give the first key, then the last (the `partition_range` metadata of fractal_specs)"
    )


def _record_skipped(context: dg.AssetExecutionContext, skipped: list[str]) -> Iterator[dg.DagsterEvent]:
    """Record again the skipped partitions that are materialised, so that the failed run does not mark them failed.

    Dagster marks a partition failed when a failed run planned it and nothing materialised it since; a run
    over a range plans every partition of it, including those it skipped because they are stored already.
    Each is recorded with its last materialisation's thumbnail and location, and ``skipped`` saying why.
    """
    remaining = set(context.instance.get_materialized_partitions(context.asset_key)) & set(skipped)
    found: dict[str, Mapping[str, Any]] = {}
    cursor = None
    while remaining:
        page = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=sorted(remaining)),
            limit=1000,
            cursor=cursor,
        )
        for record in page.records:
            materialization = record.asset_materialization
            if materialization is not None and materialization.partition in remaining:
                found[materialization.partition] = materialization.metadata
                remaining.discard(materialization.partition)
        if not page.has_more:
            break
        cursor = page.cursor
    if not found:
        return
    batcher = MaterializationBatcher(context, window_s=float("inf"))  # one batch, flushed below
    for key, metadata in found.items():
        kept = {name: metadata[name] for name in SKIPPED_METADATA if name in metadata}
        kept[SKIPPED_KEY] = "already stored; not rendered again by this run"
        batcher.add(dg.AssetMaterialization(asset_key=context.asset_key, partition=key, metadata=kept))
    context.log.info(f"{len(found)} skipped partitions recorded again as stored, so that this failed run keeps them")
    yield from batcher.flush()


#: What a skipped partition's record keeps of its last materialisation: what it is and where.
SKIPPED_METADATA = ("thumbnail", "location", "segments", "bytes")


def _render_images(
    context: dg.AssetExecutionContext,
    config: RenderConfig,
    store: FractalStoreResource,
    renderer: RenderBackendResource,
    keys: list[str],
    skipped: list[str],
    started: StartedWorkers,
) -> Iterator[dg.DagsterEvent | dg.AssetCheckResult]:
    try:
        store.get_store().check()
    except StoreError as exc:
        raise one_line_failure(exc) from exc
    if skipped:
        context.log.info(f"rendering {len(keys)} of the range's partitions; skipping {len(skipped)} (config `only`)")
    keys, failed = _valid_keys(context, keys)
    keys = _not_stored_by_this_run(context, keys)
    batch = _Batch(context, total=len(keys) + len(failed), failed=failed)
    context.log.info(f"storing {len(keys)} PNGs in {store.store_config().description}")
    if batch.cancel.requested():
        raise canceled(0, batch.total)
    outcomes = renderer.render(
        context,
        keys,
        store.store_config(),
        config.workers,
        heartbeat_s=MATERIALIZATION_WINDOW_S,
        should_stop=batch.cancel.requested,
        started=started,
        on_stop=batch.record_unreported,
    )
    yield from batch.record(outcomes)
    yield from batch.finish(skipped)


def _valid_keys(context: dg.AssetExecutionContext, keys: list[str]) -> tuple[list[str], list[RenderFailure]]:
    """The keys that name a spec; a bad key (an old format, a typo in "Add partition") fails its own partition."""
    valid: list[str] = []
    failed: list[RenderFailure] = []
    for key in keys:
        try:
            FractalSpec.from_key(key)
        except InvalidSpec as exc:
            failed.append(RenderFailure(key, str(exc)))
            context.log.error(f"{key}: {exc}")
        else:
            valid.append(key)
    return valid, failed


def _not_stored_by_this_run(context: dg.AssetExecutionContext, keys: list[str]) -> list[str]:
    """On a step retry, the keys this run has not stored yet."""
    if context.retry_number == 0:
        return keys
    stored = _materialized_in_run(context)
    if stored:
        context.log.info(
            f"retry {context.retry_number}: {len(stored)} partitions were already stored by this run; "
            f"rendering the other {len(keys) - len(stored & set(keys))}"
        )
    return [key for key in keys if key not in stored]


class _Batch:
    """One step's batch: records each stored PNG as it arrives, reports progress, ends with the check."""

    def __init__(self, context: dg.AssetExecutionContext, total: int, failed: list[RenderFailure]) -> None:
        self.context = context
        self.total = total
        self.failed = failed
        self.done: list[RenderResult] = []
        self.unreported: list[str] = []  # stored by workers stopped before they reported them
        self.started = time.monotonic()
        self.started_at = time.time()
        self.last_report = self.started
        self.batcher = MaterializationBatcher(context, window_s=MATERIALIZATION_WINDOW_S)
        self.asset_key = context.asset_key  # not free: Dagster recomputes it on every access
        self.cancel = CancelWatch(context)

    def record(self, outcomes: Any) -> Iterator[dg.DagsterEvent]:
        """Record outcomes as they arrive; stops the workers at once if the run is asked to stop."""
        try:
            for outcome in outcomes:
                yield from self._outcome(outcome)  # a PNG already stored is recorded, even by a run that is stopping
                if self.cancel.requested():
                    break
            outcomes.close()  # stops the workers at once if the loop broke off
            yield from self.batcher.flush()
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
            outcomes.close()
            self.batcher.flush()  # the PNGs stored so far are recorded (not yielded: the step is stopping)
            # Dagster turns an interrupt inside the step into a retry when the step has a RetryPolicy,
            # so a run terminated from the UI or `fractal-pipeline cancel` would start rendering again.
            # The workers are already stopped (render_many); a requested termination ends the step.
            if not self.cancel.requested(now_or_never=True):
                raise
            raise canceled(self.stored(), self.total) from exc
        except BaseException:
            outcomes.close()
            self.batcher.flush()
            raise
        if self.cancel.requested():  # a run asked to stop ends CANCELED, even if its last PNG was just stored
            raise canceled(self.stored(), self.total)

    def record_unreported(self, locations: dict[str, str]) -> None:
        """Record the PNGs that stopped workers had stored and not reported (``render_many``'s ``on_stop``):
        they are stored, so their partitions are materialized. Recorded when the batcher is flushed."""
        for key, location in locations.items():
            self.unreported.append(key)
            self.batcher.add(
                dg.AssetMaterialization(
                    asset_key=self.asset_key, partition=key, metadata=unreported_metadata(key, location)
                )
            )

    def stored(self) -> int:
        """PNGs this batch stored and recorded."""
        return len(self.done) + len(self.unreported)

    def _outcome(self, outcome: RenderResult | RenderFailure | None) -> Iterator[dg.DagsterEvent]:
        if outcome is None:  # idle: record what waits
            yield from self.batcher.tick()
            return
        if isinstance(outcome, RenderFailure):
            self.failed.append(outcome)
            self.context.log.error(f"{outcome.key}: {outcome.error}")
            return
        self.done.append(outcome)
        yield from self.batcher.add(
            dg.AssetMaterialization(
                asset_key=self.asset_key, partition=outcome.key, metadata=partition_metadata(outcome)
            )
        )
        now = time.monotonic()
        if now - self.last_report >= PROGRESS_EVERY_S:
            self.last_report = now
            rate = len(self.done) / (now - self.started)
            self.context.log.info(
                f"{len(self.done) + len(self.failed)}/{self.total} done ({rate:.1f}/s), {len(self.failed)} failed"
            )

    def finish(self, skipped: list[str]) -> Iterator[dg.AssetCheckResult]:
        """Log the batch, yield its check, and fail the step if a partition failed."""
        done, failed, total = self.done, self.failed, self.total
        elapsed = time.monotonic() - self.started
        render_s = sum(r.render_ms + r.encode_ms for r in done) / 1000
        self.context.log.info(
            f"{len(done)}/{total} PNGs stored in {elapsed:.1f} s ({len(done) / max(elapsed, 1e-9):.1f}/s) by "
            f"{len({r.worker for r in done})} workers; render+encode CPU {render_s:.1f} s; {len(failed)} failed"
            + (f"; {len(skipped)} skipped" if skipped else "")
        )
        summary = batch_summary_markdown(
            [WorkItem.from_result(r) for r in done], total, len(failed), self.started_at, time.time()
        )
        predicted = RecordedPrediction.from_tags(self.context.run.tags)
        comparison = (
            predicted.compared(render_s, elapsed)
            if predicted is not None
            else "no prediction: this run was launched without one"
        )
        self.context.log.info(comparison)
        yield dg.AssetCheckResult(
            check_name=IMAGES_CHECK,
            asset_key=self.context.asset_key,
            passed=not failed,
            metadata={
                "checked": len(done),
                "skipped": len(skipped),
                "workers": dg.MetadataValue.md(summary),
                "prediction": comparison,
                "predicted_render_s": predicted.render_s if predicted is not None else None,
                "actual_render_s": round(render_s, 3),
                "failed": dg.MetadataValue.json({f.key: f.error for f in failed[:100]}),
            },
        )
        if failed:
            raise dg.Failure(
                description=f"{len(failed)} of {total} partitions failed: "
                + "; ".join(f"{f.key}: {f.error}" for f in failed[:5]),
                metadata={"failed_keys": dg.MetadataValue.json([f.key for f in failed])},
                # An outage is retried (the retry renders only what is missing); a bad spec is not.
                allow_retries=any(f.transient for f in failed),
            )
