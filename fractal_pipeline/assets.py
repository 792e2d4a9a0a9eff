"""The three assets: fractal_specs -> fractal_images (one partition per spec) -> fractal_collage."""

import io
import secrets
import time
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from fractal_pipeline.fractals import (
    DEFAULT_PALETTE,
    DEFAULT_SIZE,
    MAX_SPECS,
    FractalSpec,
    InvalidSpec,
    make_collage,
    random_specs,
)
from fractal_pipeline.instance.events import MaterializationBatcher
from fractal_pipeline.io_managers import PngCollection
from fractal_pipeline.observability import WorkItem, batch_summary_markdown
from fractal_pipeline.partitions import partition_range
from fractal_pipeline.rendering import RenderFailure, RenderResult, png_markdown
from fractal_pipeline.resources import FractalStoreResource, RenderBackendResource
from fractal_pipeline.store import StoreError

GROUP = "fractals"
PARTITIONS_NAME = "fractal_specs"

#: One partition per spec key (``dragon_12``, ``koch_snowflake_4-512px-ice``...).
spec_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)

IMAGES_CHECK = "pngs_valid"
#: Tag of an images run whose launcher tiles the collage right after it (`fractal-pipeline run`): the
#: collage's automation condition leaves those images to it, so a daemon on the same home (`fractal-pipeline
#: ui`) does not tile a second collage of the same images.
COLLAGE_BY_LAUNCHER_TAG = "fractal_pipeline/collage_by_launcher"
PROGRESS_EVERY_S = 2.0
#: A stored PNG's partition is recorded within this long (materializations are written in batches).
MATERIALIZATION_WINDOW_S = 0.25


class FractalSpecsConfig(dg.Config):
    """Which random specs to generate."""

    count: int = Field(default=12, description=f"How many distinct specs (1..{MAX_SPECS:,})")
    seed: int | None = Field(default=None, description="Random seed; unset = a fresh one (recorded in metadata)")
    kinds: list[str] | None = Field(default=None, description="Only these kinds (default: all 26)")
    size: int = Field(default=DEFAULT_SIZE, description="Image edge in pixels (16..8192)")
    palette: str | None = Field(
        default=DEFAULT_PALETTE, description="rainbow, fire, ice, forest or mono; null = random per spec"
    )


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


def _fail(exc: Exception) -> dg.Failure:
    """A one-line failure; retried by the step's RetryPolicy only if the store was unreachable."""
    return dg.Failure(description=str(exc), allow_retries=bool(getattr(exc, "transient", False)))


def _specs_table(specs: list[FractalSpec], new: set[str], limit: int = 50) -> str:
    lines = ["| key | kind | depth | size | palette | segments | new |", "|---|---|---|---|---|---|---|"]
    for spec in specs[:limit]:
        lines.append(
            f"| `{spec.key}` | {spec.kind} | {spec.depth} | {spec.size} | {spec.palette} | "
            f"{spec.segments:,} | {'yes' if spec.key in new else ''} |"
        )
    if len(specs) > limit:
        lines.append(f"| ... {len(specs) - limit} more | | | | | | |")
    return "\n".join(lines)


@dg.asset(
    group_name=GROUP,
    kinds={"python"},
    owners=["team:fractal-pipeline"],
    description=(
        "A batch of distinct random fractal specs (kind, depth, size, palette). Registers one "
        "`fractal_specs` dynamic partition per new spec key, so `fractal_images` can render them.\n\n"
        "Materialize it from the Launchpad with e.g. `count: 20` (and optionally `seed`, `kinds`, `size`, "
        "`palette`). Metadata: `count`, `seed` (re-use it to get the same list), `new_keys` (partitions "
        "added), `keys`, and `specs`, a table of the batch."
    ),
    metadata={
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn("key", "string", description="Partition key, e.g. `dragon_12` or `levy_c_10-512px-ice`"),
                dg.TableColumn("kind", "string", description="One of the 26 L-system kinds (`fractal-pipeline kinds`)"),
                dg.TableColumn("depth", "int", description="Rewriting iterations, within the kind's allowed range"),
                dg.TableColumn("size", "int", description="Image edge in pixels (16..8192)"),
                dg.TableColumn("palette", "string", description="rainbow, fire, ice, forest or mono"),
                dg.TableColumn("segments", "int", description="Line segments the spec draws (known before rendering)"),
            ]
        )
    },
)
def fractal_specs(
    context: dg.AssetExecutionContext, config: FractalSpecsConfig, store: FractalStoreResource
) -> dg.Output[list[FractalSpec]]:
    try:
        store.get_store().check()
        seed = config.seed if config.seed is not None else secrets.randbits(32)
        specs = random_specs(config.count, seed=seed, kinds=config.kinds, size=config.size, palette=config.palette)
    except (InvalidSpec, StoreError) as exc:
        raise _fail(exc) from exc
    if CancelWatch(context).requested():  # nothing registered yet: an interrupted batch leaves no partitions
        raise dg.Failure(description="run canceled before its partitions were registered", allow_retries=False)
    existing = set(context.instance.get_dynamic_partitions(PARTITIONS_NAME))
    new_keys = [spec.key for spec in specs if spec.key not in existing]
    if new_keys:
        context.instance.add_dynamic_partitions(PARTITIONS_NAME, new_keys)
    first, last = partition_range(
        [spec.key for spec in specs], context.instance.get_dynamic_partitions(PARTITIONS_NAME)
    ) or ("", "")
    context.log.info(
        f"{len(specs)} specs (seed {seed}), {len(new_keys)} new partitions; render them with "
        f"--partition-range {first}...{last}"
    )
    return dg.Output(
        specs,
        metadata={
            "count": len(specs),
            "seed": seed,
            "partition_range": f"{first}...{last}",
            "new_keys": len(new_keys),
            "keys": dg.MetadataValue.json([spec.key for spec in specs]),
            "specs": dg.MetadataValue.md(_specs_table(specs, set(new_keys))),
        },
    )


def _partition_metadata(result: RenderResult) -> dict[str, Any]:
    location = (
        dg.MetadataValue.url(result.location)
        if result.location.startswith("s3://")
        else dg.MetadataValue.path(result.location)
    )
    metadata: dict[str, Any] = {
        "thumbnail": dg.MetadataValue.md(result.thumbnail_markdown()),
        "location": location,
        "segments": result.segments,
        "bytes": result.png_bytes,
        "render_ms": round(result.render_ms, 2),
        "encode_ms": round(result.encode_ms, 2),
        "put_ms": round(result.put_ms, 2),
        "worker": result.worker,
        "started_at": dg.MetadataValue.timestamp(result.started_at),
        "stored_at": dg.MetadataValue.timestamp(result.stored_at),
        "worker_started_at": dg.MetadataValue.timestamp(result.worker_started_at),
    }
    if result.stored_by:  # the step's process wrote the PNG the worker rendered
        metadata["stored_by"] = result.stored_by
    return metadata


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


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pillow"},
    owners=["team:fractal-pipeline"],
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
        "step's process wrote the PNG its worker rendered (one worker with a CPU to spare). The `pngs_valid` "
        "check of each batch carries `workers`, a per-worker table and timeline of the step; "
        "`fractal-pipeline events RUN_ID` prints the same timelines in a terminal."
    ),
)
def fractal_images(
    context: dg.AssetExecutionContext,
    config: RenderConfig,
    store: FractalStoreResource,
    renderer: RenderBackendResource,
) -> Iterator[dg.DagsterEvent | dg.AssetCheckResult]:
    in_range = list(context.partition_keys)
    if not in_range:
        raise dg.Failure(description=_empty_range_message(context), allow_retries=False)
    wanted = set(config.only) if config.only is not None else None
    keys = in_range if wanted is None else [key for key in in_range if key in wanted]
    skipped = [] if wanted is None else [key for key in in_range if key not in wanted]
    try:
        yield from _render_images(context, config, store, renderer, keys, skipped)
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
        kept["skipped"] = "already stored; not rendered again by this run"
        batcher.add(dg.AssetMaterialization(asset_key=context.asset_key, partition=key, metadata=kept))
    context.log.info(f"{len(found)} skipped partitions recorded again as stored, so that this failed run keeps them")
    yield from batcher.flush()


#: What a skipped partition's record keeps of its last materialisation: what it is and where.
SKIPPED_METADATA = ("thumbnail", "location", "segments", "bytes")


class CancelWatch:
    """Whether the step's run was asked to stop (marked CANCELING or CANCELED); asks the instance at most
    every :data:`CANCEL_POLL_S`.

    This is how a run executing inside the process that started it (``fractal-pipeline run``) is stopped: the
    CLI marks the run CANCELING on Ctrl-C or SIGTERM, and the render loop stops at its next outcome or heartbeat.
    """

    def __init__(self, context: dg.AssetExecutionContext) -> None:
        self._instance = context.instance
        self._run_id = context.run.run_id
        self._asked_at = 0.0
        self._requested = False

    def requested(self, now_or_never: bool = False) -> bool:
        """Whether the run is to stop; ``now_or_never`` asks the instance even if it was asked just now."""
        now = time.monotonic()
        if not self._requested and (now_or_never or now - self._asked_at >= CANCEL_POLL_S):
            self._asked_at = now
            run = self._instance.get_run_by_id(self._run_id)
            self._requested = run is not None and run.status in (
                dg.DagsterRunStatus.CANCELING,
                dg.DagsterRunStatus.CANCELED,
            )
        return self._requested


#: How often the render loop asks whether its run is being canceled (one read of the run's record).
CANCEL_POLL_S = 0.5


def _render_images(
    context: dg.AssetExecutionContext,
    config: RenderConfig,
    store: FractalStoreResource,
    renderer: RenderBackendResource,
    keys: list[str],
    skipped: list[str],
) -> Iterator[dg.DagsterEvent | dg.AssetCheckResult]:
    try:
        store.get_store().check()
    except StoreError as exc:
        raise _fail(exc) from exc
    if skipped:
        context.log.info(f"rendering {len(keys)} of the range's partitions; skipping {len(skipped)} (config `only`)")
    failed: list[RenderFailure] = []
    for key in list(keys):  # a bad key (an old format, a typo in "Add partition") fails its own partition only
        try:
            FractalSpec.from_key(key)
        except InvalidSpec as exc:
            failed.append(RenderFailure(key, str(exc)))
            context.log.error(f"{key}: {exc}")
    keys = [key for key in keys if key not in {f.key for f in failed}]
    if context.retry_number > 0:
        stored = _materialized_in_run(context)
        if stored:
            context.log.info(
                f"retry {context.retry_number}: {len(stored)} partitions were already stored by this run; "
                f"rendering the other {len(keys) - len(stored & set(keys))}"
            )
            keys = [key for key in keys if key not in stored]
    total = len(keys) + len(failed)
    context.log.info(f"storing {len(keys)} PNGs in {store.store_config().description}")
    started = time.monotonic()
    batch_started_at = time.time()
    last_report = started
    done: list[RenderResult] = []
    batcher = MaterializationBatcher(context, window_s=MATERIALIZATION_WINDOW_S)
    asset_key = context.asset_key  # not free: Dagster recomputes it on every access
    cancel = CancelWatch(context)
    if cancel.requested():
        raise _canceled(0, total)
    outcomes = renderer.render(
        context,
        keys,
        store.store_config(),
        config.workers,
        heartbeat_s=MATERIALIZATION_WINDOW_S,
        should_stop=cancel.requested,
    )
    try:
        for outcome in outcomes:
            if cancel.requested():
                break
            if outcome is None:  # idle: record what waits
                yield from batcher.tick()
                continue
            if isinstance(outcome, RenderFailure):
                failed.append(outcome)
                context.log.error(f"{outcome.key}: {outcome.error}")
                continue
            done.append(outcome)
            yield from batcher.add(
                dg.AssetMaterialization(
                    asset_key=asset_key, partition=outcome.key, metadata=_partition_metadata(outcome)
                )
            )
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                rate = len(done) / (now - started)
                context.log.info(f"{len(done) + len(failed)}/{total} done ({rate:.1f}/s), {len(failed)} failed")
        outcomes.close()  # stops the workers at once if the loop broke off
        yield from batcher.flush()
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
        outcomes.close()
        batcher.flush()  # the PNGs stored so far are recorded (not yielded: the step is stopping)
        # Dagster turns an interrupt inside the step into a retry when the step has a RetryPolicy,
        # so a run terminated from the UI or `fractal-pipeline cancel` would start rendering again.
        # The workers are already stopped (render_many); a requested termination ends the step.
        if not cancel.requested(now_or_never=True):
            raise
        raise _canceled(len(done), total) from exc
    except BaseException:
        outcomes.close()
        batcher.flush()
        raise
    if cancel.requested():  # a run asked to stop ends CANCELED, even if its last PNG was just stored
        raise _canceled(len(done), total)
    elapsed = time.monotonic() - started
    render_s = sum(r.render_ms + r.encode_ms for r in done) / 1000
    context.log.info(
        f"{len(done)}/{total} PNGs stored in {elapsed:.1f} s ({len(done) / max(elapsed, 1e-9):.1f}/s) by "
        f"{len({r.worker for r in done})} workers; render+encode CPU {render_s:.1f} s; {len(failed)} failed"
        + (f"; {len(skipped)} skipped" if skipped else "")
    )
    yield dg.AssetCheckResult(
        check_name=IMAGES_CHECK,
        asset_key=context.asset_key,
        passed=not failed,
        metadata={
            "checked": len(done),
            "skipped": len(skipped),
            "workers": dg.MetadataValue.md(
                batch_summary_markdown(
                    [WorkItem.from_result(r) for r in done], total, len(failed), batch_started_at, time.time()
                )
            ),
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


def _canceled(stored: int, total: int) -> dg.Failure:
    return dg.Failure(
        description=f"run canceled: {stored} of {total} partitions were stored before it stopped",
        allow_retries=False,
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pillow"},
    owners=["team:fractal-pipeline"],
    ins={"fractal_images": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    io_manager_key="png_io_manager",
    # Rebuilt once after image partitions land: when any of them updated since the last collage,
    # and none is being rendered (many image runs landing together give one collage run). Unlike
    # eager(), partitions without a PNG do not block it: the collage leaves them out. Images from a
    # run whose launcher tiles the collage itself (COLLAGE_BY_LAUNCHER_TAG) are left to it.
    automation_condition=(
        dg.AutomationCondition.any_deps_match(
            dg.AutomationCondition.newly_updated()
            & ~dg.AutomationCondition.any_new_update_has_run_tags(tag_values={COLLAGE_BY_LAUNCHER_TAG: "true"})
        ).since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("images_landed"),
    description=(
        "All stored fractal images tiled into one picture at `collages/fractal_collage.png`. "
        "Streams thumbnails: only one full-size image is decoded at a time.\n\n"
        "Metadata: `thumbnail` (256 px preview, *Show Markdown*), `tiles`, `missing` (partitions "
        "without a stored PNG, left out), `size`, `location`, `bytes`."
    ),
)
def fractal_collage(context: dg.AssetExecutionContext, fractal_images: PngCollection) -> dg.Output[object]:
    if len(fractal_images) == 0:
        raise dg.Failure(description="fractal_images: no stored images yet; materialise some partitions first")
    total = len(fractal_images)
    last = [time.monotonic()]
    cancel = CancelWatch(context)

    def progress(placed: int) -> None:
        if cancel.requested():
            raise dg.Failure(description=f"run canceled after {placed} of {total} tiles", allow_retries=False)
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            context.log.info(f"collage: {placed}/{total} tiles")

    collage = make_collage(fractal_images, count=total, progress=progress)
    preview = collage.copy()
    preview.thumbnail((256, 256))
    buffer = io.BytesIO()
    preview.save(buffer, format="PNG")
    if fractal_images.missing:
        context.log.warning(f"{len(fractal_images.missing)} partitions have no stored PNG yet and were left out")
    return dg.Output(
        collage,
        metadata={
            "tiles": total,
            "missing": len(fractal_images.missing),
            "size": f"{collage.width}x{collage.height}",
            "thumbnail": dg.MetadataValue.md(png_markdown("collage", buffer.getvalue())),
        },
    )
