"""The ``fractal_specs`` dynamic partitions: one per spec key (``dragon_12``, ``koch_snowflake_4-512px-ice``...)."""

import dagster as dg

PARTITIONS_NAME = "fractal_specs"

spec_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)
