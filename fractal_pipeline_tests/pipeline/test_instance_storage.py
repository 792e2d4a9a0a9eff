"""The embedded instance (fractal_pipeline/instance/): pooled SQLite event log, batched writes.

What must hold: it is Dagster's SQLite storage with the same files (an
instance can switch to plain ``storage: sqlite`` and back and see the same
history), batched writes leave exactly the rows one write per event would,
live watching still sees new events, forked children don't share its
connections, and the CLI writes it into a new DAGSTER_HOME.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.sqlite import sqlite_event_log as sqlite_event_log_module
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.test_utils import create_run_for_test

from fractal_pipeline.definitions import build_definitions
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.instance.compute_logs import ThreadMirroredComputeLogManager
from fractal_pipeline.instance.home import LEGACY_DAGSTER_YAML, ensure_dagster_home, instance_yaml
from fractal_pipeline.instance.storage import MAX_OPEN_SHARDS, PooledSqliteEventLogStorage, PooledSqliteStorage

from ..conftest import materialize_images

IMAGES = dg.AssetKey("fractal_images")
QUIET_YAML = "telemetry:\n  enabled: false\n"


def make_home(path: Path, pooled: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text((instance_yaml(path) if pooled else "") + QUIET_YAML)
    return path


def open_instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def materialization(run_id: str, partition: str, value: int, timestamp: float) -> EventLogEntry:
    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name="job",
        event_specific_data=StepMaterializationData(
            dg.AssetMaterialization(asset_key=IMAGES, partition=partition, metadata={"value": value})
        ),
    )
    return EventLogEntry(
        error_info=None,
        level="INFO",
        user_message="",
        run_id=run_id,
        timestamp=timestamp,
        step_key="step",
        job_name="job",
        dagster_event=event,
    )


def run_partitions(
    instance: dg.DagsterInstance, run_id: str, of_type: DagsterEventType = DagsterEventType.ASSET_MATERIALIZATION
) -> list[str]:
    """The partition of every event of ``of_type`` in the run, in order (one entry per event)."""
    records = instance.get_records_for_run(run_id, of_type=of_type, limit=100_000).records
    return [record.event_log_entry.dagster_event.partition for record in records]


def event_rows(path: Path) -> list[tuple[str, str | None, str | None]]:
    """(event type, asset key, partition) of every row of a SQLite event table, in insertion order."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT dagster_event_type, asset_key, partition FROM event_logs ORDER BY id"
        ).fetchall()
    connection.close()
    return rows


def test_new_home_uses_pooled_storage_and_plain_sqlite_reads_the_same_history(tmp_path: Path, local_env: Path) -> None:
    home = make_home(tmp_path / "home")
    defs = build_definitions("local")
    keys = ["dragon_3-64px", "levy_c_3-64px", "koch_snowflake_2-64px"]
    with open_instance(home) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        instance.add_dynamic_partitions(PARTITIONS_NAME, keys)
        result = materialize_images(defs, instance, keys[0], keys[-1])
        assert result.success
        run_id = result.run_id
    # Same folder, Dagster's stock storage: the same runs, events and partitions.
    (home / "dagster.yaml").write_text(QUIET_YAML)
    with open_instance(home) as instance:
        assert type(instance.event_log_storage) is SqliteEventLogStorage
        assert instance.get_run_by_id(run_id).is_success
        assert instance.get_materialized_partitions(IMAGES) == set(keys)
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == keys
        more = materialize_images(defs, instance, keys[0], keys[0])
        assert more.success
    # And back.
    make_home(home)
    with open_instance(home) as instance:
        assert len(instance.get_runs()) == 2
        records = instance.fetch_materializations(IMAGES, limit=10).records
        assert len(records) == 4
        assert {record.partition_key for record in records} == set(keys)


def test_a_home_written_by_an_earlier_version_names_the_old_class_paths_and_still_loads(
    tmp_path: Path, local_env: Path
) -> None:
    home = make_home(tmp_path / "home")
    yaml = (home / "dagster.yaml").read_text()
    assert "module: fractal_pipeline.instance." in yaml  # what a new home names
    old = yaml.replace("fractal_pipeline.instance.storage", "fractal_pipeline.instance_storage")
    old = old.replace("fractal_pipeline.instance.compute_logs", "fractal_pipeline.instance_storage")
    assert old.count("module: fractal_pipeline.instance_storage") == 2
    (home / "dagster.yaml").write_text(old)
    keys = ["dragon_3-64px", "levy_c_3-64px"]
    with open_instance(home) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        assert isinstance(instance.compute_log_manager, ThreadMirroredComputeLogManager)
        instance.add_dynamic_partitions(PARTITIONS_NAME, keys)
        assert materialize_images(build_definitions("local"), instance, keys[0], keys[-1]).success
        assert instance.get_materialized_partitions(IMAGES) == set(keys)


def test_batched_materializations_leave_the_rows_single_writes_leave(tmp_path: Path) -> None:
    """store_event_batch vs one store_event per event, on two homes: same rows, same asset state."""
    runs: dict[str, str] = {}
    states = {}
    for name, batched in (("single", False), ("batched", True)):
        home = make_home(tmp_path / name)
        with open_instance(home) as instance:
            run = create_run_for_test(instance, job_name="job")
            runs[name] = run.run_id
            start = 1_700_000_000.0
            entries = [materialization(run.run_id, f"p{i % 7}", i, start + i) for i in range(40)]
            storage = instance.event_log_storage
            assert isinstance(storage, PooledSqliteEventLogStorage)
            if batched:
                storage.store_event_batch(entries[:25])
                storage.store_event_batch(entries[25:])
            else:
                for entry in entries:
                    storage.store_event(entry)
            asset_record = instance.get_asset_records([IMAGES])[0].asset_entry
            last = asset_record.last_materialization_record
            states[name] = {
                "materialized": instance.get_materialized_partitions(IMAGES),
                "count": len(instance.fetch_materializations(IMAGES, limit=100).records),
                "last_value": last.asset_materialization.metadata["value"].value if last else None,
                "last_run": asset_record.last_run_id,
                "per_partition_last": {
                    record.partition_key: record.asset_materialization.metadata["value"].value
                    for record in instance.fetch_materializations(IMAGES, limit=100, ascending=True).records
                },
            }
            rows_run = event_rows(home / "history" / "runs" / f"{run.run_id}.db")
            rows_index = [row for row in event_rows(home / "history" / "runs" / "index.db") if row[1]]
            states[name]["rows_run"] = [row for row in rows_run if row[0] == "ASSET_MATERIALIZATION"]
            states[name]["rows_index"] = [row for row in rows_index if row[0] == "ASSET_MATERIALIZATION"]
    single, batched = states["single"], states["batched"]
    assert single.pop("last_run") == runs["single"] and batched.pop("last_run") == runs["batched"]
    assert batched == single
    assert single["count"] == 40 and single["last_value"] == 39
    assert single["materialized"] == {f"p{i}" for i in range(7)}
    assert single["per_partition_last"] == {f"p{i}": max(v for v in range(40) if v % 7 == i) for i in range(7)}


def test_a_run_records_one_materialization_per_partition_with_its_own_metadata(tmp_path: Path, local_env: Path) -> None:
    home = make_home(tmp_path / "home")
    keys = [f"dragon_{depth}-64px" for depth in range(1, 13)]
    with open_instance(home) as instance:
        instance.add_dynamic_partitions(PARTITIONS_NAME, keys)
        result = materialize_images(build_definitions("local"), instance, keys[0], keys[-1])
        assert result.success
        assert sorted(run_partitions(instance, result.run_id)) == sorted(keys)  # exactly one each
        records = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
        for record in records:
            metadata = record.asset_materialization.metadata
            key = record.event_log_entry.dagster_event.partition
            assert Path(metadata["location"].value) == local_env / "fractals" / f"{key}.png"
            assert metadata["bytes"].value == (local_env / "fractals" / f"{key}.png").stat().st_size
            assert metadata["thumbnail"].value.startswith(f"![{key}](data:image/png;base64,")
        # The planned events were batched too: one per partition, as with single writes.
        planned = run_partitions(instance, result.run_id, DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
        assert sorted(planned) == sorted(keys)
        # New run databases start as a copy of the template; it is never taken for a run.
        templates = list((home / "history" / "runs").glob(".run-shard-*.sqlite"))
        assert len(templates) == 1
        assert result.run_id in instance.event_log_storage.get_all_run_ids()
        assert all(not run_id.startswith(".") for run_id in instance.event_log_storage.get_all_run_ids())


def test_run_databases_copied_from_the_template_skip_the_revision_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run database made from the head-revision template is not checked again (alembic reloads
    every script for that); one another writer made first still is."""
    home = make_home(tmp_path / "home")
    checks: list[str] = []
    real_check = sqlite_event_log_module.check_alembic_revision

    def counting_check(config: Any, connection: Any) -> Any:
        checks.append(str(connection.engine.url.database))
        return real_check(config, connection)

    monkeypatch.setattr(sqlite_event_log_module, "check_alembic_revision", counting_check)
    with open_instance(home) as instance:
        storage = instance.event_log_storage
        first = create_run_for_test(instance, job_name="job")
        storage.store_event(materialization(first.run_id, "p0", 0, time.time()))  # builds the template
        checks.clear()
        runs = [create_run_for_test(instance, job_name="job") for _ in range(3)]
        for index, run in enumerate(runs):
            storage.store_event(materialization(run.run_id, f"p{index}", index, time.time()))
            assert run_partitions(instance, run.run_id) == [f"p{index}"]
        assert not any(run.run_id in path for path in checks for run in runs), checks
        # A database that already exists (another process made it) is checked as before.
        late = create_run_for_test(instance, job_name="job")
        shutil.copyfile(
            home / "history" / "runs" / f"{first.run_id}.db", home / "history" / "runs" / f"{late.run_id}.db"
        )
        storage.store_event(materialization(late.run_id, "p9", 9, time.time()))
        assert any(late.run_id in path for path in checks), checks


def test_live_watch_sees_events_written_through_pooled_connections(tmp_path: Path) -> None:
    """The UI's run page watches the run's database file; pooled writers only touch its -wal."""
    home = make_home(tmp_path / "home")
    with open_instance(home) as reader, open_instance(home) as writer:
        run = create_run_for_test(writer, job_name="job")
        writer.event_log_storage.store_event(materialization(run.run_id, "p0", 0, time.time()))  # db exists
        seen: list[str] = []
        arrived = threading.Event()

        def callback(entry: EventLogEntry, cursor: str) -> None:
            seen.append(entry.dagster_event.partition)
            if len(seen) >= 3:
                arrived.set()

        reader.watch_event_logs(run.run_id, None, callback)
        try:
            for i in range(1, 4):
                writer.event_log_storage.store_event(materialization(run.run_id, f"p{i}", i, time.time()))
                time.sleep(0.05)
            assert arrived.wait(10), f"watch saw only {seen}"
        finally:
            reader.end_watch_event_logs(run.run_id, callback)
        assert seen[-3:] == ["p1", "p2", "p3"] or {"p1", "p2", "p3"} <= set(seen)


def test_forked_child_opens_its_own_connections(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    with open_instance(home) as instance:
        run = create_run_for_test(instance, job_name="job")
        storage = instance.event_log_storage
        storage.store_event(materialization(run.run_id, "parent-0", 0, time.time()))
        pid = os.fork()
        if pid == 0:  # the child: write through the inherited storage object, then leave at once
            code = 0
            try:
                storage.store_event(materialization(run.run_id, "child", 1, time.time()))
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        storage.store_event(materialization(run.run_id, "parent-1", 2, time.time()))
        partitions = [
            record.event_log_entry.dagster_event.partition
            for record in instance.get_records_for_run(
                run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION, limit=10
            ).records
        ]
        assert partitions == ["parent-0", "child", "parent-1"]


def test_open_databases_are_capped(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    with open_instance(home) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, PooledSqliteEventLogStorage)
        run_ids = []
        for i in range(MAX_OPEN_SHARDS + 5):
            run = create_run_for_test(instance, job_name="job")
            run_ids.append(run.run_id)
            storage.store_event(materialization(run.run_id, f"p{i}", i, time.time()))
        assert len(storage._engines) <= MAX_OPEN_SHARDS  # the cap is the point
        # Every run's events are still readable (closed engines are reopened on demand).
        for i, run_id in enumerate(run_ids):
            records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
            assert [record.event_log_entry.dagster_event.partition for record in records] == [f"p{i}"]


def test_cli_writes_the_pooled_storage_into_a_new_home_and_upgrades_the_old_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("DAGSTER_HOME", str(fresh))
    assert ensure_dagster_home() == fresh.resolve()
    assert "PooledSqliteStorage" in (fresh / "dagster.yaml").read_text()
    with open_instance(fresh) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        assert instance.get_ref().storage_data.class_name == PooledSqliteStorage.__name__

    old = tmp_path / "old"
    old.mkdir()
    (old / "dagster.yaml").write_text(LEGACY_DAGSTER_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(old))
    ensure_dagster_home()
    assert "PooledSqliteStorage" in (old / "dagster.yaml").read_text()

    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "dagster.yaml").write_text("storage:\n  sqlite:\n    base_dir: /somewhere\n")
    monkeypatch.setenv("DAGSTER_HOME", str(custom))
    ensure_dagster_home()
    assert (custom / "dagster.yaml").read_text() == "storage:\n  sqlite:\n    base_dir: /somewhere\n"


@pytest.mark.reliability(
    "load",
    "10,000 registered partitions, one batched run of 1,000 (the CLI's instance): every partition "
    "materialised exactly once with its file; listing, health query and collage see all of them",
)
def test_ten_thousand_partitions_and_a_thousand_partition_run(tmp_path: Path, local_env: Path) -> None:
    from fractal_pipeline.fractals import random_specs

    from ..conftest import materialize_collage

    keys: list[str] = []
    size = 16
    while len(keys) < 10_000:  # 500 distinct specs per size: 16 px, 17 px, ...
        keys += [spec.key for spec in random_specs(min(500, 10_000 - len(keys)), seed=size, palette=None, size=size)]
        size += 1
    assert len(set(keys)) == 10_000
    home = make_home(tmp_path / "home")
    defs = build_definitions("local")
    rendered = keys[:1000]
    with open_instance(home) as instance:
        instance.add_dynamic_partitions(PARTITIONS_NAME, keys)
        result = materialize_images(defs, instance, rendered[0], rendered[-1])
        assert result.success
        assert sorted(run_partitions(instance, result.run_id)) == sorted(rendered)  # exactly once each
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == keys
        assert instance.get_materialized_partitions(IMAGES) == set(rendered)
        stored = {path.name for path in (local_env / "fractals").glob("*.png")}
        assert stored == {f"{key}.png" for key in rendered}
        collage = materialize_collage(defs, instance)
        assert collage.success
        metadata = collage.asset_materializations_for_node("fractal_collage")[0].metadata
        assert metadata["tiles"].value == 1000
        assert metadata["missing"].value == 9000


MIRROR_SCRIPT = """
import os, subprocess, sys
from dagster._core.storage.compute_log_manager import ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION
from fractal_pipeline.instance.compute_logs import ThreadMirroredComputeLogManager

manager = ThreadMirroredComputeLogManager(sys.argv[1])
key = ["run", "fractal_images"]
print("before", flush=True)
with manager.capture_logs(key):
    print("from python", flush=True)
    os.write(1, b"from the descriptor\\n")
    subprocess.run(["echo", "from a child process"], check=True)
    print("to stderr", file=sys.stderr, flush=True)
print("after", flush=True)
print(manager.get_captured_local_path(key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT]))
print(manager.get_captured_local_path(key, IO_TYPE_EXTENSION[ComputeIOType.STDERR]))
print(manager.is_capture_complete(key))
"""


def test_captured_step_output_is_in_its_files_and_mirrored_to_the_console_without_tail(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", MIRROR_SCRIPT, str(tmp_path / "storage")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # the console (this test's pipe) still sees everything, in order, the child process's output too
    assert lines[:5] == ["before", "from python", "from the descriptor", "from a child process", "after"], lines
    assert "to stderr" in result.stderr
    out_path, err_path, complete = lines[5:8]
    assert Path(out_path).read_text().splitlines() == ["from python", "from the descriptor", "from a child process"]
    assert Path(err_path).read_text() == "to stderr\n"
    assert complete == "True"


def test_the_cli_home_captures_step_output_with_the_thread_mirror(tmp_path: Path) -> None:
    with open_instance(make_home(tmp_path / "home")) as instance:
        assert isinstance(instance.compute_log_manager, ThreadMirroredComputeLogManager)
        assert instance.compute_log_manager._base_dir == str(tmp_path / "home" / "storage")  # Dagster's default place
