"""Instance storage for the embedded (SQLite) deployment: Dagster's storage, with pooled connections.

A batched ``fractal_images`` run writes two events per partition (the
"materialization planned" event when the run is created, the materialization
when the PNG is stored). Dagster's ``SqliteEventLogStorage`` opens a new
SQLAlchemy engine and SQLite connection for every write and closes it after:
each event pays for a connect, a statement compile (SQLAlchemy's compiled
cache lives on the engine, which is thrown away), a WAL checkpoint when the
last connection closes and a schema reflection. That costs more of the
step's CPU per event than rendering a 1024 px spec, so the event log, not
rendering, would bound a batch.

:class:`PooledSqliteEventLogStorage` is the same storage with the same files
and schema (an instance can switch back and forth), except that:

- each shard (one database per run, plus the cross-run index) keeps one engine
  with a small connection pool, re-created after ``fork`` and capped at
  :data:`MAX_OPEN_SHARDS` (least recently used first out) so a webserver that
  reads many runs does not hold many files open;
- connections use ``PRAGMA synchronous=NORMAL``, SQLite's recommended setting
  for WAL databases: a commit is durable once the WAL is checkpointed and a
  power cut can lose at most the last transactions, never corrupt the file;
- the "does the asset_keys table have the index columns" reflection is
  remembered once true (columns are only ever added by migrations);
- live event watching (the UI's run page) also wakes on writes to the
  run database's ``-wal`` file, since a pooled writer does not checkpoint
  into the main file after every event.

:class:`PooledSqliteStorage` is ``storage: sqlite`` with that event log; the
CLI writes it into the ``dagster.yaml`` it creates (:func:`fractal_pipeline.instance.home.instance_yaml`),
with :class:`fractal_pipeline.instance.compute_logs.ThreadMirroredComputeLogManager` for the steps' captured output.
``benchmarks/bench_pipeline.py`` times a run on it and on Dagster's stock storage
(docs/performance.md has the figures).
"""

import contextlib
import functools
import json
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from alembic.script import ScriptDirectory
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events import ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite import sqlite_event_log as sqlite_event_log_module
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sql import get_alembic_config
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, QueuePool
from watchdog.events import FileSystemEvent

from fractal_pipeline.instance.home import EVENT_BATCH_ENV

#: Engines kept open per storage object (each holds at most a couple of SQLite connections).
MAX_OPEN_SHARDS = 8

#: Dagster batches the "materialization planned" events of a new run (one per partition) only
#: when ``DAGSTER_EVENT_BATCH_SIZE`` is set; this storage sets it (unless already set) in the
#: processes that load it, so creating a 500-partition run costs a few transactions, not 1,000.
EVENT_BATCH_SIZE = 1000


@functools.cache
def _alembic_head() -> str:
    """The event log schema's alembic head revision (this Dagster version's)."""
    config = get_alembic_config(sqlite_event_log_module.__file__)
    return str(ScriptDirectory.from_config(config).as_revision_number("head"))


def _is_asset_event(entry: EventLogEntry) -> bool:
    return bool(
        entry.is_dagster_event and entry.dagster_event_type in ASSET_EVENTS and entry.get_dagster_event().asset_key
    )


def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


class _WalAwareWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's watchdog for one run's events, woken by its database or the database's WAL."""

    def __init__(self, event_log_storage: SqliteEventLogStorage, run_id: str, callback: Any, cursor: str | None):
        super().__init__(event_log_storage, run_id, callback, cursor)
        self._paths = {self._log_path, f"{self._log_path}-wal"}
        # PatternMatchingEventHandler matches on these (fnmatch patterns; the paths are literal).
        self._patterns = sorted(self._paths)

    def on_modified(self, event: FileSystemEvent) -> None:
        if event.src_path in self._paths:
            self._process_log()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that keeps its per-shard engines (see the module docstring)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        # Set before the base constructor: it may already connect (index shard creation, reindex).
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        self._engines_lock = threading.Lock()
        self._asset_key_index_cols = False
        os.environ.setdefault(EVENT_BATCH_ENV, str(EVENT_BATCH_SIZE))
        new_home = not os.path.exists(os.path.join(base_dir, f"{INDEX_SHARD_NAME}.db"))
        super().__init__(base_dir, inst_data)
        if new_home:  # build the run-database template with the instance, not in its first run
            with contextlib.suppress(OSError):
                self._shard_template()

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "PooledSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            if self._engines_pid != os.getpid():
                # A forked child must not use its parent's SQLite connections: forget them unclosed.
                for inherited in self._engines.values():
                    inherited.dispose(close=False)
                self._engines.clear()
                self._engines_pid = os.getpid()
            cached = self._engines.get(shard)
            if cached is not None:
                self._engines.move_to_end(shard)
                return cached
            engine = create_engine(
                self.conn_string_for_shard(shard),
                poolclass=QueuePool,
                pool_size=1,
                max_overflow=2,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
            event.listen(engine, "connect", _set_pragmas)
            self._engines[shard] = engine
            while len(self._engines) > MAX_OPEN_SHARDS:
                _, oldest = self._engines.popitem(last=False)
                oldest.dispose()
            return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Asset events (a run's "materialization planned" events, a batch of materializations)
        in one transaction per database, with the rows :meth:`store_event` would write.

        Rows are inserted with ``executemany``; the asset's summary row (last
        materialization, last run) is updated once per asset and event type, with
        the batch's last such event: the state one update per event would leave.
        Dagster hands batches over only when ``DAGSTER_EVENT_BATCH_SIZE`` is set
        (see :data:`EVENT_BATCH_SIZE`).
        """
        # Other events (a run's asset-check "planned" event comes in the same batch) one by one, in order.
        assets: list[EventLogEntry] = []
        for entry in events:
            if _is_asset_event(entry):
                assets.append(entry)
                continue
            if assets:
                self._store_asset_events(assets)
                assets = []
            self.store_event(entry)
        if assets:
            self._store_asset_events(assets)

    def _store_asset_events(self, events: Sequence[EventLogEntry]) -> None:
        rows = [self._event_to_row(entry) for entry in events]
        by_run: dict[str, list[dict[str, Any]]] = {}
        for entry, row in zip(events, rows, strict=True):
            by_run.setdefault(entry.run_id, []).append(row)
        for run_id, run_rows in by_run.items():
            with self.run_connection(run_id) as conn:
                conn.execute(SqlEventLogStorageTable.insert(), run_rows)
        # As with store_event, the run database and the cross-run index are separate files:
        # if this second transaction fails, Dagster falls back to one store_event per event.
        with self.index_transaction() as conn:
            inserted = conn.execute(
                SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True),
                rows,
            )
            event_ids = [int(row[0]) for row in inserted]
            if len(event_ids) != len(events):
                raise DagsterInvariantViolationError(f"stored {len(event_ids)} of {len(events)} asset events")
            self._store_asset_event_tags(conn, events, event_ids)
            latest: dict[tuple[str, Any], tuple[EventLogEntry, int]] = {}
            for entry, event_id in zip(events, event_ids, strict=True):
                dagster_event = entry.get_dagster_event()
                key = (str(dagster_event.asset_key), dagster_event.event_type)
                latest.pop(key, None)  # re-insert: keeps the dict in order of each key's last event
                latest[key] = (entry, event_id)
            for entry, event_id in latest.values():
                self._store_asset_event(conn, entry, event_id)

    def _initdb(self, engine: Engine, for_index_shard: bool = False) -> None:
        path = engine.url.database
        if not for_index_shard and path and not os.path.exists(path) and self._copy_shard_template(path):
            return
        super()._initdb(engine, for_index_shard)

    def _copy_shard_template(self, path: str) -> bool:
        """Start a new run database as a copy of an empty one, instead of building it; True if this
        call created it.

        Building a run database (tables, indexes, alembic stamp) takes longer than
        creating the run itself, mostly alembic loading its scripts: on every run. The
        template (``.run-shard-<alembic head>.sqlite`` beside the run databases,
        not a ``*.db`` so Dagster never takes it for a run) is built that way
        once per Dagster schema version, and copying it is a single file copy. A copy
        made here is at the head revision (the template's name says so), so the
        base class's revision check, which loads every alembic script again,
        is skipped for it. A database another process made first, or
        any failure here, leaves the base class to check or build it as usual.
        """
        part = f"{path}.{os.getpid()}-{threading.get_ident()}.part"
        try:
            shutil.copyfile(self._shard_template(), part)
            os.link(part, path)  # never replaces a database another process made
        except OSError:  # FileExistsError included
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(part)
        return True

    def _shard_template(self) -> str:
        template = os.path.join(self._base_dir, f".run-shard-{_alembic_head()}.sqlite")
        if not os.path.exists(template):
            part = f"{template}.{os.getpid()}-{threading.get_ident()}.part"
            engine = create_engine(f"sqlite:///{part}", poolclass=NullPool)
            try:
                SqliteEventLogStorage._initdb(self, engine)
            finally:
                engine.dispose()
            for leftover in (f"{part}-wal", f"{part}-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
            os.replace(part, template)  # concurrent builders write equivalent templates
        return template

    def _has_asset_key_index_cols_on_connection(self, conn: Connection) -> bool:
        if not self._asset_key_index_cols:
            self._asset_key_index_cols = super()._has_asset_key_index_cols_on_connection(conn)
        return self._asset_key_index_cols

    def watch(self, run_id: str, cursor: str | None, callback: Any) -> None:
        super().watch(run_id, cursor, callback)
        # Swap the base class's watchdog for one that also wakes on the WAL file.
        base_handler, watch = self._watchers[run_id][callback]
        assert self._obs is not None
        self._obs.remove_handler_for_watch(base_handler, watch)
        handler = _WalAwareWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (handler, self._obs.schedule(handler, self._base_dir, recursive=True))

    def dispose(self) -> None:
        super().dispose()
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


class PooledSqliteStorage(DagsterSqliteStorage):
    """``storage: sqlite`` (same folders and files) with :class:`PooledSqliteEventLogStorage`."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        os.makedirs(base_dir, exist_ok=True)
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        DagsterStorage.__init__(self)  # type: ignore[arg-type]  # the base's generic self type

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "PooledSqliteStorage":
        return cls(inst_data=inst_data, **config_value)

    @property
    def event_storage_data(self) -> ConfigurableClassData | None:
        return ConfigurableClassData(
            PooledSqliteEventLogStorage.__module__,
            PooledSqliteEventLogStorage.__name__,
            f"base_dir: {json.dumps(_event_logs_directory(self.base_dir))}\n",
        )
