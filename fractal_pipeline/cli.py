"""The ``fractal-pipeline`` command: drives the Dagster definitions, never re-implements them."""

from __future__ import annotations

import errno
import os
import signal
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
from fractal_pipeline.console import EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_USAGE, fail, note
from fractal_pipeline.fractals import DEFAULT_SIZE, KINDS, PALETTES, FractalSpec, InvalidSpec, render_png
from fractal_pipeline.instance.home import one_line
from fractal_pipeline.observability import SOURCE_TAG
from fractal_pipeline.store import image_key

if TYPE_CHECKING:
    import dagster as dg

app = typer.Typer(
    help="Batch L-system fractals on Dagster: generate specs, render PNGs in parallel, tile a collage.",
    epilog=EXIT_CODES_HELP,
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


def ensure_dagster_home() -> Path:
    """Use ``$DAGSTER_HOME``, or create the default one; exits 2 with one line if it cannot be used."""
    from fractal_pipeline.instance.home import HomeError, ensure_dagster_home

    try:
        return ensure_dagster_home()
    except HomeError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def _load_instance(home: Path) -> dg.DagsterInstance:
    """The instance in ``home``; exits 2 with one line if its ``dagster.yaml`` or storage cannot be loaded."""
    from fractal_pipeline.instance.home import HomeError, load_instance

    try:
        return load_instance(home)
    except HomeError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def _quiet_dagster_warnings() -> None:
    """Dagster's beta and preview warnings (backfill_policy, pools...) are not the user's to act on."""
    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def _load_definitions() -> dg.Definitions:
    """The definitions the environment selects; exits 2 naming the variable if a setting is bad."""
    _quiet_dagster_warnings()
    try:
        from fractal_pipeline.definitions import build_definitions

        return build_definitions()
    except ValueError as exc:  # every setting read at load time raises ValueError naming its variable
        raise fail(str(exc), EXIT_USAGE) from None


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


class _ImagesProgress:
    """The progress bar of an images run: PNGs recorded, and what the run waits for when it waits.

    While a step retry waits (after a storage outage), it says so and counts down. When no PNG is
    recorded for :data:`STALL_S`, it asks the store itself, in a thread, whether it answers: a worker
    whose upload fails retries for ~30 s before the step hears of it.
    """

    STALL_S = 5.0

    def __init__(self, instance: dg.DagsterInstance, progress: Progress, total: int, store: Any) -> None:
        self.instance = instance
        self.progress = progress
        self.task = progress.add_task("rendering", total=total)
        self.total = total
        self.store = store
        self.done = 0
        self.cursor: str | None = None
        self.last_change = time.monotonic()
        self.retry_until: float | None = None
        self.probe: threading.Thread | None = None
        self.unreachable = False

    def __call__(self, run_id: str) -> None:
        import dagster as dg

        if self.instance.get_run_by_id(run_id) is None:
            return
        kinds = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.STEP_UP_FOR_RETRY}
        connection = self.instance.get_records_for_run(run_id, cursor=self.cursor, of_type=kinds, limit=10_000)
        self.cursor = connection.cursor
        now = time.monotonic()
        for record in connection.records:
            event = record.event_log_entry.dagster_event
            if event is not None and event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY:
                wait = float(getattr(event.event_specific_data, "seconds_to_wait", None) or 0)
                self.retry_until = now + wait
                self.progress.console.print(Text(f"storage unreachable: the images step retries in {wait:.0f} s"))
            else:
                self.done += 1
                self.retry_until = None
                self.unreachable = False
            self.last_change = now
        stalled = now - self.last_change >= self.STALL_S
        if stalled and (self.probe is None or not self.probe.is_alive()):
            self.probe = threading.Thread(target=self._ask_store, daemon=True)
            self.probe.start()
        self.progress.update(self.task, completed=min(self.done, self.total), description=self._label(now, stalled))

    def _label(self, now: float, stalled: bool) -> str:
        where = self.store.config.description
        if self.retry_until is not None:
            left = self.retry_until - now
            return f"storage unreachable: retry in {left:.0f} s" if left >= 1 else "storage unreachable: retrying"
        if stalled and self.unreachable:
            return f"storage unreachable at {where}: uploads are being retried"
        if stalled:
            return f"rendering (no PNG stored for {now - self.last_change:.0f} s)"
        return "rendering"

    def _ask_store(self) -> None:
        from fractal_pipeline.store import StoreError

        try:
            self.store.check()
            self.unreachable = False
        except StoreError as exc:
            if exc.transient and not self.unreachable:
                where = self.store.config.description
                self.progress.console.print(Text(f"storage unreachable at {where}: the workers retry their uploads"))
            self.unreachable = exc.transient
        except Exception:  # the store's own answer is what matters here; anything else says nothing
            self.unreachable = False


@app.command(epilog=EXIT_CODES_HELP)
def run(
    count: Annotated[
        int, typer.Option("--count", "-n", help="How many distinct random specs (1..100; 1..500 with --palette random)")
    ] = 12,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: fresh; printed)")] = None,
    kinds: Annotated[str | None, typer.Option(help="Comma-separated kinds, e.g. dragon,koch_snowflake")] = None,
    size: Annotated[int, typer.Option(help="Image edge in pixels (16..8192)")] = DEFAULT_SIZE,
    palette: Annotated[str, typer.Option(help=f"{', '.join(PALETTES)} or random")] = "rainbow",
    workers: Annotated[int, typer.Option(help="Worker processes (0 = one per CPU; at most 4 per CPU)")] = 0,
    collage: Annotated[bool, typer.Option("--collage/--no-collage", help="Tile all stored images")] = True,
    backend: Annotated[str, typer.Option(help="local (process pool) or lambda (the deployed stack)")] = "local",
    region: Annotated[
        str | None, typer.Option(help="AWS region of --backend lambda (default: AWS_REGION, AWS_DEFAULT_REGION)")
    ] = None,
) -> None:
    """Generate COUNT random specs, render those not stored yet in one run, update the collage, print the stored keys.

    Stdout lists exactly the object keys stored when the command ends. Specs
    already stored are not rendered again. Ctrl-C (or SIGTERM) stops the run:
    it ends CANCELED, keeps what is stored, and the same command renders the
    rest; a second Ctrl-C stops at once.
    """
    from fractal_pipeline.batch import Interrupts, RunOptions, UsageError, parse_kinds

    try:
        options, notes = RunOptions(
            count, seed, parse_kinds(kinds), size, palette, workers, collage, backend, region
        ).checked()
    except UsageError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    for line in notes:
        note(line)
    with Interrupts() as interrupts:
        _Batch(options, interrupts).run()


class _Batch:
    """One ``fractal-pipeline run``: specs, the images run, the collage, and the truth about what is stored."""

    def __init__(self, options: Any, interrupts: Any) -> None:
        self.options = options
        self.interrupts = interrupts
        self.stopped_at_once = False
        self.failures: list[str] = []
        #: Keys this command saw stored: before its images run, and recorded by it (each after its PNG was written).
        self.seen_stored: set[str] = set()

    def run(self) -> None:
        self._setup()
        started = time.monotonic()
        keys, resume = self._specs()
        self._images(keys)
        stored = _stored(self.store, keys, self.seen_stored)
        for key in keys:
            if key in stored:
                console.print(Text(image_key(key)), highlight=False, soft_wrap=True)
        missing = len(keys) - len(stored)
        if self.interrupts.requested:
            how = "interrupted twice: stopped at once" if self.stopped_at_once else "interrupted"
            raise fail(
                f"{how}: {len(stored)} of {len(keys)} PNGs stored; `{resume}` renders the other {missing}",
                EXIT_INTERRUPTED,
            )
        if self.options.collage and not missing:
            self._collage()
            if self.interrupts.requested:
                raise fail(f"interrupted while tiling the collage: all {len(keys)} PNGs are stored", EXIT_INTERRUPTED)
        elapsed = time.monotonic() - started
        err.print(
            Text(f"stored in {self.store_config.description} in {elapsed:.1f} s; DAGSTER_HOME={self.home}"),
            soft_wrap=True,
        )
        if missing:
            reason = f" ({self.failures[0]})" if self.failures else ""
            raise fail(f"{missing} of {len(keys)} PNGs are missing{reason}; `{resume}` renders only those")
        if self.failures:
            raise fail("; ".join(self.failures))

    def _setup(self) -> None:
        """Home, backend, definitions, instance and store: any of them bad exits 2, before a run is recorded."""
        self.home = ensure_dagster_home()
        if self.options.backend != "local":
            try:
                err.print(Text(use_backend(self.options.backend, region=self.options.region) or ""), soft_wrap=True)
            except ValueError as exc:
                raise fail(str(exc), EXIT_USAGE) from None
        from fractal_pipeline.store import StoreError, open_store, store_config_from_env

        self.defs = _load_definitions()
        self.instance = _load_instance(self.home)
        try:
            self.store_config = store_config_from_env()
            self.store = open_store(self.store_config)
            self.store.check()
        except (StoreError, ValueError) as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        self.job = self.defs.resolve_implicit_global_asset_job_def()
        if self.interrupts.requested:
            raise fail("interrupted before anything was recorded", EXIT_INTERRUPTED)

    def _execute(self, asset: str, run_config: dict[str, Any], poll: Any = None, tags: Any = None) -> Any:
        """Execute one asset's run (interrupts handled by :func:`fractal_pipeline.batch.execute`)."""
        import dagster as dg

        from fractal_pipeline.batch import StopNow, execute

        try:
            return execute(
                self.job,
                self.instance,
                self.interrupts,
                poll or (lambda run_id: None),
                asset_selection=[dg.AssetKey(asset)],
                run_config=_quiet(run_config),
                tags={SOURCE_TAG: "cli", **(tags or {})},
            )
        except StopNow:
            self.stopped_at_once = True
            return None

    def _specs(self) -> tuple[list[str], str]:
        """Run ``fractal_specs`` (with the images run's workers starting meanwhile); the keys and the resume command."""
        options = self.options
        config = {
            "count": options.count,
            "seed": options.seed,
            "kinds": list(options.kinds) if options.kinds else None,
            "size": options.size,
            "palette": options.spec_palette,
        }
        self.early = ExitStack()
        self._start_workers_early()
        result = self._execute("fractal_specs", {"ops": {"fractal_specs": {"config": config}}})
        if result is None or not result.success:
            self.early.close()
            if self.interrupts.requested:
                shown = f" (run {result.run_id} CANCELED)" if result is not None else ""
                raise fail(f"interrupted: nothing rendered{shown}", EXIT_INTERRUPTED)
            raise fail(f"{run_failure_message(result)} (run {result.run_id})")
        specs: list[FractalSpec] = result.output_for_node("fractal_specs")
        used_seed = int(str(result.asset_materializations_for_node("fractal_specs")[0].metadata["seed"].value))
        self.specs_run = result.run_id
        self.seed = used_seed
        return [spec.key for spec in specs], options.command(used_seed)

    def _start_workers_early(self) -> None:
        from fractal_pipeline.rendering import default_workers, workers_started_early
        from fractal_pipeline.resources import RenderBackendResource

        renderer = (self.defs.resources or {}).get("renderer")
        if isinstance(renderer, RenderBackendResource) and renderer.backend == "local":
            # The images run's render workers start now, while Dagster runs fractal_specs and creates the
            # images run on one CPU, instead of after it, when the images step starts (~0.2 s).
            wanted = self.options.workers or renderer.workers or default_workers()
            self.early.enter_context(workers_started_early(self.store_config, min(wanted, self.options.count)))

    def _images(self, keys: list[str]) -> None:
        """The one images run that renders the keys not stored yet (none if all are)."""
        from fractal_pipeline.assets import COLLAGE_BY_LAUNCHER_TAG, PARTITIONS_NAME
        from fractal_pipeline.partitions import plan_batch

        with self.early:
            plan = plan_batch(keys, self.instance.get_dynamic_partitions(PARTITIONS_NAME), _stored(self.store, keys))
            self.seen_stored.update(plan.stored)
            err.print(
                Text(
                    f"{len(keys)} specs (seed {self.seed}), {len(plan.stored)} already stored; "
                    f"specs run {self.specs_run}"
                ),
                soft_wrap=True,
            )
            if plan.run is None or self.interrupts.requested:
                return
            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
            ) as progress:
                images = self._execute(
                    "fractal_images",
                    plan.run.run_config(self.options.workers),
                    _ImagesProgress(self.instance, progress, plan.run.renders, self.store),
                    {**plan.run.tags, **({COLLAGE_BY_LAUNCHER_TAG: "true"} if self.options.collage else {})},
                )
        if images is None:  # stopped at once: the run was marked CANCELED
            return
        self.seen_stored.update(m.partition for m in images.asset_materializations_for_node("fractal_images"))
        status = "success" if images.success else ("CANCELED" if self.interrupts.requested else "FAILED")
        skipped = f", {plan.run.skipped} partitions of its range skipped" if plan.run.skipped else ""
        err.print(Text(f"images run {images.run_id}: {status}{skipped}"), soft_wrap=True)
        if not images.success and not self.interrupts.requested:
            self.failures.append(f"{run_failure_message(images)} (run {images.run_id})")

    def _collage(self) -> None:
        from fractal_pipeline.store import collage_key

        result = self._execute("fractal_collage", {})
        if result is None or not result.success:
            shown = f"{run_failure_message(result)} (run {result.run_id})" if result is not None else "interrupted"
            self.failures.append(f"collage: {shown}")
        else:
            console.print(Text(collage_key("fractal_collage")), highlight=False)


def _stored(store: Any, keys: list[str], known: set[str] | None = None) -> set[str]:
    """Those of ``keys`` whose PNG is in the store.

    If the store cannot be listed (it went away mid-run), ``known`` is what this command saw stored:
    the keys stored before it and the partitions its run recorded, each recorded only once its PNG was
    written. Without ``known``, that is an error: exit 1.
    """
    try:
        stored: set[str] = store.stored_images(keys)
    except Exception as exc:  # the store went away mid-run
        if known is None:
            raise fail(
                f"cannot list the stored PNGs ({one_line(exc)}); run the same command again when the store is back"
            ) from None
        note(f"the store cannot be listed ({one_line(exc)}); showing the PNGs this command saw stored")
        return known & set(keys)
    return stored


@app.command("kinds")
def kinds_command() -> None:
    """List the 26 kinds with their depth range and segments at the default depth."""
    rows = [
        [
            kind.name,
            str(kind.default_depth),
            f"{kind.random_depths[0]}..{kind.random_depths[1]}",
            str(kind.max_depth),
            f"{kind.segment_count(kind.default_depth):,}",
            str(kind.angle),
        ]
        for kind in KINDS.values()
    ]
    headers = ["kind", "default depth", "random depths", "max depth", "segments at default", "angle"]
    optional = headers[:1:-1]  # from the right: angle first; kind and default depth always stay
    console.print(_fitted_table(headers, rows, optional, right=("segments at default",)))


def _fitted_table(
    headers: Sequence[str], rows: Sequence[Sequence[str | Text]], optional: Sequence[str], right: Sequence[str] = ()
) -> Table:
    """A table of ``rows`` that fits the terminal: ``optional`` columns are dropped, in that order, until the
    rest fit; what still does not fit wraps. A key, id or kind is never cut short."""
    widths = [
        max(len(cell.plain if isinstance(cell, Text) else cell) for cell in [header, *(row[index] for row in rows)]) + 3
        for index, header in enumerate(headers)
    ]
    shown = list(range(len(headers)))
    for name in optional:
        if sum(widths[index] for index in shown) + 1 <= console.width:
            break
        shown.remove(headers.index(name))
    table = _plain_table(*(headers[index] for index in shown), right=right)
    for row in rows:
        _row(table, *(row[index] for index in shown))
    return table


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
        raise fail(str(exc), EXIT_USAGE) from None
    path = output or Path(f"{spec.key}.png")
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder")
        path.write_bytes(data)
    except OSError as exc:
        raise fail(
            f"--output: cannot write {path} ({exc.strerror or exc}); give a file path in an existing, writable folder",
            EXIT_USAGE,
        ) from None
    elapsed = (time.perf_counter() - started) * 1000
    console.print(
        Text(f"{path}: {spec.key}, {spec.segments:,} segments, {len(data):,} bytes, {elapsed:.0f} ms"), highlight=False
    )


# --------------------------------------------------------------------------------------------
# Observability: runs, logs, events (read what the instance recorded; see observability.py)

_STATUS_STYLE = {"SUCCESS": "green", "FAILURE": "red", "CANCELED": "dim", "CANCELING": "yellow"}


def _read_instance() -> tuple[dg.DagsterInstance, Path]:
    """The instance in ``$DAGSTER_HOME`` (default: the CLI's), for reading; never creates one."""
    from fractal_pipeline.instance.home import home_path, unusable_home
    from fractal_pipeline.observability import ObservabilityError, open_instance

    _quiet_dagster_warnings()
    home = home_path()
    try:
        return open_instance(home), home
    except ObservabilityError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except Exception as exc:  # a dagster.yaml or storage that cannot be loaded
        raise fail(str(unusable_home(home, exc)), EXIT_USAGE) from None


def _resolve_run(instance: dg.DagsterInstance, home: Path, prefix: str) -> str:
    from fractal_pipeline.observability import ObservabilityError, resolve_run_id

    try:
        return resolve_run_id(instance, prefix)
    except ObservabilityError as exc:
        raise fail(f"{exc} (DAGSTER_HOME={home})", EXIT_USAGE) from None


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
    """A table whose cells wrap in a narrow or piped terminal: a key, id or kind is never cut short."""
    table = Table(*columns)
    for column in table.columns:
        column.overflow = "fold"
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
    # The full id: it is what the UI opens (/runs/<id>); the 8-character prefix only works on this CLI.
    return Text.assemble(("run " + info.run_id, "bold"), " ", _status(info.status), f" · {info.source} · {what}")


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
    rows: list[list[str | Text]] = []
    for run in runs:
        duration = _seconds(run.duration())
        partitions = run.partitions
        if run.partition_count and "..." in partitions:
            partitions += f" ({run.partition_count})"
        rows.append(
            [
                run.short_id,
                _status(run.status),
                _clock(run.start or run.created),
                duration if run.finished else f"{duration} (running)".strip(),
                ", ".join(run.assets),
                partitions,
                run.source,
            ]
        )
    headers = ["run", "status", "started", "duration", "assets", "partitions", "launched by"]
    table = _fitted_table(headers, rows, optional=("partitions", "launched by", "started", "duration"))
    table.caption = f"{len(runs)} of {instance.get_runs_count()} runs in {home}"
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


@app.command("ui", epilog=EXIT_CODES_HELP)
def ui_command(
    host: Annotated[str, typer.Option("--host", "-h", help="Host the UI listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="Port the UI listens on")] = 3000,
) -> None:
    """The Dagster UI and daemon (`dagster dev`) on the instance this CLI records to, from any folder.

    The UI shows every run `fractal-pipeline run` made. The daemon runs the sensors on this home:
    `fractal_collage_freshness` rebuilds the collage after images land (never after a `run`'s own
    images: the CLI tiles those), `render_random_fractals` renders what the schedule adds, and
    `fractal_spec_files` watches the bucket if FRACTALS_BUCKET is set. Ctrl-C stops both.
    """
    home = ensure_dagster_home()
    _load_definitions()  # a bad setting is one line here, not a code location error in the UI
    _load_instance(home).dispose()
    shown = f"[{host}]" if ":" in host else host
    err.print(Text(f"Dagster UI on http://{shown}:{port} (DAGSTER_HOME={home}); Ctrl-C stops it"), soft_wrap=True)
    command = [sys.executable, "-m", "dagster", "dev", "-m", "fractal_pipeline.definitions"]
    command += ["--host", host, "--port", str(port)]
    # dagster dev takes this process's place: Ctrl-C and SIGTERM reach it, and it stops its webserver,
    # daemon and code server; the loaded code location is the installed package, whatever the folder.
    # SIGINT is reset first: a process started with it ignored (a shell's `&`) would pass that on,
    # and dagster dev would then ignore `kill -INT`.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    env = {**os.environ, "PYTHONWARNINGS": "ignore:Function `dev_command` is superseded"}
    sys.stderr.flush()
    os.execve(sys.executable, command, env)


register_aws_commands(app)  # deploy, destroy


def main() -> None:
    """Console-script entry point: usage errors (an unknown option, a value of the wrong type) in one line."""
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:  # Ctrl-C outside a run (at a prompt, while starting)
        fail("interrupted", EXIT_INTERRUPTED)
        code = EXIT_INTERRUPTED
    except typer.TyperException as exc:  # click's usage errors, as typer raises them
        context = getattr(exc, "ctx", None)
        command = getattr(context, "command_path", None) or "fractal-pipeline"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        fail(f"{' '.join(message.split()).rstrip('.')}; see `{command} --help`", EXIT_USAGE)
        code = EXIT_USAGE
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
