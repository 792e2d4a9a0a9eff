"""Run tags this project reads or writes, in one place: Dagster's own, then ours.

Dagster's strings are defined in a private module (``dagster._core.storage.tags``); the project
uses them as literals here, and ``fractal_pipeline_tests/pipeline/test_tags.py`` holds each one
against Dagster's constant, so an upgrade that renames one is caught there.
"""

# Dagster's
#: First and last partition key of a run over a range of partitions (a single-run backfill's tags).
ASSET_PARTITION_RANGE_START = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END = "dagster/asset_partition_range_end"
#: The partition of a single-partition run.
PARTITION_NAME = "dagster/partition"
#: Who launched a run: a sensor, a schedule, a backfill, declarative automation, the UI.
SENSOR_NAME = "dagster/sensor_name"
SCHEDULE_NAME = "dagster/schedule_name"
BACKFILL_ID = "dagster/backfill"
AUTOMATION_CONDITION = "dagster/from_automation_condition"
AUTO_MATERIALIZE = "dagster/auto_materialize"
FROM_UI = "dagster/from_ui"
#: Set on a run whose steps execute on a code server (a run ``cancel`` can ask that server to stop).
GRPC_INFO = ".dagster/grpc_info"

# Ours
#: The ``fractal-pipeline`` CLI's runs (value ``cli``).
SOURCE = "fractal_pipeline/source"
#: An images run whose launcher tiles the collage right after it (`fractal-pipeline run`): the collage's
#: automation condition leaves those images to it, so a daemon on the same home (`fractal-pipeline ui`)
#: does not tile a second collage of the same images.
COLLAGE_BY_LAUNCHER = "fractal_pipeline/collage_by_launcher"
#: The object key of the spec file a sensor's runs came from.
SPEC_FILE = "fractal_pipeline/spec_file"
#: How many rows of that spec file were rejected.
REJECTED_ROWS = "fractal_pipeline/rejected_rows"
#: The specs run whose new partitions an images run renders (the after-schedule sensor).
SPECS_RUN = "fractal_pipeline/specs_run"
#: What was predicted when an images run was launched (defs/cost.py): render CPU seconds on its backend,
#: wall seconds, cost by backend (JSON) and which coefficients the figures used.
PREDICTED_RENDER_S = "fractal_pipeline/predicted_render_s"
PREDICTED_WALL_S = "fractal_pipeline/predicted_wall_s"
PREDICTED_COST_USD = "fractal_pipeline/predicted_cost_usd"
PREDICTION_BASIS = "fractal_pipeline/prediction_basis"
