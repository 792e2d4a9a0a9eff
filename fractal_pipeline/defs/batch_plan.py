"""Planning a batch's images run: which keys to render, in which partition range.

One planning function serves ``fractal-pipeline run``, the spec-file sensor and
the schedule's follow-up sensor, so they all follow one rule:

- keys whose PNG is already stored are not rendered again (they are reported as stored);
- the keys left form **one** images run over the smallest range of partitions
  that contains them (``dagster/asset_partition_range_start`` / ``_end``, as a
  ``BackfillPolicy.single_run()`` backfill tags it);
- when that range also holds partitions the batch does not render (stored
  already, or not the batch's), the run's config names the keys to render
  (``only``) and ``fractal_images`` skips the rest.

Why this is correct. A Dagster run targets one partition or one contiguous key
range, and dynamic partitions are ordered by registration, so keys registered
at different times are scattered: one run per scattered block would mean tens
of runs. One range with an explicit ``only`` list renders exactly the batch's
unstored keys, so stored bytes are never rewritten and partitions outside the
batch are left as they were. Skipped partitions are never materialised by the
run, so a successful run leaves their status as it was. A failed run would
mark every partition of its range that it did not materialise as failed
(Dagster's partition status is "planned by a failed run, not materialised
since"): ``fractal_images`` records the stored partitions it skipped before it
fails (:func:`fractal_pipeline.defs.assets.images.fractal_images`), so they stay
materialised. Pure Python: no Dagster import.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from fractal_pipeline.defs.tags import ASSET_PARTITION_RANGE_END, ASSET_PARTITION_RANGE_START


@dataclass(frozen=True)
class ImagesRun:
    """One ``fractal_images`` run: the partition range ``first...last`` and what to render in it."""

    first: str
    last: str
    #: Partition keys to render; None when that is every partition of the range.
    only: tuple[str, ...] | None
    #: Partitions in the range.
    size: int

    @property
    def renders(self) -> int:
        """How many partitions the run renders."""
        return self.size if self.only is None else len(self.only)

    @property
    def skipped(self) -> int:
        """Partitions of the range the run does not render."""
        return self.size - self.renders

    @property
    def tags(self) -> dict[str, str]:
        """The run tags that make it a run over the range (as a single-run backfill tags one)."""
        return {ASSET_PARTITION_RANGE_START: self.first, ASSET_PARTITION_RANGE_END: self.last}

    def run_config(self, workers: int = 0) -> dict[str, object]:
        """The ``fractal_images`` op config of this run."""
        config: dict[str, object] = {"workers": workers}
        if self.only is not None:
            config["only"] = list(self.only)
        return {"ops": {"fractal_images": {"config": config}}}


@dataclass(frozen=True)
class BatchPlan:
    """What a batch of spec keys needs: the keys already stored, and the run that renders the rest."""

    keys: tuple[str, ...]
    stored: frozenset[str]
    run: ImagesRun | None

    @property
    def to_render(self) -> list[str]:
        return [key for key in self.keys if key not in self.stored]


def plan_batch(keys: Iterable[str], order: Sequence[str], stored: Collection[str]) -> BatchPlan:
    """Plan the images run of ``keys`` (duplicates dropped) given the partitions ``order`` and what is ``stored``.

    Every key to render must be a registered partition (in ``order``): ValueError otherwise.
    """
    batch = tuple(dict.fromkeys(keys))
    done = frozenset(key for key in batch if key in stored)
    todo = {key for key in batch if key not in done}
    if not todo:
        return BatchPlan(batch, done, None)
    positions = [index for index, key in enumerate(order) if key in todo]
    if len(positions) != len(todo):
        missing = sorted(todo.difference(order))
        raise ValueError(f"key: {missing[0]!r} is not a registered fractal_specs partition; register it first")
    first, last = positions[0], positions[-1]
    size = last - first + 1
    only = None if size == len(todo) else tuple(order[index] for index in positions)
    return BatchPlan(batch, done, ImagesRun(order[first], order[last], only, size))


def partition_range(keys: Iterable[str], order: Sequence[str]) -> tuple[str, str] | None:
    """The smallest range of ``order`` that contains every one of ``keys`` found in it."""
    wanted = set(keys)
    found = [key for key in order if key in wanted]
    return (found[0], found[-1]) if found else None
