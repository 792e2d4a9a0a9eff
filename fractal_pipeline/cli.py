"""The ``fractal-pipeline`` command: drives the Dagster definitions, never re-implements them."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fractal_pipeline.fractals import KINDS, PALETTES, FractalSpec, InvalidSpec, render_png

if TYPE_CHECKING:
    import dagster as dg

app = typer.Typer(
    help="Batch L-system fractals on Dagster: generate specs, render PNGs in parallel, tile a collage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

DEFAULT_DAGSTER_HOME = Path.home() / ".fractal_pipeline" / "dagster_home"
SOURCE_TAG = "fractal_pipeline/source"


def ensure_dagster_home() -> Path:
    """Use ``$DAGSTER_HOME``, or create the default one, so runs persist and show up in ``dagster dev``."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("# Embedded defaults: SQLite storage in this folder.\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


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


def contiguous_blocks(keys: list[str], order: list[str]) -> list[tuple[str, str]]:
    """Group ``keys`` into ranges of consecutive partitions in ``order`` (one run each)."""
    wanted = set(keys)
    blocks: list[tuple[str, str]] = []
    start: str | None = None
    previous: str | None = None
    for key in order:
        if key in wanted:
            start = start or key
            previous = key
        elif start is not None and previous is not None:
            blocks.append((start, previous))
            start = None
    if start is not None and previous is not None:
        blocks.append((start, previous))
    return blocks


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

    import warnings

    import dagster as dg
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)

    from fractal_pipeline.assets import PARTITIONS_NAME
    from fractal_pipeline.definitions import build_definitions
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
        total = order.index(last) - order.index(first) + 1
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


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


if __name__ == "__main__":
    main()
