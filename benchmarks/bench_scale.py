"""10,000 spec partitions end to end: throughput, Dagster overhead, listing and UI query latency, collage memory.

    python benchmarks/bench_scale.py                 # 10,000 partitions at ~256 px (several minutes)
    python benchmarks/bench_scale.py --count 1000    # a shorter run
    python benchmarks/bench_scale.py --postgres postgresql://postgres@127.0.0.1:5432/postgres

Baseline in the same run: pure render_png time of a sample of the same specs in
one process, scaled to the whole set and divided by the workers; the Dagster
overhead per partition is (wall - that ideal) / partitions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dagster as dg
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from fractal_pipeline.definitions import build_definitions
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.fractals import FractalSpec, random_specs, render_png
from fractal_pipeline.instance.home import instance_yaml

REPO = Path(__file__).resolve().parents[1]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
IMAGES = dg.AssetKey("fractal_images")

HEALTH_QUERY = """
query PartitionHealth($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      partitionKeysByDimension { name partitionKeys }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions materializingPartitions }
      }
    }
  }
}
"""

COLLAGE_CHILD = """
import resource, sys, time
import dagster as dg
from dagster._core.instance.ref import InstanceRef
from fractal_pipeline.definitions import build_definitions
job = build_definitions("local").resolve_implicit_global_asset_job_def()
with dg.DagsterInstance.from_ref(InstanceRef.from_dir(sys.argv[1])) as instance:
    started = time.perf_counter()
    result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("fractal_collage")],
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
    elapsed = time.perf_counter() - started
    meta = result.asset_materializations_for_node("fractal_collage")[0].metadata
print(meta["tiles"].value, meta["size"].value, elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def distinct_specs(count: int, size: int) -> list[FractalSpec]:
    """``count`` distinct specs around ``size`` px: 500 per size, sizes size, size+1, ..."""
    specs: list[FractalSpec] = []
    offset = 0
    while len(specs) < count:
        specs += random_specs(min(500, count - len(specs)), seed=offset, palette=None, size=size + offset)
        offset += 1
    return specs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def graphql_seconds(home: Path, env: dict[str, str]) -> tuple[float, int]:
    """Start dagster-webserver on a free port and time the partition-health query the asset page makes."""
    port = free_port()
    server = subprocess.Popen(
        [Path(sys.executable).parent / "dagster-webserver", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        body = json.dumps({"query": HEALTH_QUERY, "variables": {"assetKey": {"path": ["fractal_images"]}}}).encode()

        def query() -> dict:  # type: ignore[type-arg]
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
            )
            return json.loads(urllib.request.urlopen(request, timeout=120).read())  # type: ignore[no-any-return]

        query()  # warm-up: code location loaded
        seconds = timed(query)
        node = query()["data"]["assetNodeOrError"]
        keys = len(node["partitionKeysByDimension"][0]["partitionKeys"])
        return seconds, keys
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--per-run", type=int, default=2_500, help="partitions per batched run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--postgres", help="Postgres URL for instance storage (default: SQLite in a temp dir)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    home = tmp / "home"
    home.mkdir()
    config = "telemetry:\n  enabled: false\n"
    if args.postgres:  # as deploy/: stock Postgres storage, materializations written in batches
        config += f"storage:\n  postgres:\n    postgres_url: {args.postgres}\n"
        os.environ["DAGSTER_EVENT_BATCH_SIZE"] = "1000"
    else:  # as `fractal-pipeline run` sets up a new DAGSTER_HOME
        config += instance_yaml(home)
    (home / "dagster.yaml").write_text(config)
    env = {**os.environ, "DAGSTER_HOME": str(home), "FRACTALS_DIR": str(tmp / "fractals")}
    env.pop("FRACTALS_BUCKET", None)
    os.environ.update({"DAGSTER_HOME": env["DAGSTER_HOME"], "FRACTALS_DIR": env["FRACTALS_DIR"]})
    os.environ.pop("FRACTALS_BUCKET", None)

    specs = distinct_specs(args.count, args.size)
    keys = [spec.key for spec in specs]
    print(f"# bench_scale: {len(keys):,} partitions at ~{args.size} px, {args.workers} workers, "
          f"{'Postgres' if args.postgres else 'SQLite'} instance, {os.cpu_count()} CPUs\n")  # fmt: skip

    sample = random.Random(1).sample(specs, min(400, len(specs)))
    sample_s = timed(lambda: [render_png(s) for s in sample], repeat=1)
    ideal = sample_s / len(sample) * len(specs) / args.workers

    rows: list[tuple[str, str]] = []
    goals: list[tuple[str, str, str, bool]] = []
    job = build_definitions("local").resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        started = time.perf_counter()
        instance.add_dynamic_partitions(PARTITIONS_NAME, keys)
        rows.append(("register partitions", f"{time.perf_counter() - started:.2f} s"))
        started = time.perf_counter()
        runs = 0
        for first in range(0, len(keys), args.per_run):
            block = keys[first : first + args.per_run]
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[IMAGES],
                tags={ASSET_PARTITION_RANGE_START_TAG: block[0], ASSET_PARTITION_RANGE_END_TAG: block[-1]},
                run_config={**QUIET, "ops": {"fractal_images": {"config": {"workers": args.workers}}}},
            )
            assert result.success
            runs += 1
            done = first + len(block)
            print(f"  {done:,}/{len(keys):,} after {time.perf_counter() - started:.0f} s", flush=True)
        wall = time.perf_counter() - started
        rate = len(keys) / wall
        overhead_ms = (wall - ideal) / len(keys) * 1000
        rows.append((f"materialise in {runs} batched runs", f"{wall:.1f} s"))
        rows.append(("ideal (pure render / workers)", f"{ideal:.1f} s"))
        goals.append(("end-to-end throughput", ">= 40 partitions/s", f"{rate:.1f}/s", rate >= 40))
        goals.append(("Dagster overhead per partition", "<= 5 ms", f"{overhead_ms:.1f} ms", overhead_ms <= 5))

        listing = timed(lambda: instance.get_dynamic_partitions(PARTITIONS_NAME))
        materialized = timed(lambda: instance.get_materialized_partitions(IMAGES))
        assert len(instance.get_materialized_partitions(IMAGES)) == len(keys)
    goals.append(("partition listing (get_dynamic_partitions)", "<= 2 s", f"{listing:.3f} s", listing <= 2))
    goals.append(("materialised partitions (health)", "<= 2 s", f"{materialized:.3f} s", materialized <= 2))

    runs_cli = timed(
        lambda: subprocess.run(
            [Path(sys.executable).parent / "fractal-pipeline", "runs", "--limit", "20"],
            env=env,
            check=True,
            capture_output=True,
        ),
        repeat=2,
    )
    goals.append(("`fractal-pipeline runs` (whole command)", "<= 2 s", f"{runs_cli:.2f} s", runs_cli <= 2))
    gql, gql_keys = graphql_seconds(home, env)
    goals.append((f"UI partition-health GraphQL ({gql_keys:,} keys)", "<= 2 s", f"{gql:.2f} s", gql <= 2))

    child = subprocess.run([sys.executable, "-c", COLLAGE_CHILD, str(home)], env=env, capture_output=True, text=True)
    if child.returncode:
        print(child.stderr[-3000:])
        return 1
    tiles, size, seconds, rss = child.stdout.split()[-4:]
    rows.append((f"collage of {tiles} tiles ({size})", f"{float(seconds):.1f} s"))
    goals.append(("collage peak RSS", "<= 500 MB", f"{float(rss):.0f} MB", float(rss) <= 500))

    print("\n| step | time |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\n| goal | target | measured | result |\n|---|---|---|---|")
    for name, target, measured, ok in goals:
        print(f"| {name} | {target} | {measured} | {'PASS' if ok else 'FAIL'} |")
    print(f"\n(driver peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(ok for *_, ok in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
