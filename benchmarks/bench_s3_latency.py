"""Rendering into S3 with network latency: render workers upload one PNG while they render the next.

    python benchmarks/bench_s3_latency.py                 # 120 specs at 512 px, 0 and 25 ms of latency
    python benchmarks/bench_s3_latency.py --latency-ms 50 --count 200

S3 is moto's server on 127.0.0.1 behind a small TCP proxy that holds every
response for ``--latency-ms`` (a PUT to S3 from the same region takes ~20-50 ms;
moto on this machine answers in ~2 ms). For each latency, in one run:

- baseline: ``render_and_store`` of every spec one after another in this process
  (render, then upload, then the next);
- ``render_many`` with 1 worker: the worker's store threads upload while it renders.

Ratio = render_many / baseline. With a local folder there are no store threads:
a local write costs ~0.3 ms of CPU and a thread would only contend with the render
for the GIL (benchmarks/bench_pipeline.py measures that path).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
import time

import boto3
from moto.server import ThreadedMotoServer

from fractal_pipeline.fractals import random_specs
from fractal_pipeline.store import StoreConfig, open_store
from fractal_pipeline.workers.pool import render_many
from fractal_pipeline.workers.results import RenderResult, render_and_store

BUCKET = "latency-bench"


def _pipe(source: socket.socket, target: socket.socket, delay_s: float) -> None:
    try:
        while data := source.recv(65536):
            if delay_s:
                time.sleep(delay_s)
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def latency_proxy(upstream_port: int, delay_s: float) -> int:
    """A TCP proxy on 127.0.0.1 to ``upstream_port`` that delays each response chunk; returns its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def accept() -> None:
        while True:
            client, _ = server.accept()
            upstream = socket.create_connection(("127.0.0.1", upstream_port))
            threading.Thread(target=_pipe, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=_pipe, args=(upstream, client, delay_s), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(server.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 25.0])
    args = parser.parse_args()

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    _, moto_port = moto.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    direct = f"http://127.0.0.1:{moto_port}"
    boto3.client("s3", endpoint_url=direct, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    keys = [spec.key for spec in random_specs(args.count, seed=11, palette=None, size=args.size)]

    print(f"# bench_s3_latency: {len(keys)} specs at {args.size} px into S3 (moto), {os.cpu_count()} CPUs\n")
    print("| latency per response | baseline: render, upload, next | render_many, 1 worker | ratio |")
    print("|---:|---:|---:|---:|")
    try:
        for latency_ms in args.latency_ms:
            endpoint = f"http://127.0.0.1:{latency_proxy(moto_port, latency_ms / 1000)}"
            config = StoreConfig(bucket=BUCKET, endpoint_url=endpoint, region_name="us-east-1")
            store = open_store(config)
            started = time.perf_counter()
            for key in keys:
                render_and_store(key, store)
            serial = time.perf_counter() - started
            started = time.perf_counter()
            outcomes = list(render_many(keys, config, workers=1))
            pipelined = time.perf_counter() - started
            assert all(isinstance(outcome, RenderResult) for outcome in outcomes), outcomes
            ratio = pipelined / serial
            print(f"| {latency_ms:.0f} ms | {serial:.2f} s | {pipelined:.2f} s | {ratio:.2f}x |", flush=True)
    finally:
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
