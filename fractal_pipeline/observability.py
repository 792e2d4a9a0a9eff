"""What ran where and when: runs, logs and per-worker timelines read from a Dagster instance.

Everything here is read from what the pipeline already recorded — the run
storage, the event log (structured messages, step events, one materialization
per partition with its ``worker`` and timings) and the compute log manager
(captured stdout/stderr) — never by re-running anything. The
``fractal-pipeline runs|logs|events`` commands only format what these
functions return, and the images step uses :func:`batch_summary_markdown` for
its per-step summary.

Dagster is imported inside the functions that read an instance, so the CLI can
import this module (for :data:`SOURCE_TAG`) without paying Dagster's import
time on commands that do not need it.
"""

from __future__ import annotations

import bisect
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

    from fractal_pipeline.rendering import RenderResult

#: Tag the ``fractal-pipeline`` CLI puts on its runs (value ``cli``).
SOURCE_TAG = "fractal_pipeline/source"

#: Metadata keys of a ``fractal_images`` partition materialization that make up a worker timeline.
WORK_METADATA = ("worker", "started_at", "stored_at", "render_ms", "encode_ms")

RENDER_ROLE = "render"
STEP_ROLE = "dagster"


class ObservabilityError(Exception):
    """A one-line, user-facing reason why runs, logs or events cannot be shown."""


# --------------------------------------------------------------------------------------------
# Instance and runs


def open_instance(home: Path) -> dg.DagsterInstance:
    """The Dagster instance in ``home`` (``DAGSTER_HOME``); never creates one."""
    import dagster as dg

    if not home.is_dir():
        raise ObservabilityError(
            f"DAGSTER_HOME: no Dagster instance at {home}; run `fractal-pipeline run` first or set DAGSTER_HOME"
        )
    return dg.DagsterInstance.from_config(str(home))


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


def run_source(tags: Mapping[str, str]) -> str:
    """Who launched a run: ``cli``, ``ui``, ``sensor NAME``, ``schedule NAME``, ``automation`` or ``api``;
    with `` backfill ID`` appended for backfill runs."""
    from dagster._core.storage.tags import (
        AUTO_MATERIALIZE_TAG,
        AUTOMATION_CONDITION_TAG,
        BACKFILL_ID_TAG,
        SCHEDULE_NAME_TAG,
        SENSOR_NAME_TAG,
    )

    if tags.get(SOURCE_TAG):
        source = tags[SOURCE_TAG]
    elif tags.get(SENSOR_NAME_TAG):
        source = f"sensor {tags[SENSOR_NAME_TAG]}"
    elif tags.get(SCHEDULE_NAME_TAG):
        source = f"schedule {tags[SCHEDULE_NAME_TAG]}"
    elif tags.get(AUTOMATION_CONDITION_TAG) or tags.get(AUTO_MATERIALIZE_TAG):
        source = "automation"
    elif tags.get("dagster/from_ui"):
        source = "ui"
    else:  # `dagster asset materialize`, the Python API, ...
        source = "api"
    if tags.get(BACKFILL_ID_TAG):
        source += f" backfill {tags[BACKFILL_ID_TAG]}"
    return source


def run_partitions(tags: Mapping[str, str]) -> str:
    """The partition (``key``) or range (``first...last``) a run targets; ``""`` if none."""
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
        PARTITION_NAME_TAG,
    )

    first, last = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if first and last:
        return first if first == last else f"{first}...{last}"
    return tags.get(PARTITION_NAME_TAG, "")


def _range_size(partitions: str, order: Mapping[str, int]) -> int | None:
    if not partitions:
        return None
    first, _, last = partitions.partition("...")
    last = last or first
    if first in order and last in order:
        return abs(order[last] - order[first]) + 1
    return None


def _partition_order(instance: dg.DagsterInstance) -> dict[str, int]:
    from fractal_pipeline.assets import PARTITIONS_NAME

    return {key: index for index, key in enumerate(instance.get_dynamic_partitions(PARTITIONS_NAME))}


def _run_info(record: Any, order: Mapping[str, int]) -> RunInfo:
    run = record.dagster_run
    partitions = run_partitions(run.tags)
    return RunInfo(
        run_id=run.run_id,
        status=run.status.value,
        created=record.create_timestamp.timestamp(),
        start=record.start_time,
        end=record.end_time,
        assets=tuple(sorted(key.to_user_string() for key in run.asset_selection or ())),
        partitions=partitions,
        partition_count=_range_size(partitions, order),
        source=run_source(run.tags),
        finished=run.is_finished,
    )


def list_runs(instance: dg.DagsterInstance, limit: int = 20) -> list[RunInfo]:
    """The ``limit`` most recent runs, newest first."""
    records = instance.get_run_records(limit=limit)
    order = _partition_order(instance) if records else {}
    return [_run_info(record, order) for record in records]


def run_info(instance: dg.DagsterInstance, run_id: str) -> RunInfo:
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        raise ObservabilityError(f"run id: no run {run_id}")
    return _run_info(record, _partition_order(instance))


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


# --------------------------------------------------------------------------------------------
# Logs


@dataclass(frozen=True)
class LogLine:
    """One structured event-log entry of a run."""

    at: float
    t: float
    level: str
    step: str | None
    event: str | None
    message: str


@dataclass(frozen=True)
class CapturedOutput:
    """The stdout/stderr one process captured while it executed some steps."""

    file_key: str
    step_keys: tuple[str, ...]
    pid: int | None
    stdout: str
    stderr: str
    complete: bool


def _event_message(entry: Any) -> str:
    event = entry.dagster_event
    message = (entry.user_message or "").strip()
    if event is None:
        return message
    if event.is_step_materialization and event.partition:
        message = f"{message} partition {event.partition}"
    error = getattr(event.event_specific_data, "error", None)
    if error is not None:
        first = next((line for line in str(error.message).splitlines() if line.strip()), "")
        message = f"{message} {error.cls_name}: {first.split(f'{error.cls_name}: ', 1)[-1]}".strip()
    return message


def _origin(instance: dg.DagsterInstance, run_id: str, entries: Sequence[Any]) -> float:
    record = instance.get_run_record_by_id(run_id)
    if record is not None and record.start_time:
        return float(record.start_time)
    return float(entries[0].timestamp) if entries else time.time()


def run_log_lines(instance: dg.DagsterInstance, run_id: str) -> list[LogLine]:
    """Every structured event-log entry of the run in time order (messages, step and asset events)."""
    entries = sorted(instance.all_logs(run_id), key=lambda entry: entry.timestamp)
    origin = _origin(instance, run_id, entries)
    return [
        LogLine(
            at=entry.timestamp,
            t=entry.timestamp - origin,
            level=logging.getLevelName(entry.level),
            step=entry.step_key,
            event=entry.dagster_event.event_type.name if entry.dagster_event else None,
            message=_event_message(entry),
        )
        for entry in entries
    ]


def _decode(data: bytes | None) -> str:
    return data.decode("utf-8", errors="replace") if data else ""


def captured_outputs(instance: dg.DagsterInstance, run_id: str) -> list[CapturedOutput]:
    """The run's captured stdout/stderr, one block per capturing process (with the steps it ran)."""
    import dagster as dg

    manager = instance.compute_log_manager
    outputs: list[CapturedOutput] = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.LOGS_CAPTURED):
        event = entry.dagster_event
        assert event is not None
        data = event.logs_captured_data
        log_key = manager.build_log_key_for_run(run_id, data.file_key)
        captured = manager.get_log_data(log_key)
        outputs.append(
            CapturedOutput(
                file_key=data.file_key,
                step_keys=tuple(data.step_keys or ()),
                pid=event.pid,
                stdout=_decode(captured.stdout),
                stderr=_decode(captured.stderr),
                complete=manager.is_capture_complete(log_key),
            )
        )
    return outputs


# --------------------------------------------------------------------------------------------
# Worker timelines


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
        from fractal_pipeline.store import image_key

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

    @property
    def render_lanes(self) -> list[WorkerLane]:
        return [lane for lane in self.lanes if lane.role == RENDER_ROLE]

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run.to_json(),
            "origin": self.origin,
            "peak_parallel_workers": self.peak_parallel,
            "workers": [{key: value for key, value in asdict(lane).items() if key != "events"} for lane in self.lanes],
            "events": [
                {**asdict(event), "busy_workers": busy}
                for event, busy in zip(self.events, self.busy_workers, strict=True)
            ],
        }


def _busy_intervals(items: Iterable[WorkItem]) -> list[tuple[float, float]]:
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


def _busy_seconds(items: Iterable[WorkItem]) -> float:
    return sum(end - start for start, end in _busy_intervals(items))


def busy_counts(intervals: Sequence[tuple[float, float]], times: Sequence[float]) -> list[int]:
    """How many of the half-open ``[start, end)`` intervals contain each of ``times``."""
    starts = sorted(start for start, _ in intervals)
    ends = sorted(end for _, end in intervals)
    return [bisect.bisect_right(starts, at) - bisect.bisect_right(ends, at) for at in times]


def peak_parallel(intervals: Sequence[tuple[float, float]]) -> int:
    """The largest number of intervals in progress at the same time."""
    return max(busy_counts(intervals, [start for start, _ in intervals]), default=0)


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
                busy_s=_busy_seconds(work),
                events=tuple(events),
            )
        )
    return lanes


def _step_event(entry: Any, step_starts: dict[str, float]) -> tuple[str, str, float | None] | None:
    """(event, subject, duration_ms) for the Dagster events shown in a process lane."""
    import dagster as dg

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
        label = "kept (skipped)" if "skipped" in materialization.metadata else "materialized"
        return label, event.partition or asset, None
    if event.event_type == kind.ASSET_CHECK_EVALUATION:
        data = event.asset_check_evaluation_data
        return ("check passed" if data.passed else "check failed"), data.check_name, None
    return None


def run_timeline(instance: dg.DagsterInstance, run_id: str) -> Timeline:
    """Per-worker timelines of a run from its event log and per-partition metadata."""
    import dagster as dg

    info = run_info(instance, run_id)
    entries = sorted(instance.all_logs(run_id), key=lambda entry: entry.timestamp)
    origin = _origin(instance, run_id, entries)
    items: list[WorkItem] = []
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
    intervals = _busy_intervals(items)
    return Timeline(
        run=info,
        origin=origin,
        lanes=tuple(lanes),
        events=tuple(ordered),
        busy_workers=tuple(busy_counts(intervals, [event.at for event in ordered])),
        peak_parallel=peak_parallel(intervals),
    )


# --------------------------------------------------------------------------------------------
# The images step's own summary (markdown metadata, shown with the step in the run view)


def _gantt_row(work: Sequence[WorkItem], origin: float, span: float, width: int) -> str:
    """``width`` cells over ``span`` seconds: ``█`` working, ``·`` started but idle (each interval ≥ 1 cell)."""
    cells = [" "] * width

    def fill(start: float, end: float, mark: str) -> None:
        first = min(width - 1, max(0, int((start - origin) / span * width + 1e-9)))
        last = min(width, max(first + 1, int((end - origin) / span * width + 1e-9)))
        cells[first:last] = mark * (last - first)

    fill(min(item.worker_started_at for item in work), max(item.stored_at for item in work), "·")
    for item in work:
        fill(item.started_at, item.stored_at, "█")
    return "".join(cells)


def batch_summary_markdown(
    items: Sequence[WorkItem], total: int, failed: int, origin: float, now: float, width: int = 60
) -> str:
    """Markdown for one rendering step: counts, per-worker timings and a text Gantt chart of the workers.

    ``origin``/``now`` bound the chart (the step's batch start and end, epoch seconds). In the
    chart ``█`` is a worker rendering/encoding/storing, ``·`` a worker started but idle.
    """
    wall = max(now - origin, 1e-9)
    intervals = _busy_intervals(items)
    busy = sum(end - start for start, end in intervals)
    workers: dict[str, list[WorkItem]] = {}
    for item in sorted(items, key=lambda item: item.started_at):
        workers.setdefault(item.worker, []).append(item)
    lines = [
        f"**{len(items)}/{total}** PNGs stored in {wall:.2f} s by {len(workers)} workers "
        f"(peak {peak_parallel(intervals)} at once, {busy / wall:.2f} busy on average); {failed} failed",
        "",
        "| worker | PNGs | started | first render | last put | busy | render | encode | put |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for worker, work in workers.items():
        render_ms = sum(item.rendered_at - item.started_at for item in work) * 1000
        encode_ms = sum(item.encoded_at - item.rendered_at for item in work) * 1000
        put_ms = sum(item.stored_at - item.put_start for item in work) * 1000
        lines.append(
            f"| `{worker}` | {len(work)} | +{min(i.worker_started_at for i in work) - origin:.3f} s "
            f"| +{work[0].started_at - origin:.3f} s | +{max(i.stored_at for i in work) - origin:.3f} s "
            f"| {_busy_seconds(work):.3f} s "
            f"| {render_ms:.0f} ms | {encode_ms:.0f} ms | {put_ms:.0f} ms |"
        )
    if workers:
        label = max(len(worker) for worker in workers)
        lines += ["", f"Workers over the step (0 to {wall:.2f} s; █ working, · idle):", "", "```"]
        lines += [f"{worker:<{label}} |{_gantt_row(work, origin, wall, width)}|" for worker, work in workers.items()]
        lines.append("```")
    return "\n".join(lines)
