"""Per-worker timelines of a run, from its event log and its partitions' metadata (`fractal-pipeline events`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fractal_pipeline.inspect.logs import run_origin
from fractal_pipeline.inspect.runs import RunInfo, run_info
from fractal_pipeline.workers.timings import WorkItem, busy_counts, busy_intervals, busy_seconds, peak_parallel

if TYPE_CHECKING:
    import dagster as dg

RENDER_ROLE = "render"
STEP_ROLE = "dagster"


@dataclass(frozen=True)
class TimelineEvent:
    """One thing a worker did: an instant (``duration_ms`` None) or an interval starting at ``t``."""

    t: float
    at: float
    worker: str
    role: str
    event: str
    subject: str = ""
    duration_ms: float | None = None
    partition: str | None = None


@dataclass(frozen=True)
class WorkerLane:
    """One process's timeline: a render worker, or a Dagster process running the run/steps."""

    worker: str
    role: str
    start: float
    end: float
    partitions: int
    busy_s: float
    events: tuple[TimelineEvent, ...]


@dataclass(frozen=True)
class Timeline:
    """Per-worker timelines of one run, times in seconds since the run started (``origin``)."""

    run: RunInfo
    origin: float
    lanes: tuple[WorkerLane, ...]
    events: tuple[TimelineEvent, ...] = field(repr=False)
    busy_workers: tuple[int, ...] = field(repr=False)
    peak_parallel: int = 0
    #: PNGs stored by workers that were stopped before they reported them: materialized, without timings.
    unreported: int = 0

    @property
    def render_lanes(self) -> list[WorkerLane]:
        return [lane for lane in self.lanes if lane.role == RENDER_ROLE]

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run.to_json(),
            "origin": self.origin,
            "peak_parallel_workers": self.peak_parallel,
            "unreported_pngs": self.unreported,
            "workers": [{key: value for key, value in asdict(lane).items() if key != "events"} for lane in self.lanes],
            "events": [
                {**asdict(event), "busy_workers": busy}
                for event, busy in zip(self.events, self.busy_workers, strict=True)
            ],
        }


def render_lanes(items: Sequence[WorkItem], origin: float) -> list[WorkerLane]:
    """One lane per worker: ``start`` (the worker process started), then render/encode/put per partition, ``stop``."""
    by_worker: dict[str, list[WorkItem]] = {}
    for item in sorted(items, key=lambda item: item.started_at):
        by_worker.setdefault(item.worker, []).append(item)
    lanes: list[WorkerLane] = []
    for worker, work in by_worker.items():
        began = min(min(item.worker_started_at, item.started_at) for item in work)
        stopped = max(item.stored_at for item in work)

        events = [TimelineEvent(began - origin, began, worker, RENDER_ROLE, "start")]
        phases = []
        for item in work:
            for name, subject, start, end in item.phases():
                duration = round((end - start) * 1000, 3)
                phases.append(
                    TimelineEvent(start - origin, start, worker, RENDER_ROLE, name, subject, duration, item.key)
                )
        # In time order: a worker's puts can come after later renders (a chunk's PNGs are written
        # together, or uploaded by store threads).
        events += sorted(phases, key=lambda event: event.at)
        events.append(TimelineEvent(stopped - origin, stopped, worker, RENDER_ROLE, "stop"))
        lanes.append(
            WorkerLane(
                worker=worker,
                role=RENDER_ROLE,
                start=began - origin,
                end=stopped - origin,
                partitions=len(work),
                busy_s=busy_seconds(work),
                events=tuple(events),
            )
        )
    return lanes


def _step_event(entry: Any, step_starts: dict[str, float]) -> tuple[str, str, float | None] | None:
    """(event, subject, duration_ms) for the Dagster events shown in a process lane."""
    import dagster as dg

    from fractal_pipeline.defs.metadata import SKIPPED_KEY, UNREPORTED_KEY

    kind = dg.DagsterEventType
    event = entry.dagster_event
    step = entry.step_key or ""
    if event.event_type == kind.RUN_START:
        return "run start", "", None
    if event.event_type in (kind.RUN_SUCCESS, kind.RUN_FAILURE, kind.RUN_CANCELED):
        return event.event_type.name.lower().replace("_", " "), "", None
    if event.event_type == kind.STEP_START:
        step_starts[step] = entry.timestamp
        return "step start", step, None
    if event.event_type in (kind.STEP_SUCCESS, kind.STEP_FAILURE):
        began = step_starts.get(step)
        duration = None if began is None else round((entry.timestamp - began) * 1000, 3)
        return ("step success" if event.event_type == kind.STEP_SUCCESS else "step failure"), step, duration
    if event.event_type == kind.ASSET_MATERIALIZATION:
        asset = event.asset_key.to_user_string() if event.asset_key else step
        materialization = event.step_materialization_data.materialization
        # a stored partition the run skipped, recorded again so that its failure does not mark it failed
        if SKIPPED_KEY in materialization.metadata:
            label = "kept (skipped)"
        elif UNREPORTED_KEY in materialization.metadata:  # stored by a worker stopped before it reported it
            label = "materialized (unreported)"
        else:
            label = "materialized"
        return label, event.partition or asset, None
    if event.event_type == kind.ASSET_CHECK_EVALUATION:
        data = event.asset_check_evaluation_data
        return ("check passed" if data.passed else "check failed"), data.check_name, None
    return None


def run_timeline(instance: dg.DagsterInstance, run_id: str) -> Timeline:
    """Per-worker timelines of a run from its event log and per-partition metadata."""
    import dagster as dg

    from fractal_pipeline.defs.metadata import UNREPORTED_KEY

    info = run_info(instance, run_id)
    entries = sorted(instance.all_logs(run_id), key=lambda entry: entry.timestamp)
    origin = run_origin(instance, run_id, entries)
    items: list[WorkItem] = []
    unreported = 0
    process_events: dict[str, list[TimelineEvent]] = {}
    step_starts: dict[str, float] = {}
    for entry in entries:
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and event.partition:
            materialization = event.step_materialization_data.materialization
            item = WorkItem.from_metadata(event.partition, materialization.metadata)
            if item is not None:
                items.append(item)
            unreported += UNREPORTED_KEY in materialization.metadata
        shown = _step_event(entry, step_starts)
        if shown is None:
            continue
        worker = f"pid-{event.pid}" if event.pid else "run"
        name, subject, duration = shown
        process_events.setdefault(worker, []).append(
            TimelineEvent(
                entry.timestamp - origin, entry.timestamp, worker, STEP_ROLE, name, subject, duration, event.partition
            )
        )
    lanes = [
        WorkerLane(
            worker=worker,
            role=STEP_ROLE,
            start=events[0].t,
            end=events[-1].t,
            partitions=0,
            busy_s=0.0,
            events=tuple(events),
        )
        for worker, events in process_events.items()
    ]
    lanes += render_lanes(items, origin)
    lanes.sort(key=lambda lane: (lane.start, lane.worker))
    ordered = sorted((event for lane in lanes for event in lane.events), key=lambda event: event.at)
    intervals = busy_intervals(items)
    return Timeline(
        run=info,
        origin=origin,
        lanes=tuple(lanes),
        events=tuple(ordered),
        busy_workers=tuple(busy_counts(intervals, [event.at for event in ordered])),
        peak_parallel=peak_parallel(intervals),
        unreported=unreported,
    )
