"""Faults: dead workers and storage outages lose nothing and store nothing half-written."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from fractal_pipeline.definitions import build_definitions
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.fractals import FractalSpec, random_specs, render_png, spec_of_png
from fractal_pipeline.store import StoreConfig
from fractal_pipeline.workers.pool import render_many
from fractal_pipeline.workers.results import RenderFailure, RenderResult

from ..conftest import failure_message, materialize_images, render_workers, s3_client

IMAGES = dg.AssetKey("fractal_images")


def _spawned_workers() -> list[psutil.Process]:
    """The render workers this test process started."""
    return render_workers(psutil.Process().children(recursive=True))


def _kill_one_worker_when(condition: callable, timeout: float = 60) -> threading.Thread:  # type: ignore[valid-type]
    def killer() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():  # type: ignore[operator]
                workers = _spawned_workers()
                if workers:
                    os.kill(workers[0].pid, signal.SIGKILL)
                    killed.append(workers[0].pid)
                    return
            time.sleep(0.02)

    killed: list[int] = []
    thread = threading.Thread(target=killer, daemon=True)
    thread.killed = killed  # type: ignore[attr-defined]
    thread.start()
    return thread


def _assert_complete_pngs(folder: Path) -> list[str]:
    keys = []
    for path in sorted(folder.glob("*.png")):
        data = path.read_bytes()
        spec = spec_of_png(data)
        assert spec is not None and f"{spec.key}.png" == path.name, path
        assert data == render_png(spec)
        keys.append(spec.key)
    return keys


@pytest.mark.reliability(
    "worker fault", "SIGKILL one of 2 render workers mid-batch (30 specs, 512 px): its specs retried by a new worker"
)
def test_a_killed_worker_loses_nothing(tmp_path: Path) -> None:
    specs = random_specs(30, seed=12, palette=None, size=512)
    outcomes: list[RenderResult | RenderFailure] = []
    killer = _kill_one_worker_when(lambda: len(outcomes) >= 3)
    for outcome in render_many([s.key for s in specs], StoreConfig(local_dir=str(tmp_path)), workers=2):
        outcomes.append(outcome)
    killer.join(5)
    assert killer.killed, "no worker was killed"  # type: ignore[attr-defined]
    assert not [o for o in outcomes if isinstance(o, RenderFailure)]
    assert sorted(o.key for o in outcomes) == sorted(s.key for s in specs)  # each exactly once
    assert sorted(_assert_complete_pngs(tmp_path / "fractals")) == sorted(s.key for s in specs)
    _, alive = psutil.wait_procs(_spawned_workers(), timeout=5)  # done: the workers exit by themselves
    assert not alive


@pytest.mark.reliability(
    "worker fault", "SIGKILL a worker during a fractal_images run (24 partitions): every partition materialised once"
)
def test_a_killed_worker_during_a_run_still_materialises_every_partition_once(
    local_env: Path, instance: dg.DagsterInstance
) -> None:
    specs = random_specs(24, seed=21, palette=None, size=512)
    keys = [s.key for s in specs]
    instance.add_dynamic_partitions(PARTITIONS_NAME, keys)
    folder = local_env / "fractals"
    killer = _kill_one_worker_when(lambda: folder.is_dir() and len(list(folder.glob("*.png"))) >= 2)
    result = materialize_images(build_definitions("local"), instance, keys[0], keys[-1])
    killer.join(5)
    assert killer.killed  # type: ignore[attr-defined]
    assert result.success, failure_message(result)
    mats = result.asset_materializations_for_node("fractal_images")
    assert sorted(m.partition for m in mats) == sorted(keys)
    assert instance.get_materialized_partitions(IMAGES) == set(keys)
    assert sorted(_assert_complete_pngs(folder)) == sorted(keys)


@pytest.mark.reliability(
    "storage outage",
    "S3 server stopped for 3 s in a 200-partition run: completes or fails in one line; re-run fills the gaps",
)
@pytest.mark.s3
def test_s3_outage_mid_run_completes_or_fails_cleanly_and_rerun_fills_the_gaps(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our own moto server on a fixed port, so that it can be stopped and started again mid-run
    # (moto keeps its state in-process: the bucket and the objects survive the restart).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket = "outage-test"
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "FRACTALS_BUCKET": bucket,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FRACTAL_DEPLOYMENT", raising=False)
    client = s3_client(endpoint)
    client.create_bucket(Bucket=bucket)
    specs = random_specs(200, seed=5, palette=None, size=64)
    keys = [s.key for s in specs]
    instance.add_dynamic_partitions(PARTITIONS_NAME, keys)

    def stored() -> int:
        try:
            return client.list_objects_v2(Bucket=bucket, Prefix="fractals/").get("KeyCount", 0)
        except Exception:
            return 0

    def outage() -> None:
        deadline = time.monotonic() + 120
        while stored() < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.stop()
        time.sleep(3)
        restarted = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        restarted.start()
        servers.append(restarted)

    servers: list[ThreadedMotoServer] = []
    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    defs = build_definitions()
    try:
        first = materialize_images(defs, instance, keys[0], keys[-1])
        thread.join(30)
        assert servers, "the outage did not happen"
        if not first.success:
            assert "\n" not in failure_message(first).strip()
        # Whatever happened, every stored object is a complete PNG whose key matches its content.
        listed = [
            o["Key"]
            for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in p.get("Contents", [])
        ]
        for key in listed:
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            spec = spec_of_png(data)
            assert spec is not None and key == f"fractals/{spec.key}.png"
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        materialized = instance.get_materialized_partitions(IMAGES)
        assert {f"fractals/{k}.png" for k in materialized} <= set(listed)  # never marked without its object
        # A re-run over the missing partitions materialises exactly those.
        missing = [k for k in keys if k not in materialized]
        if missing:
            order = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
            for key in missing:
                again = materialize_images(defs, instance, key, key, workers=1)
                assert again.success, failure_message(again)
            assert order == list(instance.get_dynamic_partitions(PARTITIONS_NAME))
        assert instance.get_materialized_partitions(IMAGES) == set(keys)
        assert sorted(FractalSpec.from_key(k).key for k in keys) == sorted(
            o["Key"][len("fractals/") : -len(".png")]
            for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="fractals/")
            for o in p.get("Contents", [])
        )
    finally:
        for running in servers:
            running.stop()
