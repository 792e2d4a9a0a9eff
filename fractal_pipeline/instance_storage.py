"""The class paths ``dagster.yaml`` files written by earlier versions name (``fractal_pipeline.instance_storage.…``).

New homes name :mod:`fractal_pipeline.instance.storage` and :mod:`fractal_pipeline.instance.compute_logs`.
"""

from fractal_pipeline.instance.compute_logs import ThreadMirroredComputeLogManager
from fractal_pipeline.instance.storage import PooledSqliteEventLogStorage, PooledSqliteStorage

__all__ = ["PooledSqliteEventLogStorage", "PooledSqliteStorage", "ThreadMirroredComputeLogManager"]
