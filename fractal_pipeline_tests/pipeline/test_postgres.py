"""The pipeline on a Postgres-backed instance.

The server is the one :mod:`fractal_pipeline_tests.pg` finds or starts (a server that answers
where libpq's variables point, else a throwaway cluster of the test session). The storage
section is the one from ``deploy/dagster.yaml``, pointed at a fresh database created for the
test session and dropped at its end. Everything the
production instance keeps — runs, the event log, dynamic partitions, sensor
cursors and ticks, pool limits — is checked with plain SQL in that database.
"""

from __future__ import annotations

import logging
import os
import pwd
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from fractal_pipeline.definitions import build_definitions
from fractal_pipeline.defs.partitions import PARTITIONS_NAME, spec_partitions

from ..conftest import failure_message, materialize_collage, materialize_images, materialize_specs
from ..pg import PgServer

pytestmark = pytest.mark.postgres

DEPLOY_YAML = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"
SENSOR_NAME = "count_ticks"


@dataclass(frozen=True)
class Database:
    """The session's database on the test server."""

    server: PgServer
    name: str

    def query(self, sql: str, *params: Any, dbname: str | None = None) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` in this database (or in ``dbname`` on the same server)."""
        with self.server.connect(dbname or self.name) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        connection.close()
        return rows


@pytest.fixture(scope="session")
def postgres_database(postgres_server: PgServer) -> Iterator[Database]:
    """A fresh database on the test server for this test session, dropped at its end."""
    name = f"fractal_test_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.connect()
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Database(postgres_server, name)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def pg_env(postgres_database: Database, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The DAGSTER_PG_* variables deploy/dagster.yaml reads, for the session's database."""
    server = postgres_database.server
    env = {
        "DAGSTER_PG_HOST": server.host,
        "DAGSTER_PG_PORT": str(server.port),
        "DAGSTER_PG_DB": postgres_database.name,
        "DAGSTER_PG_USERNAME": server.user,
        "DAGSTER_PG_PASSWORD": server.password,
        # As deploy/template.yaml sets it: materializations reach Postgres in batches.
        "DAGSTER_EVENT_BATCH_SIZE": "1000",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def deploy_config(*sections: str) -> dict[str, Any]:
    """Sections of deploy/dagster.yaml."""
    config = yaml.safe_load(DEPLOY_YAML.read_text())
    return {section: config[section] for section in sections}


SENSOR_KEY = "dragon_3-64px"


@dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def count_ticks(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Registers one spec partition and counts its own ticks in its cursor."""
    return dg.SensorResult(
        dynamic_partitions_requests=[spec_partitions.build_add_request([SENSOR_KEY])],
        cursor=str(int(context.cursor or 0) + 1),
    )


sensor_defs = dg.Definitions(sensors=[count_ticks])


def _sensor_tick(instance: dg.DagsterInstance) -> None:
    """One sensor daemon iteration over a code location holding ``count_ticks``."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._daemon.sensor import execute_sensor_iteration

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=__name__, attribute="sensor_defs", working_directory=os.getcwd())
    )
    with WorkspaceProcessContext(instance, InProcessTestWorkspaceLoadTarget(origin)) as context:
        list(execute_sensor_iteration(context, logging.getLogger("sensor-daemon"), None, None))


def test_pipeline_state_lives_in_postgres(pg_env: dict[str, str], local_env: Path, postgres_database: Database) -> None:
    overrides = deploy_config("storage", "concurrency")
    with dg.instance_for_test(overrides=overrides) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        defs = build_definitions("local")
        specs = materialize_specs(defs, instance, count=4, seed=17, size=64)
        assert specs.success, failure_message(specs)
        keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
        images = materialize_images(defs, instance, keys[0], keys[-1])
        assert images.success, failure_message(images)
        collage = materialize_collage(defs, instance)
        assert collage.success, failure_message(collage)
        _sensor_tick(instance)

    run_ids = [specs.run_id, images.run_id, collage.run_id]
    query = postgres_database.query
    stored_runs = dict(query("SELECT run_id, status FROM runs WHERE run_id = ANY(%s)", run_ids))
    assert stored_runs == dict.fromkeys(run_ids, "SUCCESS")
    partitions = query(
        "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s ORDER BY id", PARTITIONS_NAME
    )
    assert [row[0] for row in partitions] == [*keys, SENSOR_KEY]  # the pipeline's, then the one the sensor added
    materialized = query(
        "SELECT partition FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION' "
        "AND asset_key = %s",
        images.run_id,
        dg.AssetKey("fractal_images").to_string(),
    )
    assert sorted(row[0] for row in materialized) == sorted(keys)  # one event per partition, in Postgres
    (events,) = query("SELECT count(*) FROM event_logs WHERE run_id = ANY(%s)", run_ids)
    assert events[0] > 20
    assets = {row[0] for row in query("SELECT asset_key FROM asset_keys")}
    assert {dg.AssetKey(name).to_string() for name in ("fractal_specs", "fractal_images", "fractal_collage")} <= assets

    # the sensor daemon stored its cursor and its tick there too
    bodies = [row[0] for row in query("SELECT job_body FROM jobs WHERE job_type = 'SENSOR'")]
    states = [dg.deserialize_value(body) for body in bodies]
    ours = [s for s in states if s.instigator_name == SENSOR_NAME]
    assert len(ours) == 1 and ours[0].instigator_data.cursor == "1"
    ticks = query("SELECT status FROM job_ticks WHERE selector_id = %s", ours[0].selector_id)
    assert ticks == [("SKIPPED",)]  # one tick; it requested partitions, not runs

    # fractal_images ran in pool "lambda_render", limited to deploy/dagster.yaml's default of 4 slots, all free again
    assert query('SELECT concurrency_key, "limit" FROM concurrency_limits') == [("lambda_render", 4)]
    slots = query("SELECT run_id FROM concurrency_slots WHERE concurrency_key = %s AND NOT deleted", "lambda_render")
    assert slots == [(None,)] * 4


@pytest.mark.reliability(
    "database fault",
    "pg_terminate_backend on the run's connection while it writes its materializations (the first batches "
    "of a 40-partition run, each a known point): the run ends cleanly and the instance stays usable",
)
def test_postgres_connections_killed_mid_run(
    pg_env: dict[str, str], local_env: Path, postgres_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from fractal_pipeline.instance.events import MaterializationBatcher

    overrides = deploy_config("storage", "concurrency")
    with dg.instance_for_test(overrides=overrides) as instance:
        defs = build_definitions("local")
        assert materialize_specs(defs, instance, count=40, seed=23, size=2048, palette=None).success
        keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))[-40:]
        killed: list[int] = []
        killers: list[threading.Thread] = []
        flush = MaterializationBatcher.flush

        def kill_the_waiting_writer(lock: Any, lock_pid: int) -> None:
            """Terminate the backends that wait for the locked table (the run's, writing its events), then unlock."""
            try:
                for _ in range(1200):  # the writer comes as soon as the step records this batch
                    rows = postgres_database.query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> %s AND wait_event_type = 'Lock'",
                        postgres_database.name,
                        lock_pid,
                        dbname="postgres",
                    )
                    if rows:
                        killed.append(sum(1 for (ok,) in rows if ok))
                        return
                    threading.Event().wait(0.05)
            finally:
                lock.rollback()  # the table is free again: the run's next connection goes on
                lock.close()

        def flush_into_a_killed_connection(self: MaterializationBatcher) -> list[dg.DagsterEvent]:
            # The known point: this batch's events are about to be written. The event table is locked
            # first, so the run's connection is open and waiting on it when it is terminated.
            if self._pending and len(killers) < 3:
                lock = postgres_database.server.connect(postgres_database.name)
                with lock.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    (lock_pid,) = cursor.fetchone()
                    cursor.execute("LOCK TABLE event_logs IN ACCESS EXCLUSIVE MODE")
                killer = threading.Thread(target=kill_the_waiting_writer, args=(lock, lock_pid), daemon=True)
                killer.start()
                killers.append(killer)
            return flush(self)

        monkeypatch.setattr(MaterializationBatcher, "flush", flush_into_a_killed_connection)
        try:
            result = materialize_images(defs, instance, keys[0], keys[-1])
        except Exception as exc:  # the run may fail; it must say so, not hang or corrupt
            result = None
            assert str(exc)
        finally:
            monkeypatch.undo()
            for killer in killers:
                killer.join(60)
        # Every known point (the run's batches of materializations, up to 3) terminated the writing connection.
        assert killed and len(killed) == len(killers) and all(killed), f"connections terminated: {killed}"
        if result is not None and not result.success:
            assert failure_message(result)
        # The instance is still usable, and every partition it calls materialised has its PNG.
        # (the session's database is shared with the other Postgres test: look at this run's keys only)
        materialized = instance.get_materialized_partitions(dg.AssetKey("fractal_images")) & set(keys)
        for key in materialized:
            assert (local_env / "fractals" / f"{key}.png").is_file()
        missing = [k for k in keys if k not in materialized]
        if missing:
            again = materialize_images(defs, instance, missing[0], missing[-1])
            assert again.success, failure_message(again)
        assert set(keys) <= instance.get_materialized_partitions(dg.AssetKey("fractal_images"))
        assert instance.get_runs()


def test_a_throwaway_cluster_when_no_server_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a machine without a running server gets: the fixture's second path, as the postgres OS user."""
    from ..pg import answering_server, find_pg_ctl, throwaway_cluster

    monkeypatch.setenv("PGPORT", "1")  # nothing answers there
    assert answering_server() is None
    pg_ctl = find_pg_ctl()
    assert pg_ctl is not None, "the PostgreSQL server binaries are needed: apt-get install postgresql"
    with throwaway_cluster(pg_ctl) as server:
        assert server.origin == "throwaway" and server.port != 5432
        with server.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            assert cursor.fetchone() == (True,)
        connection.close()
        folder = Path(server.folder)
        assert (folder / "data" / "PG_VERSION").is_file()
        if os.geteuid() == 0:
            assert (folder / "data").stat().st_uid == pwd.getpwnam("postgres").pw_uid  # initdb ran as postgres
    assert not folder.exists()  # removed afterwards
