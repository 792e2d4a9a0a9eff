"""``fractal_collage``: every stored image tiled into one picture, streamed as thumbnails."""

import io
import time

import dagster as dg

from fractal_pipeline.defs import tags
from fractal_pipeline.defs.assets.common import GROUP, OWNERS, PROGRESS_EVERY_S
from fractal_pipeline.defs.cancel import CancelWatch
from fractal_pipeline.defs.io_managers import PngCollection
from fractal_pipeline.fractals import UnreadableImage, make_collage
from fractal_pipeline.store import image_key
from fractal_pipeline.workers.results import png_markdown


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pillow"},
    owners=OWNERS,
    ins={"fractal_images": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    io_manager_key="png_io_manager",
    # Rebuilt once after image partitions land: when any of them updated since the last collage,
    # and none is being rendered (many image runs landing together give one collage run). Unlike
    # eager(), partitions without a PNG do not block it: the collage leaves them out. Images from a
    # run whose launcher tiles the collage itself (tags.COLLAGE_BY_LAUNCHER) are left to it.
    automation_condition=(
        dg.AutomationCondition.any_deps_match(
            dg.AutomationCondition.newly_updated()
            & ~dg.AutomationCondition.any_new_update_has_run_tags(tag_values={tags.COLLAGE_BY_LAUNCHER: "true"})
        ).since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("images_landed"),
    description=(
        "All stored fractal images tiled into one picture at `collages/fractal_collage.png`. "
        "Streams thumbnails: only one full-size image is decoded at a time.\n\n"
        "Metadata: `thumbnail` (256 px preview, *Show Markdown*), `tiles`, `missing` (partitions "
        "without a stored PNG, left out), `unreadable` (stored files that do not decode, left out; the log says "
        "how to render them again), `size`, `location`, `bytes`."
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

    unreadable: list[str] = []

    def leave_out(key: str, exc: UnreadableImage) -> None:
        unreadable.append(key)
        context.log.warning(
            f"{image_key(key)}: {exc}; left out of the collage. Delete it from the store, and the next "
            f"`fractal-pipeline run` that includes {key} renders it again"
        )

    try:
        collage = make_collage(fractal_images, count=total, progress=progress, on_unreadable=leave_out)
    except ValueError:  # every image was left out
        raise dg.Failure(
            description=f"none of the {total} stored PNGs decodes: delete them from the store (this run's log "
            "names each), and the runs that include them render them again",
            allow_retries=False,
        ) from None
    preview = collage.copy()
    preview.thumbnail((256, 256))
    buffer = io.BytesIO()
    preview.save(buffer, format="PNG")
    if fractal_images.missing:
        context.log.warning(f"{len(fractal_images.missing)} partitions have no stored PNG yet and were left out")
    return dg.Output(
        collage,
        metadata={
            "tiles": total - len(unreadable),
            "missing": len(fractal_images.missing),
            "unreadable": dg.MetadataValue.json(unreadable[:100]),
            "size": f"{collage.width}x{collage.height}",
            "thumbnail": dg.MetadataValue.md(png_markdown("collage", buffer.getvalue())),
        },
    )
