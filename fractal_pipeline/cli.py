"""The ``fractal-pipeline`` command: drives the Dagster definitions, never re-implements them."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fractal_pipeline.aws.commands import register as register_aws_commands
from fractal_pipeline.aws.commands import use_backend
from fractal_pipeline.console import fail
from fractal_pipeline.fractals import KINDS, PALETTES, FractalSpec, InvalidSpec, render_png
from fractal_pipeline.observability import SOURCE_TAG
from fractal_pipeline.partitions import contiguous_blocks, range_size

if TYPE_CHECKING:
    import dagster as dg

app = typer.Typer(
    help="Batch L-system fractals on Dagster: generate specs, render PNGs in parallel, tile a collage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


@app.callback()
def _consoles() -> None:
    """Fresh consoles per invocation, so terminal width (COLUMNS) is read when a command runs."""
    global console, err
    console = Console()
    err = Console(stderr=True)


DEFAULT_DAGSTER_HOME = Path.home() / ".fractal_pipeline" / "dagster_home"
#: What earlier versions wrote into a new DAGSTER_HOME (upgraded to :func:`instance_yaml` on use).
LEGACY_DAGSTER_YAML = "# Embedded defaults: SQLite storage in this folder.\n"


def ensure_dagster_home() -> Path:
    """Use ``$DAGSTER_HOME``, or create the default one, so runs persist and show up in ``dagster dev``."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() or config.read_text() == LEGACY_DAGSTER_YAML:
        from fractal_pipeline.instance_storage import instance_yaml  # imports dagster: only when needed

        config.write_text(instance_yaml(home))
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def run_failure_message(result: Any) -> str:
    """One line: the user-facing message of the first failed step of an in-process run."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            while error.cause is not None and "Failure" not in error.cls_name:
                error = error.cause
            message = str(error.message).strip().splitlines()[0]
            prefix = f"{error.cls_name}: "
            return message.split(prefix, 1)[1] if prefix in message else message
    return "run failed"


#: The CLI prints its own one-line summary; Dagster's console logger stays quiet.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _quiet(run_config: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**QUIET, **(run_config or {})}


def _execute_with_progress(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    total: int,
    label: str,
    **kwargs: Any,
) -> Any:
    """Execute ``job`` in-process in a thread while a progress bar counts materialisations."""
    import dagster as dg
    from dagster._core.utils import make_new_run_id

    run_id = make_new_run_id()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = job.execute_in_process(instance=instance, run_id=run_id, raise_on_error=False, **kwargs)
        except BaseException as exc:  # surfaced in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    cursor = None
    done = 0
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    ) as progress:
        task = progress.add_task(label, total=total)
        while thread.is_alive() or cursor is None:
            thread.join(0.25)
            if instance.get_run_by_id(run_id) is None:
                continue
            connection = instance.get_records_for_run(
                run_id, cursor=cursor, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=10_000
            )
            cursor = connection.cursor
            done += len(connection.records)
            progress.update(task, completed=min(done, total))
            if not thread.is_alive():
                break
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@app.command()
def run(
    count: Annotated[int, typer.Option("--count", "-n", help="How many random specs (1..10,000)")] = 12,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: fresh; printed)")] = None,
    kinds: Annotated[str | None, typer.Option(help="Comma-separated kinds, e.g. dragon,koch_snowflake")] = None,
    size: Annotated[int, typer.Option(help="Image edge in pixels (16..8192)")] = 1024,
    palette: Annotated[str, typer.Option(help=f"{', '.join(PALETTES)} or random")] = "rainbow",
    workers: Annotated[int, typer.Option(help="Worker processes (0 = one per CPU)")] = 0,
    collage: Annotated[bool, typer.Option("--collage/--no-collage", help="Tile all stored images")] = True,
    backend: Annotated[str, typer.Option(help="local (process pool) or lambda (the deployed stack)")] = "local",
) -> None:
    """Generate COUNT random specs, render them in one batched run, update the collage, print the keys."""
    ensure_dagster_home()
    kind_list = [k.strip() for k in kinds.split(",") if k.strip()] if kinds else None
    try:  # refuse bad input before starting any run
        FractalSpec(kind_list[0] if kind_list else "dragon", 0, size, "rainbow" if palette == "random" else palette)
        for kind in kind_list or []:
            FractalSpec(kind, 0)
    except InvalidSpec as exc:
        raise fail(str(exc), 2) from None
    try:
        chosen = use_backend(backend)  # lambda: FRACTALS_LAMBDA_FUNCTION/BUCKET from the deployed stack
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    if chosen:
        err.print(chosen, highlight=False, soft_wrap=True)

    import warnings

    import dagster as dg
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)

    from fractal_pipeline.assets import PARTITIONS_NAME
    from fractal_pipeline.definitions import build_definitions
    from fractal_pipeline.rendering import workers_started_early
    from fractal_pipeline.resources import RenderBackendResource
    from fractal_pipeline.store import collage_key, image_key, store_config_from_env

    try:
        defs = build_definitions()
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.get()
    tags = {SOURCE_TAG: "cli"}
    specs_config: dict[str, Any] = {"count": count, "seed": seed, "kinds": kind_list, "size": size}
    specs_config["palette"] = None if palette == "random" else palette
    started = time.monotonic()
    with ExitStack() as early:
        renderer = (defs.resources or {}).get("renderer")
        if isinstance(renderer, RenderBackendResource) and renderer.backend == "local":
            # The images run's render workers start now, while Dagster runs fractal_specs and creates the
            # images run on one CPU, instead of after it, when the images step starts (~0.2 s).
            early.enter_context(workers_started_early(store_config_from_env(), workers or renderer.workers or None))
        result = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("fractal_specs")],
            run_config=_quiet({"ops": {"fractal_specs": {"config": specs_config}}}),
            tags=tags,
            raise_on_error=False,
        )
        if not result.success:
            raise fail(run_failure_message(result))
        specs: list[FractalSpec] = result.output_for_node("fractal_specs")
        materialization = result.asset_materializations_for_node("fractal_specs")[0]
        used_seed = materialization.metadata["seed"].value
        err.print(f"{len(specs)} specs (seed {used_seed}); run {result.run_id[:8]}")

        keys = [spec.key for spec in specs]
        order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
        failures: list[str] = []
        for first, last in contiguous_blocks(keys, order):
            total = range_size(first, last, order)
            images = _execute_with_progress(
                job,
                instance,
                total,
                "rendering",
                asset_selection=[dg.AssetKey("fractal_images")],
                tags={**tags, ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
                run_config=_quiet({"ops": {"fractal_images": {"config": {"workers": workers}}}}),
            )
            err.print(f"images run {images.run_id[:8]}: {'success' if images.success else 'FAILED'}")
            if not images.success:
                failures.append(run_failure_message(images))
    store_where = store_config_from_env().description
    for key in keys:
        console.print(image_key(key), highlight=False)
    if collage and not failures:
        collage_result = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("fractal_collage")],
            run_config=_quiet(),
            tags=tags,
            raise_on_error=False,
        )
        if not collage_result.success:
            failures.append(run_failure_message(collage_result))
        else:
            console.print(collage_key("fractal_collage"), highlight=False)
    elapsed = time.monotonic() - started
    err.print(f"stored in {store_where} in {elapsed:.1f} s; DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    if failures:
        raise fail("; ".join(failures))


@app.command("kinds")
def kinds_command() -> None:
    """List the 26 kinds with their depth range and segments at the default depth."""
    table = Table("kind", "angle", "default depth", "random depths", "max depth", "segments at default")
    for kind in KINDS.values():
        table.add_row(
            kind.name,
            str(kind.angle),
            str(kind.default_depth),
            f"{kind.random_depths[0]}..{kind.random_depths[1]}",
            str(kind.max_depth),
            f"{kind.segment_count(kind.default_depth):,}",
        )
    console.print(table)


@app.command("render")
def render_command(
    kind: Annotated[str, typer.Argument(help="Kind name, see `fractal-pipeline kinds`")],
    depth: Annotated[int | None, typer.Argument(help="Rewriting iterations (default: the kind's default)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG path (default <key>.png)")] = None,
    size: Annotated[int, typer.Option(help="Image edge in pixels")] = 1024,
    palette: Annotated[str, typer.Option(help=", ".join(PALETTES))] = "rainbow",
) -> None:
    """Render one fractal to a PNG file, without Dagster."""
    try:
        chosen = depth if depth is not None else (KINDS[kind].default_depth if kind in KINDS else 0)
        spec = FractalSpec(kind, chosen, size, palette)
        started = time.perf_counter()
        data = render_png(spec)
    except InvalidSpec as exc:
        raise fail(str(exc), 2) from None
    path = output or Path(f"{spec.key}.png")
    path.write_bytes(data)
    elapsed = (time.perf_counter() - started) * 1000
    console.print(f"{path}: {spec.key}, {spec.segments:,} segments, {len(data):,} bytes, {elapsed:.0f} ms")


# --------------------------------------------------------------------------------------------
# Observability: runs, logs, events (read what the instance recorded; see observability.py)

_STATUS_STYLE = {"SUCCESS": "green", "FAILURE": "red", "CANCELED": "dim", "CANCELING": "yellow"}


def _read_instance() -> tuple[dg.DagsterInstance, Path]:
    """The instance in ``$DAGSTER_HOME`` (default: the CLI's), for reading; never creates one."""
    import warnings

    import dagster as dg

    from fractal_pipeline.observability import ObservabilityError, open_instance

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).expanduser().resolve()
    try:
        return open_instance(home), home
    except ObservabilityError as exc:
        raise fail(str(exc)) from None


def _resolve_run(instance: dg.DagsterInstance, home: Path, prefix: str) -> str:
    from fractal_pipeline.observability import ObservabilityError, resolve_run_id

    try:
        return resolve_run_id(instance, prefix)
    except ObservabilityError as exc:
        raise fail(f"{exc} (DAGSTER_HOME={home})") from None


def _clock(timestamp: float | None) -> str:
    from datetime import datetime

    return "" if timestamp is None else datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes}m {seconds:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def _t(seconds: float) -> str:
    """Seconds since the run started, to the millisecond (no "-0.000")."""
    return f"{round(seconds, 3) or 0.0:.3f}"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, "yellow"))


def _plain_table(*columns: str, right: Sequence[str] = ()) -> Table:
    table = Table(*columns)
    for column in table.columns:
        if column.header in right:
            column.justify = "right"
    return table


def _row(table: Table, *cells: str | Text) -> None:
    """Add a row of literal text (log messages contain brackets that are not rich markup)."""
    table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in cells))


def _run_heading(info: Any) -> Text:
    what = ", ".join(info.assets) or "(no assets)"
    if info.partitions:
        count = f", {info.partition_count} partitions" if info.partition_count else ""
        what += f" ({info.partitions}{count})"
    return Text.assemble(("run " + info.short_id, "bold"), " ", _status(info.status), f" · {info.source} · {what}")


def _note_run_state(info: Any, lines: Sequence[Any] = ()) -> None:
    """One line on stderr when the run is not (successfully) finished."""
    if not info.finished:
        err.print(f"run {info.short_id} is still {info.status}: showing what it recorded so far", soft_wrap=True)
    elif info.status == "FAILURE":
        reason = next((line.message for line in lines if line.event == "STEP_FAILURE"), "see `fractal-pipeline logs`")
        err.print(Text(f"run {info.short_id} failed: {reason}"), soft_wrap=True)


@app.command("runs")
def runs_command(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many of the most recent runs")] = 20,
) -> None:
    """Recent runs: id, status, start, duration, assets, partitions and who launched them (cli, ui, sensor...)."""
    from fractal_pipeline.observability import list_runs

    instance, home = _read_instance()
    runs = list_runs(instance, limit)
    if not runs:
        err.print(
            Text(f"no runs in {home} yet; start one with `fractal-pipeline run` or `dagster dev`"), soft_wrap=True
        )
        return
    table = _plain_table("run", "status", "started", "duration", "assets", "partitions", "launched by")
    for column in table.columns[:4]:
        column.no_wrap = True
    table.caption = f"{len(runs)} of {instance.get_runs_count()} runs in {home}"
    for run in runs:
        duration = _seconds(run.duration())
        partitions = run.partitions
        if run.partition_count and "..." in partitions:
            partitions += f" ({run.partition_count})"
        _row(
            table,
            run.short_id,
            _status(run.status),
            _clock(run.start or run.created),
            duration if run.finished else f"{duration} (running)".strip(),
            ", ".join(run.assets),
            partitions,
            run.source,
        )
    console.print(table)


@app.command("logs")
def logs_command(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix of it (see `fractal-pipeline runs`)")],
) -> None:
    """A run's structured log messages in time order, then the stdout/stderr its steps captured."""
    from fractal_pipeline.observability import captured_outputs, run_info, run_log_lines

    instance, home = _read_instance()
    full_id = _resolve_run(instance, home, run_id)
    info = run_info(instance, full_id)
    lines = run_log_lines(instance, full_id)
    console.print(_run_heading(info))
    table = _plain_table("t (s)", "level", "step", "event", "message", right=("t (s)",))
    table.title = f"event log: {len(lines)} entries, seconds since the run started"
    for line in lines:
        _row(table, _t(line.t), line.level, line.step or "", line.event or "", line.message)
    console.print(table)
    outputs = captured_outputs(instance, full_id)
    if not outputs:
        console.print("(no captured stdout/stderr for this run)")
    for output in outputs:
        where = f"{', '.join(output.step_keys) or 'run'} (pid {output.pid})"
        state = "" if output.complete else ", still capturing"
        for stream, text in (("stdout", output.stdout), ("stderr", output.stderr)):
            console.rule(Text(f"{stream} of {where}{state}"), style="dim")
            console.print(text.rstrip("\n") or "(empty)", markup=False, highlight=False, soft_wrap=True)
    _note_run_state(info, lines)


@app.command("events")
def events_command(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix of it (see `fractal-pipeline runs`)")],
    unified: Annotated[bool, typer.Option("--unified", help="One table ordered by time, with a worker column")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable: run, workers and events")] = False,
) -> None:
    """What each worker did and when: start, render KEY, encode, put fractals/KEY.png, stop.

    Times are seconds since the run started, read from the event log and the per-partition metadata.
    """
    import json

    from fractal_pipeline.observability import RENDER_ROLE, run_log_lines, run_timeline

    instance, home = _read_instance()
    full_id = _resolve_run(instance, home, run_id)
    timeline = run_timeline(instance, full_id)
    info = timeline.run
    if as_json:
        sys.stdout.write(json.dumps(timeline.to_json(), indent=2) + "\n")
    else:
        console.print(_run_heading(info))
        if unified:
            table = _plain_table("t (s)", "worker", "event", "subject", "ms", "busy", right=("t (s)", "ms", "busy"))
            table.caption = "busy: render workers rendering, encoding or storing at that moment"
            for event, busy in zip(timeline.events, timeline.busy_workers, strict=True):
                _row(table, _t(event.t), event.worker, event.event, event.subject, _ms(event.duration_ms), str(busy))
            console.print(table)
        else:
            for lane in timeline.lanes:
                if lane.role == RENDER_ROLE:
                    title = (
                        f"{lane.worker} · render worker · {lane.partitions} PNGs · "
                        f"busy {lane.busy_s:.3f} s of {lane.end - lane.start:.3f} s"
                    )
                else:
                    title = f"{lane.worker} · dagster process"
                console.print(Text(title, style="bold"))
                table = _plain_table("t (s)", "event", "subject", "ms", right=("t (s)", "ms"))
                for event in lane.events:
                    _row(table, _t(event.t), event.event, event.subject, _ms(event.duration_ms))
                console.print(table)
        workers = timeline.render_lanes
        if workers:
            work_s = sum(lane.busy_s for lane in workers)
            span = max(lane.end for lane in workers) - min(lane.start for lane in workers)
            console.print(
                f"{len(workers)} render workers, {sum(lane.partitions for lane in workers)} PNGs, "
                f"peak {timeline.peak_parallel} working at once, {work_s:.3f} s of work in {span:.3f} s "
                "from the first worker start to the last put",
                highlight=False,
            )
        else:
            console.print("no render workers in this run (only fractal_images runs render)", highlight=False)
    _note_run_state(info, run_log_lines(instance, full_id) if info.status == "FAILURE" else ())


@app.command("cancel")
def cancel_command(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix of it (see `fractal-pipeline runs`)")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the run has stopped")] = True,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for the run to stop")] = 30.0,
    force: Annotated[
        bool, typer.Option("--force", help="Only mark the run canceled; its processes are not stopped")
    ] = False,
) -> None:
    """Stop a queued or running run as the UI's Terminate button does, and wait until it has stopped.

    A queued run is taken off the queue. A running one gets a termination request through the
    instance's run launcher (under `dagster dev` or `dagster job launch`: the code server running
    it), which stops its render workers; the run ends CANCELED with what it stored so far.
    """
    import dagster as dg
    from dagster._core.storage.tags import GRPC_INFO_TAG

    instance, home = _read_instance()
    full_id = _resolve_run(instance, home, run_id)
    short = full_id[:8]

    def current() -> dg.DagsterRun:
        run = instance.get_run_by_id(full_id)
        assert run is not None, f"run {full_id} vanished"
        return run

    run = current()
    if run.is_finished:
        raise fail(f"run {short} already {run.status.value}; nothing to cancel")
    started = time.monotonic()
    if force or run.status == dg.DagsterRunStatus.NOT_STARTED:  # never launched: nothing to stop
        instance.report_run_canceled(run, message="Marked canceled by `fractal-pipeline cancel`.")
    elif (
        isinstance(instance.run_launcher, dg.DefaultRunLauncher)
        and run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
        and GRPC_INFO_TAG not in run.tags
    ):
        raise fail(
            f"run {short} executes inside the process that started it (`fractal-pipeline run`, "
            "`dagster asset materialize`), not on a code server: press Ctrl-C there, "
            f"or `fractal-pipeline cancel {short} --force` to only mark it canceled"
        )
    else:
        reason = "the run launcher could not reach it"
        try:
            requested = instance.run_coordinator.cancel_run(full_id)  # what the UI's Terminate calls
        except Exception as exc:
            requested = False
            reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        if not requested and not current().is_finished:
            raise fail(
                f"run {short}: the termination request did not reach it ({reason}); if the process "
                f"running it is gone, `fractal-pipeline cancel {short} --force` marks it canceled"
            )
    run = current()
    deadline = started + timeout
    while wait and not run.is_finished and time.monotonic() < deadline:
        time.sleep(0.2)
        run = current()
    if run.is_finished:
        console.print(f"run {short} {run.status.value} after {time.monotonic() - started:.1f} s", highlight=False)
    elif wait:
        raise fail(
            f"run {short} still {run.status.value} {timeout:g} s after the termination request; "
            f"see `fractal-pipeline logs {short}` or wait longer with --timeout"
        )
    else:
        console.print(f"run {short} {run.status.value}: termination requested", highlight=False)


register_aws_commands(app)  # deploy, destroy


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


if __name__ == "__main__":
    main()
