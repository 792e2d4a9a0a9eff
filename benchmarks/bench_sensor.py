"""Benchmark the fractal_spec_files sensor against moto's S3 server on 127.0.0.1.

Run from the repository root::

    python benchmarks/bench_sensor.py                 # both parts (~6-7 minutes on 2 cores)
    python benchmarks/bench_sensor.py --skip-latency  # tick durations only (~1.5 minutes)
    python benchmarks/bench_sensor.py --uploads 5 --objects 2000

Sections:

1. Tick duration with ``--objects`` (10,000) spec files under ``specs/`` (seeded
   straight into moto's store, LastModified spread over 30 days, all already
   handled), in both modes of the sensor:

   - queue mode (``FRACTALS_SPECS_QUEUE``): the bucket has the notification
     configuration of ``deploy/template.yaml`` pointing at an SQS queue of the
     same moto server (set after seeding: the seeded files are "older than the
     queue"); a tick that finds nothing new, a tick that finds one new 5-spec
     file uploaded with boto3 (moto delivers its notification), and the
     reconciling tick that also lists the prefix (every 900 s by default);
   - listing mode (no queue, the reference): the same two ticks, and the part
     of them that is ``get_objects`` listing the prefix.

   The goal (one new file <= 2 s) is evaluated on queue mode. The baseline is
   a stateless tick (no cursor, relying on run keys alone): list the prefix and
   read + parse every file, every tick; its per-file cost is timed on
   ``--baseline-sample`` files and scaled to all of them.
2. Upload -> PNG stored latency under ``dagster dev`` (sensor interval
   ``--interval`` s via ``FRACTALS_SENSOR_INTERVAL``, queued runs dequeued every
   second): ``--uploads`` 5-spec CSV files, one at a time at a random phase of
   the sensor's tick, each timed until its 5 PNGs are in the bucket; the run
   records split it into detection (upload -> run created), queue + launch
   (created -> run started) and the run itself (started -> last PNG).
3. Goals vs measured.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
import dagster as dg  # noqa: E402
from dagster._core.scheduler.instigation import InstigatorType  # noqa: E402
from dagster_aws.s3.sensor import get_objects  # noqa: E402

from fractal_pipeline.aws.deploy import TEMPLATE_PATH, load_template  # noqa: E402
from fractal_pipeline.defs.resources import FractalStoreResource  # noqa: E402
from fractal_pipeline.defs.sensors.cursor import SENSOR_NAME, SpecFilesCursor  # noqa: E402
from fractal_pipeline.defs.sensors.spec_files import evaluate_spec_files  # noqa: E402
from fractal_pipeline.defs.settings import DEFAULT_RECONCILE_S  # noqa: E402
from fractal_pipeline.defs.tags import SPEC_FILE as TAG_SPEC_FILE  # noqa: E402
from fractal_pipeline.fractals import random_specs  # noqa: E402
from fractal_pipeline.specfiles import parse_spec_file  # noqa: E402
from fractal_pipeline_tests.e2e.test_automation_e2e import dagster_dev  # noqa: E402

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
}
PHASES = (
    ("detect", "upload -> run created", "waiting for the next tick + the tick + creating the run"),
    ("tick", "sensor tick (all ticks)", "evaluation in the code server + the daemon's handling"),
    ("queue", "run created -> launched", "QueuedRunCoordinator, dequeue every 1 s"),
    ("launch", "launched -> run started", "run worker process starts and loads the definitions"),
    ("run", "run started -> 5 PNGs stored", "process pool start, render, encode, PUT"),
)
GOAL_P50_S = 10.0
GOAL_TICK_S = 2.0
PREFIX = "specs/"
T = TypeVar("T")
DEQUEUED = dg.DagsterEventType.RUN_STARTING  # the run left the queue and is being launched
START = dg.DagsterEventType.RUN_START
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
warnings.filterwarnings("ignore")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def client_for(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def five_spec_csv(index: int) -> str:
    specs = random_specs(5, seed=1000 + index, size=512, palette=None)
    return "kind,depth,size,palette\n" + "".join(f"{s.kind},{s.depth},{s.size},{s.palette}\n" for s in specs)


# --------------------------------------------------------------------------- 1. ticks


@contextmanager
def parse_timer() -> Iterator[list[float]]:
    """Time spent in botocore's response parsing (the client's share of a listing)."""
    import botocore.parsers

    original = botocore.parsers.ResponseParser.parse
    total = [0.0]

    def parse(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            total[0] += time.perf_counter() - started

    botocore.parsers.ResponseParser.parse = parse  # type: ignore[method-assign]
    try:
        yield total
    finally:
        botocore.parsers.ResponseParser.parse = original  # type: ignore[method-assign]


def notify_queue(endpoint: str, bucket: str) -> str:
    """A queue receiving the bucket's notifications as deploy/template.yaml configures them; its URL."""
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    url = str(sqs.create_queue(QueueName=f"{bucket}-specs")["QueueUrl"])
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    template = load_template(TEMPLATE_PATH.read_text())
    configs = template["Resources"]["Bucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    notifications = [
        {"QueueArn": arn, "Events": [c["Event"]], "Filter": {"Key": {"FilterRules": c["Filter"]["S3Key"]["Rules"]}}}
        for c in configs
    ]
    client_for(endpoint).put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": notifications}
    )
    return url


def bench_ticks(endpoint: str, objects: int, sample: int, repeats: int) -> dict[str, float]:
    from moto.backends import get_backend

    bucket = "bench-ticks"
    client = client_for(endpoint)
    client.create_bucket(Bucket=bucket)
    backend = get_backend("s3")["123456789012"]["global"]
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    started = time.perf_counter()
    for i in range(objects):
        key = backend.put_object(bucket, f"{PREFIX}archive/{i:05d}.csv", f"kind,depth\ndragon,{i % 20}\n".encode())
        key.last_modified = now - timedelta(days=30) + timedelta(seconds=i * 30 * 86400 / objects)
    print(f"seeded {objects:,} objects under s3://{bucket}/{PREFIX} in {time.perf_counter() - started:.1f} s")

    store = FractalStoreResource(bucket=bucket, endpoint_url=endpoint, region_name="us-east-1")
    listing, everything = timed(lambda: get_objects(bucket, PREFIX, client=client))
    handled = SpecFilesCursor().advanced(everything)  # steady state: all of them handled
    cursor = handled.dump()
    since = handled.since()
    results: dict[str, list[float]] = {"nothing": [], "one": [], "list": [], "parse": []}
    with dg.instance_for_test() as instance:

        def tick(raw: str | None) -> Any:
            context = dg.build_sensor_context(instance=instance, cursor=raw, resources={"store": store})
            return evaluate_spec_files(context, store, PREFIX)

        for attempt in range(repeats):
            seconds, result = timed(lambda: tick(cursor))
            assert not result.run_requests
            results["nothing"].append(seconds)
            new_key = f"{PREFIX}new-{attempt}.csv"
            client.put_object(Bucket=bucket, Key=new_key, Body=five_spec_csv(attempt).encode())
            seconds, result = timed(lambda: tick(cursor))
            assert len(result.run_requests) == 1, "one new file, one run"
            results["one"].append(seconds)
            client.delete_object(Bucket=bucket, Key=new_key)
            with parse_timer() as parsing:
                seconds, _ = timed(lambda: get_objects(bucket, PREFIX, since_last_modified=since, client=client))
            results["list"].append(seconds)
            results["parse"].append(parsing[0])

        # queue mode: the same objects; the bucket notifies a queue from now on
        queue = notify_queue(endpoint, bucket)
        queued = SpecFilesCursor(handled.last_modified, dict(handled.seen), reconciled_at=time.time()).dump()

        def queue_tick(raw: str | None, reconcile_s: float = DEFAULT_RECONCILE_S) -> Any:
            context = dg.build_sensor_context(instance=instance, cursor=raw, resources={"store": store})
            return evaluate_spec_files(context, store, PREFIX, queue=queue, reconcile_s=reconcile_s)

        assert not queue_tick(queued).run_requests  # deletes the s3:TestEvent message
        for attempt in range(repeats):
            seconds, result = timed(lambda: queue_tick(queued))
            assert not result.run_requests
            results.setdefault("q_nothing", []).append(seconds)
            new_key = f"{PREFIX}queued-{attempt}.csv"
            client.put_object(Bucket=bucket, Key=new_key, Body=five_spec_csv(50 + attempt).encode())
            seconds, result = timed(lambda: queue_tick(queued))
            assert len(result.run_requests) == 1, "one notified file, one run"
            results.setdefault("q_one", []).append(seconds)
            client.delete_object(Bucket=bucket, Key=new_key)
        seconds, result = timed(lambda: queue_tick(queued, reconcile_s=0))
        assert not result.run_requests and SpecFilesCursor.parse(result.cursor).reconciled_at
        results["q_reconcile"] = [seconds]

    def read_and_parse(obj: Any) -> None:
        body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        parse_spec_file(obj["Key"], body)

    sample_s, _ = timed(lambda: [read_and_parse(obj) for obj in everything[:sample]])
    per_file = sample_s / sample
    return {
        "q_nothing": statistics.median(results["q_nothing"]),
        "q_one": statistics.median(results["q_one"]),
        "q_reconcile": results["q_reconcile"][0],
        "full_listing": listing,
        "nothing": statistics.median(results["nothing"]),
        "one": statistics.median(results["one"]),
        "list": statistics.median(results["list"]),
        "parse": statistics.median(results["parse"]),
        "per_file_ms": per_file * 1000,
        "baseline": statistics.median(results["list"]) + per_file * objects,
    }


# --------------------------------------------------------------------------- 2. latency


def bench_latency(endpoint: str, uploads: int, interval: int) -> dict[str, Any]:
    bucket = "bench-latency"
    client = client_for(endpoint)
    client.create_bucket(Bucket=bucket)
    env = {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "FRACTALS_BUCKET": bucket,
        "FRACTALS_SENSOR_INTERVAL": str(interval),
    }
    rng = random.Random(7)
    latencies: list[float] = []
    uploaded: dict[str, float] = {}
    done_at: dict[str, float] = {}

    def pngs() -> set[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="fractals/")
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    with tempfile.TemporaryDirectory(prefix="bench-sensor-", ignore_cleanup_errors=True) as tmp:
        home = Path(tmp) / "home"
        log_path = Path(tmp) / "dagster_dev.log"
        with log_path.open("wb") as log, dagster_dev(env, home, log) as process:
            for index in range(uploads + 1):  # upload 0 warms up the daemon and the code server
                text = five_spec_csv(100 + index)
                expected = {f"fractals/{spec.key}.png" for spec in parse_spec_file("x.csv", text.encode()).specs}
                time.sleep(rng.uniform(0, interval))
                key = f"{PREFIX}upload-{index:02d}.csv"
                started = time.time()
                client.put_object(Bucket=bucket, Key=key, Body=text.encode())
                deadline = time.monotonic() + 180
                while not expected <= pngs():
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"no PNGs for {key}; log tail:\n{log_path.read_text()[-3000:]}")
                    time.sleep(0.1)
                finished = time.time()
                label = "warm-up" if index == 0 else f"{index}/{uploads}"
                print(f"  upload {label}: {finished - started:.1f} s", flush=True)
                if index:
                    latencies.append(finished - started)
                    uploaded[key], done_at[key] = started, finished
            with dg.DagsterInstance.from_config(str(home)) as instance:  # let the last runs finish
                wait_until = time.monotonic() + 60
                while instance.get_runs_count(dg.RunsFilter(statuses=UNFINISHED)) and time.monotonic() < wait_until:
                    time.sleep(0.5)
        instance = dg.DagsterInstance.from_config(str(home))
        phases: dict[str, list[float]] = {"detect": [], "queue": [], "launch": [], "run": [], "tick": []}
        for key, started in uploaded.items():
            records = instance.get_run_records(filters=dg.RunsFilter(tags={TAG_SPEC_FILE: key}))
            if len(records) != 1:
                continue
            run_id = records[0].dagster_run.run_id
            at = {}
            for event_type in (DEQUEUED, START):
                events = instance.get_records_for_run(run_id, of_type=event_type).records
                if events:
                    at[event_type] = events[0].event_log_entry.timestamp
            if len(at) < 2:
                continue
            created = records[0].create_timestamp.timestamp()
            phases["detect"].append(created - started)
            phases["queue"].append(at[DEQUEUED] - created)
            phases["launch"].append(at[START] - at[DEQUEUED])
            phases["run"].append(done_at[key] - at[START])
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.instigator_name == SENSOR_NAME:
                ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1000)
                phases["tick"] = [t.end_timestamp - t.timestamp for t in ticks if t.end_timestamp]
        instance.dispose()
    return {"latencies": latencies, **phases}


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--interval", type=int, default=5, help="sensor minimum interval, seconds")
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--baseline-sample", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-ticks", action="store_true")
    args = parser.parse_args()

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for name, value in CREDENTIALS.items():  # moto accepts any; never the user's real ones
        os.environ[name] = value
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    rows: list[tuple[str, str, str]] = []
    goals: list[tuple[str, float, float, bool]] = []
    references: list[tuple[str, float]] = []  # shown next to the goals, not judged
    try:
        if not args.skip_ticks:
            print(f"== 1. tick duration, {args.objects:,} objects under {PREFIX}")
            t = bench_ticks(endpoint, args.objects, args.baseline_sample, args.repeats)
            rows += [
                ("queue mode: tick, nothing new", f"{t['q_nothing']:.2f} s", f"median of {args.repeats}"),
                (
                    "queue mode: tick, one new 5-spec file",
                    f"{t['q_one']:.2f} s",
                    "uploaded with boto3, notified via SQS; 1 run request, 5 partitions",
                ),
                (
                    "queue mode: reconciling tick (lists the prefix)",
                    f"{t['q_reconcile']:.2f} s",
                    f"once every {DEFAULT_RECONCILE_S} s (FRACTALS_SPECS_RECONCILE_S)",
                ),
                ("listing mode (reference): tick, nothing new", f"{t['nothing']:.2f} s", f"median of {args.repeats}"),
                ("listing mode (reference): tick, one new 5-spec file", f"{t['one']:.2f} s", "no queue: every tick"),
                ("  of which get_objects(prefix, since)", f"{t['list']:.2f} s", "lists the whole prefix"),
                (
                    "    of which botocore parsing (client side)",
                    f"{t['parse']:.2f} s",
                    "the rest is moto rendering 1,000-key pages",
                ),
                (
                    "baseline: stateless tick (list + read every file)",
                    f"{t['baseline']:.1f} s",
                    f"{t['per_file_ms']:.1f} ms/file x {args.objects:,} (timed on {args.baseline_sample})",
                ),
                ("ratio baseline / listing mode", f"{t['baseline'] / t['one']:.0f}x", ""),
                ("ratio listing mode / queue mode", f"{t['one'] / t['q_one']:.0f}x", "tick with one new file"),
            ]
            goals.append(("tick with one new file, queue mode", GOAL_TICK_S, t["q_one"], t["q_one"] <= GOAL_TICK_S))
            references.append(("tick with one new file, listing mode (no queue)", t["one"]))
        if not args.skip_latency:
            print(f"== 2. upload -> PNG latency under dagster dev, {args.uploads} uploads, {args.interval} s interval")
            lat = bench_latency(endpoint, args.uploads, args.interval)
            values = lat["latencies"]
            p50, p95 = percentile(values, 50), percentile(values, 95)
            rows += [
                ("upload -> 5 PNGs stored, p50", f"{p50:.1f} s", f"{len(values)} uploads"),
                ("upload -> 5 PNGs stored, p95", f"{p95:.1f} s", f"min {min(values):.1f}, max {max(values):.1f}"),
            ]
            for name, label, note in PHASES:
                if lat[name]:
                    rows.append((f"  {label}, median", f"{statistics.median(lat[name]):.1f} s", note))
            goals.append(("latency p50", GOAL_P50_S, p50, p50 <= GOAL_P50_S))
    finally:
        server.stop()

    width = max(len(r[0]) for r in rows) if rows else 10
    print()
    print(f"| {'measure'.ljust(width)} | result | note |")
    print(f"|{'-' * (width + 2)}|--------|------|")
    for name, value, note in rows:
        print(f"| {name.ljust(width)} | {value} | {note} |")
    print()
    for name, goal, measured, ok in goals:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {measured:.2f} s (goal <= {goal:.0f} s)")
    for name, measured in references:
        print(f"ref   {name}: {measured:.2f} s (reference, not judged)")


if __name__ == "__main__":
    main()
