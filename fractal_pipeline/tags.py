"""Dagster's run tag names that this project reads or writes, in one place.

They are Dagster's own strings (``dagster._core.storage.tags`` defines them,
a private module): a test holds each against Dagster's constant, so an upgrade
that renames one is caught there.
"""

#: First and last partition key of a run over a range of partitions (a single-run backfill's tags).
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
