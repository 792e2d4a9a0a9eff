"""What every command shares: the CLI's home and instance, the definitions, a quiet Dagster."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fractal_pipeline.cli.console import EXIT_USAGE, fail

if TYPE_CHECKING:
    import dagster as dg


def ensure_dagster_home() -> Path:
    """Use ``$DAGSTER_HOME``, or create the default one; exits 2 with one line if it cannot be used."""
    from fractal_pipeline.instance import home

    try:
        return home.ensure_dagster_home()
    except home.HomeError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def load_instance(home: Path) -> dg.DagsterInstance:
    """The instance in ``home``; exits 2 with one line if its ``dagster.yaml`` or storage cannot be loaded."""
    from fractal_pipeline.instance import home as homes

    try:
        return homes.load_instance(home)
    except homes.HomeError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def quiet_dagster_warnings() -> None:
    """Dagster's beta and preview warnings (backfill_policy, pools...) are not the user's to act on."""
    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def load_definitions() -> dg.Definitions:
    """The definitions the environment selects; exits 2 naming the variable if a setting is bad."""
    quiet_dagster_warnings()
    try:
        from fractal_pipeline.definitions import build_definitions

        return build_definitions()
    except ValueError as exc:  # every setting read at load time raises ValueError naming its variable
        raise fail(str(exc), EXIT_USAGE) from None


#: The CLI prints its own one-line summary; Dagster's console logger stays quiet.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def quiet(run_config: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**QUIET, **(run_config or {})}


def read_instance() -> tuple[dg.DagsterInstance, Path]:
    """The instance in ``$DAGSTER_HOME`` (default: the CLI's), for reading; never creates one."""
    from fractal_pipeline.inspect.runs import ObservabilityError, open_instance
    from fractal_pipeline.instance.home import HomeError, home_path, unusable_home

    quiet_dagster_warnings()
    home = home_path()
    try:
        return open_instance(home), home
    except (ObservabilityError, HomeError) as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except Exception as exc:  # a dagster.yaml or storage that cannot be loaded
        raise fail(str(unusable_home(home, exc)), EXIT_USAGE) from None


def resolve_run(instance: dg.DagsterInstance, home: Path, prefix: str) -> str:
    from fractal_pipeline.inspect.runs import ObservabilityError, resolve_run_id

    try:
        return resolve_run_id(instance, prefix)
    except ObservabilityError as exc:
        raise fail(f"{exc} (DAGSTER_HOME={home})", EXIT_USAGE) from None
