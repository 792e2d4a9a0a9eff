"""``run``: specs, one images run, the collage; stdout lists exactly the stored keys."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from fractal_pipeline.aws.backend import use_backend
from fractal_pipeline.cli import console as term
from fractal_pipeline.cli.common import ensure_dagster_home, load_definitions, load_instance, quiet
from fractal_pipeline.cli.console import EXIT_INTERRUPTED, EXIT_USAGE, fail, note
from fractal_pipeline.defs import tags as run_tags
from fractal_pipeline.fractals import DEFAULT_SIZE, PALETTES, FractalSpec
from fractal_pipeline.instance.home import one_line
from fractal_pipeline.runs.execute import run_failure_message, start_workers_early
from fractal_pipeline.store import image_key

if TYPE_CHECKING:
    import dagster as dg


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

        from fractal_pipeline.defs.metadata import SKIPPED_KEY

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
                if (recorded := record.asset_materialization) is not None and SKIPPED_KEY in recorded.metadata:
                    continue  # a partition the run skipped, recorded again as stored by a failing run: no render
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
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and its predicted time and cost; run nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: the plan as JSON")] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Render even if predicted over FRACTALS_MAX_BATCH_SECONDS")
    ] = False,
) -> None:
    """Generate COUNT random specs, render those not stored yet in one run, update the collage, print the stored keys.

    Stdout lists exactly the object keys stored when the command ends. Specs
    already stored are not rendered again. Ctrl-C (or SIGTERM) stops the run:
    it ends CANCELED, keeps what is stored, and the same command renders the
    rest; a second Ctrl-C stops at once. --dry-run prints the plan (specs, what is stored, the
    predicted render time and its cost on Lambda and Fargate: docs/cost.md) and records nothing.
    """
    from fractal_pipeline.runs.execute import Interrupts
    from fractal_pipeline.runs.options import RunOptions, UsageError, parse_kinds

    try:
        options, notes = RunOptions(
            count, seed, parse_kinds(kinds), size, palette, workers, collage, backend, region
        ).checked()
        if as_json and not dry_run:
            raise UsageError("--json: only with --dry-run; add --dry-run to get the plan as JSON")
    except UsageError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    for line in notes:
        note(line)
    with Interrupts() as interrupts:
        batch = _Batch(options, interrupts)
        batch.plan()
        if dry_run:
            from fractal_pipeline.cli.plan import print_plan

            print_plan(batch.run_plan, as_json)
            return
        batch.check_budget(yes)
        batch.run()


class _Batch:
    """One ``fractal-pipeline run``: specs, the images run, the collage, and the truth about what is stored."""

    def __init__(self, options: Any, interrupts: Any) -> None:
        self.options = options
        self.interrupts = interrupts
        self.stopped_at_once = False
        self.failures: list[str] = []
        #: Keys this command saw stored: before its images run, and recorded by it (each after its PNG was written).
        self.seen_stored: set[str] = set()

    def plan(self) -> None:
        """Set up, and plan the run (:func:`fractal_pipeline.runs.plan.plan_run`): nothing is recorded yet."""
        from fractal_pipeline.defs.settings import cost_settings_from_env
        from fractal_pipeline.runs.plan import plan_run

        self._setup()
        try:
            settings = cost_settings_from_env(self.options.backend)
        except ValueError as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        self.run_plan = plan_run(self.options, self.instance, self.store, settings)

    def check_budget(self, yes: bool) -> None:
        """Above the budget: exit 2 in one line, unless ``--yes`` or a terminal's y."""
        refused = self.run_plan.over_budget
        if refused is None or yes:
            return
        if sys.stdin.isatty() and sys.stderr.isatty():
            if typer.confirm(f"{refused}. Render anyway?", default=False, err=True):
                return
            raise fail("nothing rendered", EXIT_USAGE)
        raise fail(f"{refused}, or pass --yes (`... --dry-run` shows the plan)", EXIT_USAGE)

    def run(self) -> None:
        started = time.monotonic()
        keys, resume = self._specs()
        if self.run_plan.over_budget is not None:  # this batch went ahead over the budget: so may its rerun
            resume += " --yes"
        self._images(keys)
        stored = _stored(self.store, keys, self.seen_stored)
        for key in keys:
            if key in stored:
                term.console.print(Text(image_key(key)), highlight=False, soft_wrap=True)
        missing = len(keys) - len(stored)
        if self.interrupts.requested:
            how = "interrupted twice: stopped at once" if self.stopped_at_once else "interrupted"
            if not missing:
                then = f"; `{resume}` tiles the collage" if self.options.collage else ""
                raise fail(f"{how}: all {len(keys)} PNGs are stored{then}", EXIT_INTERRUPTED)
            raise fail(
                f"{how}: {len(stored)} of {len(keys)} PNGs stored; `{resume}` renders the other {missing}",
                EXIT_INTERRUPTED,
            )
        if self.options.collage and not missing:
            self._collage()
            if self.interrupts.requested:
                raise fail(
                    f"interrupted while tiling the collage: all {len(keys)} PNGs are stored; `{resume}` tiles it again",
                    EXIT_INTERRUPTED,
                )
        elapsed = time.monotonic() - started
        term.err.print(
            Text(
                f"{len(stored)} of {len(keys)} PNGs stored in {self.store_config.description} in {elapsed:.1f} s; "
                f"DAGSTER_HOME={self.home}"
            ),
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
                chosen = use_backend(self.options.backend, region=self.options.region)
                term.err.print(Text(chosen or ""), soft_wrap=True)
            except ValueError as exc:
                raise fail(str(exc), EXIT_USAGE) from None
        from fractal_pipeline.store import StoreError, open_store, store_config_from_env

        self.defs = load_definitions()
        self.instance = load_instance(self.home)
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
        """Execute one asset's run (interrupts handled by :func:`fractal_pipeline.runs.execute.execute`)."""
        import dagster as dg

        from fractal_pipeline.runs.execute import StopNow, execute

        try:
            return execute(
                self.job,
                self.instance,
                self.interrupts,
                poll or (lambda run_id: None),
                asset_selection=[dg.AssetKey(asset)],
                run_config=quiet(run_config),
                tags={run_tags.SOURCE: "cli", **(tags or {})},
            )
        except StopNow:
            self.stopped_at_once = True
            return None

    def _specs(self) -> tuple[list[str], str]:
        """Run ``fractal_specs``; the keys and the resume command."""
        options = self.options
        config = {
            "count": options.count,
            "seed": self.run_plan.seed,
            "kinds": list(options.kinds) if options.kinds else None,
            "size": options.size,
            "palette": options.spec_palette,
        }
        result = self._execute("fractal_specs", {"ops": {"fractal_specs": {"config": config}}})
        if result is None or not result.success:
            if self.interrupts.requested:
                shown = f" (run {result.run_id} CANCELED)" if result is not None else ""
                raise fail(f"interrupted: nothing rendered{shown}", EXIT_INTERRUPTED)
            raise fail(f"{run_failure_message(result)} (run {result.run_id})")
        specs: list[FractalSpec] = result.output_for_node("fractal_specs")
        used_seed = int(str(result.asset_materializations_for_node("fractal_specs")[0].metadata["seed"].value))
        self.specs_run = result.run_id
        self.seed = used_seed
        return [spec.key for spec in specs], options.command(used_seed)

    def _images(self, keys: list[str]) -> None:
        """The one images run that renders the keys not stored yet (none if all are)."""
        from fractal_pipeline.defs.batch_plan import plan_batch
        from fractal_pipeline.defs.partitions import PARTITIONS_NAME

        plan = plan_batch(keys, self.instance.get_dynamic_partitions(PARTITIONS_NAME), _stored(self.store, keys))
        self.seen_stored.update(plan.stored)
        term.err.print(
            Text(
                f"{len(keys)} specs (seed {self.seed}), {len(plan.stored)} already stored; specs run {self.specs_run}"
            ),
            soft_wrap=True,
        )
        if plan.run is None or self.interrupts.requested:
            return
        options = self.options
        started = start_workers_early(self.defs, options.backend, self.store_config, options.workers, plan.run.renders)
        try:
            images = self._images_run(plan.run)
        finally:
            started.close()
        if images is None:  # stopped at once: the run was marked CANCELED
            return
        self.seen_stored.update(m.partition for m in images.asset_materializations_for_node("fractal_images"))
        status = "success" if images.success else _final_status(self.instance, images.run_id)
        skipped = (
            f", {plan.run.skipped} partitions of its range skipped (not in this batch)" if plan.run.skipped else ""
        )
        term.err.print(Text(f"images run {images.run_id}: {status}{skipped}"), soft_wrap=True)
        if not images.success and not self.interrupts.requested:
            self.failures.append(f"{run_failure_message(images)} (run {images.run_id})")

    def _images_run(self, run: Any) -> Any:
        """Execute the images run with a progress bar."""
        from fractal_pipeline.defs.cost import prediction_tags

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=term.err,
        ) as progress:
            return self._execute(
                "fractal_images",
                run.run_config(self.options.workers),
                _ImagesProgress(self.instance, progress, run.renders, self.store),
                {
                    **run.tags,
                    **prediction_tags(self.run_plan.prediction),
                    **({run_tags.COLLAGE_BY_LAUNCHER: "true"} if self.options.collage else {}),
                },
            )

    def _collage(self) -> None:
        from fractal_pipeline.store import collage_key, image_key

        result = self._execute("fractal_collage", {})
        if result is None or not result.success:
            shown = f"{run_failure_message(result)} (run {result.run_id})" if result is not None else "interrupted"
            self.failures.append(f"collage: {shown}")
        else:
            term.console.print(Text(collage_key("fractal_collage")), highlight=False)
            metadata = result.asset_materializations_for_node("fractal_collage")[0].metadata
            unreadable = list(metadata["unreadable"].value) if "unreadable" in metadata else []
            if unreadable:
                shown = ", ".join(image_key(key) for key in unreadable[:3]) + (", ..." if len(unreadable) > 3 else "")
                them = "it" if len(unreadable) == 1 else "them"
                pngs = "stored PNG that does not" if len(unreadable) == 1 else "stored PNGs that do not"
                note(
                    f"collage: left out {len(unreadable)} {pngs} decode ({shown}); delete {them} from the store, "
                    f"and a run that includes {them} renders {them} again"
                )


def _final_status(instance: Any, run_id: str) -> str:
    """How the instance recorded a run that did not succeed: CANCELED when it was asked to stop (Ctrl-C here,
    `fractal-pipeline cancel` or the UI elsewhere), else FAILED."""
    run = instance.get_run_by_id(run_id)
    return "CANCELED" if run is not None and run.status.value in ("CANCELED", "CANCELING") else "FAILED"


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
