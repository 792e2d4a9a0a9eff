"""Estimate what rendering 10,000 fractals costs on Lambda vs ECS Fargate, from times measured here.

Run from the repository root::

    python benchmarks/bench_lambda_cost.py                 # 52 specs, chunks of 8
    python benchmarks/bench_lambda_cost.py --specs 104 --chunk 16

Sections:

1. Work per spec on this machine: ``render_and_store`` (render, encode, thumbnail,
   write) at 1024 px over random specs (random kinds, depths and palettes) into a
   local folder: what one Lambda invocation or one pool worker does per spec,
   minus the S3 PUT latency.
2. Overhead per Lambda invocation: the real handler renders a chunk into moto's
   S3 on 127.0.0.1 with dagster-pipes messages going to S3, timed end to end,
   minus the chunk's render work. Baseline: dagster-pipes' stock
   ``PipesS3MessageWriter`` (its upload thread sleeps whole seconds, so closing
   costs 1-2 s); ours: ``PromptS3MessageWriter``. Plus the cold start (importing
   the handler in a fresh interpreter), paid once per concurrent sandbox.
3. Cost of 10,000 specs: Lambda (x86 and arm64, 1769 MB = one vCPU, chunks of
   ``--chunk``, 16 concurrent) including the Fargate task that runs the Dagster
   run meanwhile, vs one Fargate task (2 vCPU, 4 GB) rendering with a 2-process
   pool, on demand and Spot. S3 PUTs are listed separately (the same PNGs either
   way, plus the pipes message chunks on Lambda).

Assumptions, stated again in the output: a Lambda or Fargate vCPU renders as fast
as one core of this machine; us-east-1 list prices as published on
aws.amazon.com/lambda/pricing, /fargate/pricing and /s3/pricing in January 2025
(no free tier, no savings plans). It is an estimate, not a quote.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fractal_pipeline.fractals import random_specs  # noqa: E402
from fractal_pipeline.store import LocalStore  # noqa: E402
from fractal_pipeline.workers.results import render_and_store  # noqa: E402

PRICES_AS_OF = "January 2025, us-east-1"
LAMBDA_X86_GB_S = 0.0000166667
LAMBDA_ARM_GB_S = 0.0000133334
LAMBDA_PER_REQUEST = 0.20 / 1_000_000
FARGATE_VCPU_H = 0.04048
FARGATE_GB_H = 0.004445
FARGATE_SPOT_DISCOUNT = 0.70  # typical; Spot prices vary by region and time
S3_PER_PUT = 0.005 / 1_000
LAMBDA_MB = 1769  # one full vCPU; rendering is single-threaded, so more memory buys nothing
CONCURRENCY = 16  # RenderBackendResource.concurrency default
FARGATE_TASK_START_S = 60.0  # provisioning + image pull of a Fargate task, billed
TOTAL_SPECS = 10_000


def measure_specs(keys: list[str]) -> list[float]:
    """Seconds of ``render_and_store`` per key, into a local folder (after one warm-up)."""
    with tempfile.TemporaryDirectory() as folder:
        store = LocalStore(folder)
        render_and_store(keys[0], store)
        times = []
        for key in keys:
            started = time.perf_counter()
            render_and_store(key, store)
            times.append(time.perf_counter() - started)
    return times


def spec_keys(count: int, seed: int) -> list[str]:
    """Keys of ``count`` random 1024 px specs (random kinds, depths, palettes)."""
    return [spec.key for spec in random_specs(count, seed=seed, size=1024, palette=None)]


def measure_cold_start() -> float:
    """Seconds to start a fresh interpreter and import the handler (a Lambda sandbox's INIT)."""
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import fractal_pipeline.aws.lambda_handler"], check=True, cwd=REPO)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def measure_invocations(keys: list[str], repeats: int) -> dict[str, float]:
    """Median wall seconds of one handler invocation over ``keys``, per message writer."""
    from dagster_pipes import (
        DAGSTER_PIPES_CONTEXT_ENV_VAR,
        DAGSTER_PIPES_MESSAGES_ENV_VAR,
        PipesS3MessageWriter,
        encode_param,
    )
    from moto.server import ThreadedMotoServer

    import fractal_pipeline.aws.lambda_handler as handler_module

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench"
    )
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    context = {
        "asset_keys": ["fractal_images"],
        "code_version_by_asset_key": None,
        "provenance_by_asset_key": None,
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "bench",
        "job_name": "bench",
        "retry_number": 0,
        "extras": {},
    }
    writers: dict[str, Any] = {
        "stock PipesS3MessageWriter": PipesS3MessageWriter,
        "PromptS3MessageWriter": handler_module.PromptS3MessageWriter,
    }
    results: dict[str, float] = {}
    try:
        from fractal_pipeline.store import s3_client

        s3_client(os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
        for name, writer in writers.items():
            handler_module.PromptS3MessageWriter = writer  # type: ignore[misc]
            times = []
            for attempt in range(repeats + 1):
                event = {
                    "keys": keys,
                    "bucket": bucket,
                    DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context}),
                    DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(
                        {"bucket": bucket, "key_prefix": f"pipes/{uuid.uuid4().hex}"}
                    ),
                }
                started = time.perf_counter()
                handler_module.handler(event, None)
                if attempt:  # the first one warms up the S3 client
                    times.append(time.perf_counter() - started)
            results[name] = statistics.median(times)
    finally:
        handler_module.PromptS3MessageWriter = writers["PromptS3MessageWriter"]  # type: ignore[misc]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
    return results


def money(value: float) -> str:
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", type=int, default=52, help="random specs to time (1024 px)")
    parser.add_argument("--chunk", type=int, default=8, help="specs per Lambda invocation")
    parser.add_argument("--repeat", type=int, default=3, help="invocations timed per message writer")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    print(f"1. render_and_store at 1024 px, {args.specs} random specs (this machine, one core)")
    times = measure_specs(spec_keys(args.specs, args.seed))
    mean_s, median_s = statistics.fmean(times), statistics.median(times)
    p90_s = sorted(times)[int(0.9 * (len(times) - 1))]
    print(f"   median {median_s * 1000:.1f} ms   mean {mean_s * 1000:.1f} ms   p90 {p90_s * 1000:.1f} ms")

    print(f"\n2. one Lambda invocation of {args.chunk} specs (handler -> moto S3 on 127.0.0.1, pipes messages in S3)")
    chunk_keys = spec_keys(args.chunk, args.seed + 1)
    chunk_work = sum(measure_specs(chunk_keys))
    walls = measure_invocations(chunk_keys, args.repeat)
    cold = measure_cold_start()
    overheads = {name: max(0.0, wall - chunk_work) for name, wall in walls.items()}
    print(f"   {'message writer':<28} {'wall':>8} {'render work':>12} {'overhead':>9}")
    for name, wall in walls.items():
        print(f"   {name:<28} {wall:>7.2f}s {chunk_work:>11.2f}s {overheads[name]:>8.2f}s")
    stock, prompt = overheads["stock PipesS3MessageWriter"], overheads["PromptS3MessageWriter"]
    print(f"   overhead ratio stock/prompt: {stock / max(prompt, 1e-3):.1f}x   cold start (INIT): {cold:.2f} s")

    n, k = TOTAL_SPECS, args.chunk
    invocations = math.ceil(n / k)
    gb = LAMBDA_MB / 1024

    def lambda_cost(overhead: float, price: float) -> tuple[float, float, float]:
        billed_s = n * mean_s + invocations * overhead + CONCURRENCY * cold
        wall_s = math.ceil(invocations / CONCURRENCY) * (k * mean_s + overhead) + cold
        orchestrator = (wall_s + FARGATE_TASK_START_S) / 3600 * (1 * FARGATE_VCPU_H + 2 * FARGATE_GB_H)
        return billed_s * gb * price + invocations * LAMBDA_PER_REQUEST + orchestrator, billed_s, wall_s

    rows = []
    for label, overhead, price in (
        (f"Lambda x86, chunks of {k}, PromptS3MessageWriter", prompt, LAMBDA_X86_GB_S),
        (f"Lambda arm64, chunks of {k}, PromptS3MessageWriter", prompt, LAMBDA_ARM_GB_S),
        (f"Lambda x86, chunks of {k}, stock writer (baseline)", stock, LAMBDA_X86_GB_S),
    ):
        cost, billed, wall = lambda_cost(overhead, price)
        rows.append((label, wall, f"{billed * gb:,.0f} GB-s + {invocations:,} requests + run task", cost))
    fargate_wall = n * mean_s / 2 + FARGATE_TASK_START_S
    fargate_rate = 2 * FARGATE_VCPU_H + 4 * FARGATE_GB_H
    fargate = fargate_wall / 3600 * fargate_rate
    rows.append(
        ("ECS Fargate 2 vCPU / 4 GB, process pool", fargate_wall, f"{fargate_wall / 3600:.2f} task-hours", fargate)
    )
    rows.append(("ECS Fargate Spot, same", fargate_wall, "~70 % off on demand", fargate * (1 - FARGATE_SPOT_DISCOUNT)))

    print(f"\n3. rendering {n:,} specs at 1024 px ({PRICES_AS_OF} list prices; an estimate)")
    print(f"   {'where':<52} {'wall':>9} {'billed':<44} {'cost':>9}")
    for label, wall, billed_text, cost in rows:
        print(f"   {label:<52} {wall / 60:>7.1f}min {billed_text:<44} {money(cost):>9}")
    puts = n * S3_PER_PUT
    pipes_puts = invocations * max(1, math.ceil((k * mean_s + prompt) / 1.0)) * S3_PER_PUT
    print(f"   + S3 PUTs either way: {n:,} PNGs {money(puts)}; Lambda only: pipes message chunks ~{money(pipes_puts)}")
    best_lambda = rows[0][3] + pipes_puts
    print(
        f"   ratio Lambda x86 / Fargate on demand: {best_lambda / fargate:.2f}x cost, "
        f"{fargate_wall / rows[0][1]:.0f}x faster wall clock"
    )
    print(
        "   assumptions: a Lambda/Fargate vCPU renders like one core here; 1769 MB Lambda = 1 vCPU; "
        f"{CONCURRENCY} concurrent invocations; INIT billed once per sandbox; "
        f"Fargate task start {FARGATE_TASK_START_S:.0f} s"
    )


if __name__ == "__main__":
    main()
