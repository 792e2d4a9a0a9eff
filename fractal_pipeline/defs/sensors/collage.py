"""``fractal_collage_freshness``: evaluates the collage's automation condition (rebuild once after images land)."""

import dagster as dg

from fractal_pipeline.defs.assets.collage import fractal_collage
from fractal_pipeline.defs.settings import DEFAULT_INTERVAL_S

COLLAGE_SENSOR_NAME = "fractal_collage_freshness"


def collage_freshness_sensor(minimum_interval_seconds: int = DEFAULT_INTERVAL_S) -> dg.SensorDefinition:
    """Evaluates ``fractal_collage``'s automation condition (rebuild once after images land)."""
    return dg.AutomationConditionSensorDefinition(
        COLLAGE_SENSOR_NAME,
        target=[fractal_collage],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Rebuilds fractal_collage once after new fractal_images partitions land (none in progress).",
    )
