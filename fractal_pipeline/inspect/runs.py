"""Runs as the CLI lists them: who launched each, what it targets, how it ended; run ids from prefixes.

Dagster is imported inside the functions that read an instance, so the CLI can import this
module without paying Dagster's import time on commands that do not need it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fractal_pipeline.defs import tags
from fractal_pipeline.instance.home import FIRST_USE_FILES, file_in_the_way, open_home_instance

if TYPE_CHECKING:
    import dagster as dg


class ObservabilityError(Exception):
    """A one-line, user-facing reason why runs, logs or events cannot be shown."""


def open_instance(home: Path) -> dg.DagsterInstance:
    """The Dagster instance in ``home`` (``DAGSTER_HOME``); never creates one."""
    import dagster as dg

    blocked = file_in_the_way(home)
    if blocked is not None:
        raise blocked
    if not home.is_dir():
        raise ObservabilityError(
            f"DAGSTER_HOME: no Dagster instance at {home}; run `fractal-pipeline run` first or set DAGSTER_HOME"
        )
    if not (home / "dagster.yaml").exists() and not any((home / name).exists() for name in FIRST_USE_FILES):
        # A folder nothing has used yet: read it as an empty instance, rather than have Dagster create
        # its databases (and warn that it found no dagster.yaml) for a command that only reads.
        return dg.DagsterInstance.ephemeral()
    return open_home_instance(home)


@dataclass(frozen=True)
class RunInfo:
    """One run as `fractal-pipeline runs` shows it."""

    run_id: str
    status: str
    created: float
    start: float | None
    end: float | None
    assets: tuple[str, ...]
    partitions: str
    partition_count: int | None
    source: str
    finished: bool
    #: Partitions of the range the run was to render (config ``only``); None: all of them.
    partitions_selected: int | None = None

    @property
    def renders_images(self) -> bool:
        """Whether the run materializes ``fractal_images``: the only runs that render."""
        return "fractal_images" in self.assets

    @property
    def partitions_label(self) -> str:
        """``first...last (N)``, or ``(K of N)`` when the run was to render only K of the range's N."""
        if not self.partition_count or "..." not in self.partitions:
            return self.partitions
        if self.partitions_selected is not None and self.partitions_selected != self.partition_count:
            return f"{self.partitions} ({self.partitions_selected} of {self.partition_count})"
        return f"{self.partitions} ({self.partition_count})"

    @property
    def short_id(self) -> str:
        return self.run_id[:8]

    def duration(self, now: float | None = None) -> float | None:
        """Seconds from start to end (to ``now`` while the run is in progress)."""
        if self.start is None:
            return None
        if self.end is not None:
            return self.end - self.start
        return None if self.finished else (now if now is not None else time.time()) - self.start

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["assets"] = list(self.assets)
        data["duration_s"] = self.duration()
        return data


def run_source(run_tags: Mapping[str, str]) -> str:
    """Who launched a run: ``cli``, ``ui``, ``sensor NAME``, ``schedule NAME``, ``automation`` or ``api``;
    with `` backfill ID`` appended for backfill runs."""
    if run_tags.get(tags.SOURCE):
        source = run_tags[tags.SOURCE]
    elif run_tags.get(tags.SENSOR_NAME):
        source = f"sensor {run_tags[tags.SENSOR_NAME]}"
    elif run_tags.get(tags.SCHEDULE_NAME):
        source = f"schedule {run_tags[tags.SCHEDULE_NAME]}"
    elif run_tags.get(tags.AUTOMATION_CONDITION) or run_tags.get(tags.AUTO_MATERIALIZE):
        source = "automation"
    elif run_tags.get(tags.FROM_UI):
        source = "ui"
    else:  # `dagster asset materialize`, the Python API, ...
        source = "api"
    if run_tags.get(tags.BACKFILL_ID):
        source += f" backfill {run_tags[tags.BACKFILL_ID]}"
    return source


def run_partitions(run_tags: Mapping[str, str]) -> str:
    """The partition (``key``) or range (``first...last``) a run targets; ``""`` if none."""
    first, last = run_tags.get(tags.ASSET_PARTITION_RANGE_START), run_tags.get(tags.ASSET_PARTITION_RANGE_END)
    if first and last:
        return first if first == last else f"{first}...{last}"
    return run_tags.get(tags.PARTITION_NAME, "")


def _range_size(partitions: str, order: Mapping[str, int]) -> int | None:
    if not partitions:
        return None
    first, _, last = partitions.partition("...")
    last = last or first
    if first in order and last in order:
        return abs(order[last] - order[first]) + 1
    return None


def _partition_order(instance: dg.DagsterInstance) -> dict[str, int]:
    from fractal_pipeline.defs.partitions import PARTITIONS_NAME

    return {key: index for index, key in enumerate(instance.get_dynamic_partitions(PARTITIONS_NAME))}


def _run_info(instance: dg.DagsterInstance, record: Any, order: Mapping[str, int]) -> RunInfo:
    run = record.dagster_run
    partitions = run_partitions(run.tags)
    return RunInfo(
        run_id=run.run_id,
        status=run.status.value,
        created=record.create_timestamp.timestamp(),
        start=record.start_time,
        end=record.end_time,
        assets=_assets(instance, run),
        partitions=partitions,
        partition_count=_range_size(partitions, order),
        source=run_source(run.tags),
        finished=run.is_finished,
        partitions_selected=_selected(run.run_config),
    )


def _assets(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[str, ...]:
    """The assets a run materializes: its asset selection, or, for a run of an asset job launched by name (the
    sensors' ``render_fractal_images``), the assets of its execution plan's steps."""
    keys = set(run.asset_selection or ())
    if not keys and run.execution_plan_snapshot_id:
        plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
        keys = {
            output.properties.asset_key
            for step in plan.steps
            for output in step.outputs
            if output.properties is not None and output.properties.asset_key is not None
        }
    return tuple(sorted(key.to_user_string() for key in keys))


def _selected(run_config: Mapping[str, Any]) -> int | None:
    """How many partitions an images run's config ``only`` selects; None without it."""
    try:
        only = run_config["ops"]["fractal_images"]["config"]["only"]
    except (KeyError, TypeError):
        return None
    return len(only) if isinstance(only, list) else None


def list_runs(instance: dg.DagsterInstance, limit: int = 20) -> list[RunInfo]:
    """The ``limit`` most recent runs, newest first."""
    records = instance.get_run_records(limit=limit)
    order = _partition_order(instance) if records else {}
    return [_run_info(instance, record, order) for record in records]


def run_info(instance: dg.DagsterInstance, run_id: str) -> RunInfo:
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        raise ObservabilityError(f"run id: no run {run_id}")
    return _run_info(instance, record, _partition_order(instance))


_RUN_ID = re.compile(r"[0-9a-f-]+")


def resolve_run_id(instance: dg.DagsterInstance, prefix: str) -> str:
    """The one run id starting with ``prefix`` (a unique prefix is enough, as in git)."""
    wanted = prefix.strip().lower()
    if not _RUN_ID.fullmatch(wanted):
        raise ObservabilityError(
            f"run id: {prefix!r} is not a run id (hex digits, e.g. 5d1c9f0e); `fractal-pipeline runs` lists them"
        )
    if instance.get_run_by_id(wanted) is not None:
        return wanted
    run_ids = instance.get_run_ids()
    if not run_ids:
        raise ObservabilityError("no runs in this instance yet; start one with `fractal-pipeline run` or `dagster dev`")
    matches = sorted(run_id for run_id in run_ids if run_id.startswith(wanted))
    if not matches:
        raise ObservabilityError(f"run id: no run starts with {wanted!r}; `fractal-pipeline runs` lists them")
    if len(matches) > 1:
        width = max(8, len(wanted) + 1)
        while width < max(map(len, matches)) and len({match[:width] for match in matches}) < len(matches):
            width += 1
        shown = ", ".join(match[:width] for match in matches[:6])
        more = f" and {len(matches) - 6} more" if len(matches) > 6 else ""
        raise ObservabilityError(
            f"run id: {wanted!r} is ambiguous, it matches {shown}{more}; type more characters of the id"
        )
    return matches[0]
