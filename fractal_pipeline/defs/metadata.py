"""Metadata the assets record: the specs table, and each stored partition's thumbnail, location and timings."""

from typing import Any

import dagster as dg

from fractal_pipeline.cost import RENDER_VERSION
from fractal_pipeline.fractals import FractalSpec
from fractal_pipeline.workers.results import RenderResult


def specs_table(specs: list[FractalSpec], new: set[str], limit: int = 50) -> str:
    """Markdown table of a batch of specs (the first ``limit``), marking the ``new`` ones."""
    lines = ["| key | kind | depth | size | palette | segments | new |", "|---|---|---|---|---|---|---|"]
    for spec in specs[:limit]:
        lines.append(
            f"| `{spec.key}` | {spec.kind} | {spec.depth} | {spec.size} | {spec.palette} | "
            f"{spec.segments:,} | {'yes' if spec.key in new else ''} |"
        )
    if len(specs) > limit:
        lines.append(f"| ... {len(specs) - limit} more | | | | | | |")
    return "\n".join(lines)


#: The metadata entry that marks a partition a run skipped and recorded again as stored (not rendered by it).
SKIPPED_KEY = "skipped"

#: The metadata entry that marks a PNG stored by a worker that was stopped before it reported it.
UNREPORTED_KEY = "unreported"


def _location(location: str) -> dg.MetadataValue:
    return dg.MetadataValue.url(location) if location.startswith("s3://") else dg.MetadataValue.path(location)


def unreported_metadata(key: str, location: str) -> dict[str, Any]:
    """The metadata of a PNG stored by a worker that was stopped before it reported it: where it is, and
    why its thumbnail and timings are missing."""
    return {
        "location": _location(location),
        "segments": FractalSpec.from_key(key).segments,
        UNREPORTED_KEY: "stored by a worker that was stopped before it reported it: no thumbnail or timings",
    }


def partition_metadata(result: RenderResult) -> dict[str, Any]:
    """A stored partition's materialization metadata: thumbnail, location, size and timings."""
    metadata: dict[str, Any] = {
        "thumbnail": dg.MetadataValue.md(result.thumbnail_markdown()),
        "location": _location(result.location),
        "segments": result.segments,
        "bytes": result.png_bytes,
        "render_ms": round(result.render_ms, 2),
        "encode_ms": round(result.encode_ms, 2),
        "put_ms": round(result.put_ms, 2),
        "worker": result.worker,
        "started_at": dg.MetadataValue.timestamp(result.started_at),
        "stored_at": dg.MetadataValue.timestamp(result.stored_at),
        "worker_started_at": dg.MetadataValue.timestamp(result.worker_started_at),
        # the cost model trusts only timings made by the current core and encoder
        "render_version": RENDER_VERSION,
    }
    if result.stored_by:  # the step's process stored the PNG its worker rendered
        metadata["stored_by"] = result.stored_by
    return metadata
