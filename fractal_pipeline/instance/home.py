"""The CLI's ``DAGSTER_HOME``: where it is, the ``dagster.yaml`` written into a new one, and loading its instance."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import dagster as dg

DEFAULT_DAGSTER_HOME = Path.home() / ".fractal_pipeline" / "dagster_home"
#: What earlier versions wrote into a new DAGSTER_HOME (upgraded to :func:`instance_yaml` on use).
LEGACY_DAGSTER_YAML = "# Embedded defaults: SQLite storage in this folder.\n"


class HomeError(Exception):
    """``DAGSTER_HOME`` cannot be used; the message names the folder and the fix."""


def home_path() -> Path:
    """``$DAGSTER_HOME``, else the CLI's default home, resolved."""
    return Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).expanduser().resolve()


def instance_yaml(home: Path) -> str:
    """The ``dagster.yaml`` the CLI writes into a new ``DAGSTER_HOME``: SQLite storage in ``home``, pooled."""
    # Imported here: they load Dagster's storage, which commands that only read a home's path never need.
    from fractal_pipeline.instance.compute_logs import ThreadMirroredComputeLogManager as logs
    from fractal_pipeline.instance.storage import PooledSqliteStorage as storage

    return (
        "# Embedded defaults: SQLite storage in this folder (runs, event log, schedules),\n"
        "# Dagster's own SqliteStorage with pooled event-log connections\n"
        "# (fractal_pipeline/instance/storage.py). Replace this block with `storage: sqlite:`\n"
        "# or `storage: postgres:` at will: the files and schema are the same.\n"
        "storage:\n"
        "  custom:\n"
        f"    module: {storage.__module__}\n"
        f"    class: {storage.__name__}\n"
        "    config:\n"
        f"      base_dir: {json.dumps(str(home))}\n"
        "# Captured step output, as Dagster's default (files under storage/), mirrored to the\n"
        "# console from a thread instead of `tail` processes.\n"
        "compute_logs:\n"
        f"  module: {logs.__module__}\n"
        f"  class: {logs.__name__}\n"
        "  config:\n"
        f"    base_dir: {json.dumps(str(home / 'storage'))}\n"
    )


def ensure_dagster_home() -> Path:
    """Use ``$DAGSTER_HOME``, or create the default one, so runs persist and show up in ``dagster dev``.

    A new home (or one an earlier version made) gets :func:`instance_yaml`. HomeError if the folder
    cannot be made or written.
    """
    home = home_path()
    blocked = file_in_the_way(home)
    if blocked is not None:
        raise blocked
    try:
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        with first_use_lock(home):
            if not config.exists() or config.read_text() == LEGACY_DAGSTER_YAML:
                config.write_text(instance_yaml(home))
    except OSError as exc:
        raise HomeError(
            f"DAGSTER_HOME: cannot use {home} ({exc.strerror or exc}); point DAGSTER_HOME at a writable folder"
        ) from None
    if not os.access(home, os.W_OK):
        raise HomeError(f"DAGSTER_HOME: {home} is not writable; point DAGSTER_HOME at a writable folder")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


#: The databases Dagster creates on a home's first use (SQLite storage); once all exist, no lock is taken.
FIRST_USE_FILES = ("history/runs.db", "history/runs/index.db", "schedules/schedules.db")

#: The lock file, in the home, of its first use.
FIRST_USE_LOCK = ".fractal_pipeline-first-use.lock"


@contextlib.contextmanager
def first_use_lock(home: Path) -> Iterator[None]:
    """Hold the home's lock while its ``dagster.yaml`` is written or its instance loaded, until the home's
    databases exist.

    Dagster creates a home's SQLite databases, and stamps their schema version, on first use. Two
    commands doing that at once on a new home can stamp a database twice, which leaves it unreadable
    for good ("more than one head"); one command at a time does it once. A home whose databases exist,
    or one this user cannot write (it cannot be set up either), takes no lock.
    """
    if fcntl is None or all((home / name).exists() for name in FIRST_USE_FILES):
        yield
        return
    try:
        fd = os.open(home / FIRST_USE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def file_in_the_way(home: Path) -> HomeError | None:
    """The one line for a ``DAGSTER_HOME`` that is, or lies under, a file; None if there is none."""
    for path in (home, *home.parents):
        if path.exists():
            if path.is_dir():
                return None
            under = "" if path == home else f" (DAGSTER_HOME={home} lies under it)"
            return HomeError(f"DAGSTER_HOME: {path} is a file, not a folder{under}; point DAGSTER_HOME at a folder")
    return None


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its first 300 characters, whitespace folded; without the
    schema a Dagster config error names before its errors and appends (``Expected: "{...}"``)."""
    text = " ".join(str(exc).split()).split(' Expected: "{', 1)[0]
    # A config error starts with the schema it checked, as Python reprs; the numbered errors after it say what is wrong.
    text = text.split(" Error 1: ", 1)[-1] if text.startswith("Errors whilst loading configuration") else text
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def unusable_home(home: Path, exc: BaseException) -> HomeError:
    """The one line for a home whose ``dagster.yaml`` or storage cannot be loaded."""
    return HomeError(
        f"DAGSTER_HOME: the instance in {home} cannot be loaded ({one_line(exc)}); "
        f"fix {home / 'dagster.yaml'} or point DAGSTER_HOME at another folder"
    )


#: Dagster's switch for storing events in batches, read as a whole number wherever events are stored;
#: the pooled storage sets it when it is unset.
EVENT_BATCH_ENV = "DAGSTER_EVENT_BATCH_SIZE"


def check_event_batch_size() -> None:
    """HomeError if ``DAGSTER_EVENT_BATCH_SIZE`` is set to something Dagster cannot read: it would fail the
    first batch of events, after the run is created."""
    raw = os.environ.get(EVENT_BATCH_ENV)
    if raw is None:
        return
    try:
        int(raw)
    except ValueError:
        raise HomeError(
            f"{EVENT_BATCH_ENV}: {raw!r} is not a whole number of events; unset it (the CLI's home then sets "
            f"one) or set one, e.g. {EVENT_BATCH_ENV}=1000"
        ) from None


def open_home_instance(home: Path) -> dg.DagsterInstance:
    """``DagsterInstance.from_config(home)`` with the classes its ``dagster.yaml`` names loaded now: Dagster
    loads the compute-log manager on first use, which would be in the middle of a run."""
    import dagster as dg

    check_event_batch_size()
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        instance.compute_log_manager  # noqa: B018 - loading it is the point
    except BaseException:
        instance.dispose()
        raise
    return instance


def load_instance(home: Path) -> dg.DagsterInstance:
    """The instance in ``home``; HomeError if ``DAGSTER_EVENT_BATCH_SIZE``, its ``dagster.yaml`` or its
    storage cannot be used."""
    try:
        with first_use_lock(home):
            return open_home_instance(home)
    except HomeError:
        raise
    except Exception as exc:  # YAML, config schema, a class or the database: all mean the home is unusable
        raise unusable_home(home, exc) from None
