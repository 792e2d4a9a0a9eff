"""Batching partition keys into runs: ranges of consecutive dynamic partitions.

A run of ``fractal_images`` covers a *range* of partitions (the
``dagster/asset_partition_range_start`` / ``_end`` tags, as a
``BackfillPolicy.single_run()`` backfill launches it). Dynamic partitions are
ordered by registration, so keys registered together are consecutive; keys
registered at different times may not be. These helpers turn any set of keys
into few ranges. Pure Python: used by the CLI and by the sensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def contiguous_blocks(keys: Iterable[str], order: Sequence[str]) -> list[tuple[str, str]]:
    """Group ``keys`` into ranges of consecutive partitions in ``order`` (one run each).

    Keys missing from ``order`` are ignored.
    """
    wanted = set(keys)
    blocks: list[tuple[str, str]] = []
    start: str | None = None
    previous: str | None = None
    for key in order:
        if key in wanted:
            start = start or key
            previous = key
        elif start is not None and previous is not None:
            blocks.append((start, previous))
            start = None
    if start is not None and previous is not None:
        blocks.append((start, previous))
    return blocks


def batch_ranges(keys: Iterable[str], order: Sequence[str], max_ranges: int) -> list[tuple[str, str]]:
    """At most ``max_ranges`` ranges of ``order`` that together cover every key of ``keys``.

    Starts from :func:`contiguous_blocks`; if there are too many, only the
    ``max_ranges - 1`` widest gaps between blocks are kept and the blocks
    around every other gap are merged, so the fewest extra partitions are
    included (re-rendering a spec is idempotent: same spec, same bytes).
    """
    if max_ranges < 1:
        raise ValueError(f"max_ranges: {max_ranges} must be at least 1")
    blocks = contiguous_blocks(keys, order)
    if len(blocks) <= max_ranges:
        return blocks
    position = {key: index for index, key in enumerate(order)}
    spans = [(position[first], position[last]) for first, last in blocks]
    gaps = sorted(range(len(spans) - 1), key=lambda i: (spans[i + 1][0] - spans[i][1], -i), reverse=True)
    splits = sorted(gaps[: max_ranges - 1])
    ranges = []
    start = 0
    for split in [*splits, len(spans) - 1]:
        ranges.append((order[spans[start][0]], order[spans[split][1]]))
        start = split + 1
    return ranges


def range_size(first: str, last: str, order: Sequence[str]) -> int:
    """How many partitions the range ``first...last`` covers in ``order``."""
    return order.index(last) - order.index(first) + 1
