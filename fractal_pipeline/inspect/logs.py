"""A run's log lines (structured events and messages) and its steps' captured stdout/stderr."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg


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
        cls_name, first = user_error(error)
        message = f"{message} {cls_name}: {first}".strip()
    return message


def user_error(error: Any) -> tuple[str, str]:
    """The class and first line of the error a user acts on, from a recorded error (``SerializableErrorInfo``).

    Dagster wraps what an op raises in its own errors ("Error occurred while executing op ..."), with the
    op's exception as their cause: the first error of the chain that is not Dagster's is the one that says
    what went wrong (a ``dg.Failure`` is the pipeline's own message).
    """
    while error.cause is not None and error.cls_name.startswith("Dagster"):
        error = error.cause
    first = next((line for line in str(error.message).splitlines() if line.strip()), "")
    return error.cls_name, first.split(f"{error.cls_name}: ", 1)[-1]


def run_origin(instance: dg.DagsterInstance, run_id: str, entries: Sequence[Any]) -> float:
    record = instance.get_run_record_by_id(run_id)
    if record is not None and record.start_time:
        return float(record.start_time)
    return float(entries[0].timestamp) if entries else time.time()


def run_log_lines(instance: dg.DagsterInstance, run_id: str) -> list[LogLine]:
    """Every structured event-log entry of the run in time order (messages, step and asset events)."""
    entries = sorted(instance.all_logs(run_id), key=lambda entry: entry.timestamp)
    origin = run_origin(instance, run_id, entries)
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
