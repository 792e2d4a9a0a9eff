"""``runs``, ``logs`` and ``events``: what the instance recorded (:mod:`fractal_pipeline.inspect`), formatted."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from fractal_pipeline.cli import console as term
from fractal_pipeline.cli.common import read_instance, resolve_run
from fractal_pipeline.cli.fmt import (
    clock,
    ms,
    note_run_state,
    offset,
    print_table,
    run_heading,
    seconds,
    status,
)

if TYPE_CHECKING:
    from fractal_pipeline.inspect.timeline import Timeline


def runs_command(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many of the most recent runs")] = 20,
) -> None:
    """Recent runs: id, status, start, duration, assets, partitions and who launched them (cli, ui, sensor...)."""
    from fractal_pipeline.inspect.runs import list_runs

    instance, home = read_instance()
    runs = list_runs(instance, limit)
    if not runs:
        term.err.print(
            Text(f"no runs in {home} yet; start one with `fractal-pipeline run` or `dagster dev`"), soft_wrap=True
        )
        return
    rows: list[list[str | Text]] = []
    for run in runs:
        duration = seconds(run.duration())
        partitions = run.partitions_label
        rows.append(
            [
                run.short_id,
                status(run.status),
                clock(run.start or run.created),
                duration if run.finished else f"{duration} (running)".strip(),
                ", ".join(run.assets),
                partitions,
                run.source,
            ]
        )
    headers = ["run", "status", "started", "duration", "assets", "partitions", "launched by"]
    optional = ("partitions", "launched by", "started", "duration")
    print_table(headers, rows, optional, caption=f"{len(runs)} of {instance.get_runs_count()} runs in {home}")


def logs_command(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix of it (see `fractal-pipeline runs`)")],
) -> None:
    """A run's structured log messages in time order, then the stdout/stderr its steps captured."""
    from fractal_pipeline.inspect.logs import captured_outputs, run_log_lines
    from fractal_pipeline.inspect.runs import run_info

    instance, home = read_instance()
    full_id = resolve_run(instance, home, run_id)
    info = run_info(instance, full_id)
    lines = run_log_lines(instance, full_id)
    term.console.print(run_heading(info), soft_wrap=True)
    print_table(
        ["t (s)", "level", "step", "event", "message"],
        [[offset(line.t), line.level, line.step or "", line.event or "", line.message] for line in lines],
        optional=("level", "step"),
        right=("t (s)",),
        wraps=("message",),
        title=f"event log: {len(lines)} entries, seconds since the run started",
    )
    outputs = captured_outputs(instance, full_id)
    if not outputs:
        term.console.print("(no captured stdout/stderr for this run)")
    for output in outputs:
        where = f"{', '.join(output.step_keys) or 'run'} (pid {output.pid})"
        state = "" if output.complete else ", still capturing"
        for stream, text in (("stdout", output.stdout), ("stderr", output.stderr)):
            term.console.print(Text(f"--- {stream} of {where}{state} ---", style="dim"), soft_wrap=True)
            term.console.print(text.rstrip("\n") or "(empty)", markup=False, highlight=False, soft_wrap=True)
    note_run_state(info, lines)


def events_command(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix of it (see `fractal-pipeline runs`)")],
    unified: Annotated[bool, typer.Option("--unified", help="One table ordered by time, with a worker column")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable: run, workers and events")] = False,
) -> None:
    """What each worker did and when: start, render KEY, encode, put fractals/KEY.png, stop.

    Times are seconds since the run started, read from the event log and the per-partition metadata.
    """

    from fractal_pipeline.inspect.logs import run_log_lines
    from fractal_pipeline.inspect.prediction import prediction_vs_actual
    from fractal_pipeline.inspect.timeline import RENDER_ROLE, run_timeline

    instance, home = read_instance()
    full_id = resolve_run(instance, home, run_id)
    timeline = run_timeline(instance, full_id)
    info = timeline.run
    prediction = prediction_vs_actual(instance, full_id, timeline)
    if as_json:
        sys.stdout.write(json.dumps({**timeline.to_json(), "prediction": prediction}, indent=2) + "\n")
    else:
        term.console.print(run_heading(info), soft_wrap=True)
        if unified:
            rows = [
                [offset(event.t), event.worker, event.event, event.subject, ms(event.duration_ms), str(busy)]
                for event, busy in zip(timeline.events, timeline.busy_workers, strict=True)
            ]
            headers = ["t (s)", "worker", "event", "subject", "ms", "busy"]
            shown = print_table(headers, rows, optional=("busy", "ms"), right=("t (s)", "ms", "busy"))
            if "busy" in shown:
                term.console.print("busy: render workers rendering, encoding or storing at that moment", soft_wrap=True)
        else:
            for lane in timeline.lanes:
                if lane.role == RENDER_ROLE:
                    title = (
                        f"{lane.worker} · render worker · {lane.partitions} PNGs · "
                        f"busy {lane.busy_s:.3f} s of {lane.end - lane.start:.3f} s"
                    )
                else:
                    title = f"{lane.worker} · dagster process"
                term.console.print(Text(title, style="bold"))
                rows = [[offset(event.t), event.event, event.subject, ms(event.duration_ms)] for event in lane.events]
                print_table(["t (s)", "event", "subject", "ms"], rows, optional=("ms",), right=("t (s)", "ms"))
        _print_workers_summary(timeline)
        term.console.print(Text(prediction["line"]), highlight=False, soft_wrap=True)
    note_run_state(info, run_log_lines(instance, full_id) if info.status == "FAILURE" else ())


def _print_workers_summary(timeline: Timeline) -> None:
    """The line under a run's timelines: its render workers and PNGs, or why it has none."""
    workers = timeline.render_lanes
    unreported = (
        f"{timeline.unreported} PNGs stored by workers stopped before they reported them (no timings)"
        if timeline.unreported
        else ""
    )
    if workers:
        work_s = sum(lane.busy_s for lane in workers)
        span = max(lane.end for lane in workers) - min(lane.start for lane in workers)
        term.console.print(
            f"{len(workers)} render worker{'' if len(workers) == 1 else 's'}, "
            f"{sum(lane.partitions for lane in workers)} PNGs, "
            f"peak {timeline.peak_parallel} working at once, {work_s:.3f} s of work in {span:.3f} s "
            "from the first worker start to the last put" + (f"; {unreported}" if unreported else ""),
            highlight=False,
        )
    elif unreported:
        term.console.print(f"no render worker reported timings in this run; {unreported}", highlight=False)
    elif timeline.run.renders_images:
        term.console.print(
            "no render worker reported timings in this run: it rendered nothing, or stopped before any worker reported",
            highlight=False,
        )
    else:
        term.console.print("no render workers in this run (only fractal_images runs render)", highlight=False)
