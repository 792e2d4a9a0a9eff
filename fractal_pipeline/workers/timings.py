"""One partition's work on a worker (render, encode, put), and when workers were busy.

Built from a render result in the step, or from a partition's materialization metadata when
reading a run back; the step's summary and `fractal-pipeline events` share it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fractal_pipeline.store import image_key

if TYPE_CHECKING:
    from fractal_pipeline.workers.results import RenderResult

#: Metadata keys of a ``fractal_images`` partition materialization that make up a worker timeline.
WORK_METADATA = ("worker", "started_at", "stored_at", "render_ms", "encode_ms")


@dataclass(frozen=True)
class WorkItem:
    """One partition's work on one worker: render, encode, put (absolute epoch seconds)."""

    worker: str
    key: str
    worker_started_at: float
    started_at: float
    rendered_at: float
    encoded_at: float
    stored_at: float
    #: When the store call began (a PNG can wait after encoding); None: at ``encoded_at``.
    put_started_at: float | None = None
    #: The process that wrote the PNG when not the worker (the step's); "": the worker.
    stored_by: str = ""

    @property
    def put_start(self) -> float:
        return self.encoded_at if self.put_started_at is None else self.put_started_at

    @property
    def object_key(self) -> str:

        return image_key(self.key)

    def phases(self) -> list[tuple[str, str, float, float]]:
        """``(phase, subject, start, end)`` for render, encode and put."""
        return [
            ("render", self.key, self.started_at, self.rendered_at),
            ("encode", self.key, self.rendered_at, self.encoded_at),
            (
                "put",
                f"{self.object_key} (by {self.stored_by})" if self.stored_by else self.object_key,
                self.put_start,
                self.stored_at,
            ),
        ]

    @classmethod
    def from_result(cls, result: RenderResult) -> WorkItem:
        return cls(
            worker=result.worker,
            key=result.key,
            worker_started_at=result.worker_started_at or result.started_at,
            started_at=result.started_at,
            rendered_at=result.rendered_at,
            encoded_at=result.encoded_at,
            stored_at=result.stored_at,
            put_started_at=result.put_started_at or result.encoded_at,
            stored_by=result.stored_by,
        )

    @classmethod
    def from_metadata(cls, partition: str, metadata: Mapping[str, Any]) -> WorkItem | None:
        """From a partition materialization's metadata (``None`` if it has no timings)."""
        values = {name: getattr(value, "value", value) for name, value in metadata.items()}
        if any(values.get(name) is None for name in WORK_METADATA):
            return None
        started = float(values["started_at"])
        stored = float(values["stored_at"])
        rendered = min(started + float(values["render_ms"]) / 1000, stored)
        encoded = min(rendered + float(values["encode_ms"]) / 1000, stored)
        put_ms = values.get("put_ms")
        return cls(
            worker=str(values["worker"]),
            key=partition,
            worker_started_at=float(values.get("worker_started_at") or started),
            started_at=started,
            rendered_at=rendered,
            encoded_at=encoded,
            stored_at=stored,
            put_started_at=None if put_ms is None else max(encoded, stored - float(put_ms) / 1000),
            stored_by=str(values.get("stored_by") or ""),
        )


def busy_intervals(items: Iterable[WorkItem]) -> list[tuple[float, float]]:
    """When each worker was busy: its partitions' render-to-stored spans, merged per worker (a worker
    stores one PNG while it renders the next, so its spans overlap)."""
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for item in items:
        by_worker.setdefault(item.worker, []).append((item.started_at, item.stored_at))
    merged: list[tuple[float, float]] = []
    for spans in by_worker.values():
        spans.sort()
        start, end = spans[0]
        for next_start, next_end in spans[1:]:
            if next_start > end:
                merged.append((start, end))
                start, end = next_start, next_end
            else:
                end = max(end, next_end)
        merged.append((start, end))
    return merged


def busy_seconds(items: Iterable[WorkItem]) -> float:
    return sum(end - start for start, end in busy_intervals(items))


def busy_counts(intervals: Sequence[tuple[float, float]], times: Sequence[float]) -> list[int]:
    """How many of the half-open ``[start, end)`` intervals contain each of ``times``."""
    starts = sorted(start for start, _ in intervals)
    ends = sorted(end for _, end in intervals)
    return [bisect.bisect_right(starts, at) - bisect.bisect_right(ends, at) for at in times]


def peak_parallel(intervals: Sequence[tuple[float, float]]) -> int:
    """The largest number of intervals in progress at the same time."""
    return max(busy_counts(intervals, [start for start, _ in intervals]), default=0)
