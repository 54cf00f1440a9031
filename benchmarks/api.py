"""API latency under concurrent clients, and the demo end to end.

    python benchmarks/api.py [--clients 50 --requests 40]

Starts `fishersft serve` (private Redis, one worker) in its own process on a loopback port, runs one selection,
then loads GET /v1/selections/{id} from `clients` concurrent connections and reports latency percentiles and
throughput, twice: with Python clients (httpx, `requests` each: bounded in count, 120 s at most), and, when
Debian's `wrk` is installed, with wrk for 10 s (a C load generator leaves more of the 2 cores to the server).
Then times `fishersft demo`. Loopback only.
"""

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from fishersft.client import Client
from fishersft.contract.selection import Budget, SelectionCreate
from fishersft.models.registry import sample_dataset
from fishersft.service.redis_server import free_port


async def hammer(url: str, job_id: str, clients: int, requests: int) -> list[float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def one_client() -> None:
            for _ in range(requests):
                start = time.perf_counter()
                response = await client.get(f"/v1/selections/{job_id}")
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200

        await asyncio.wait_for(asyncio.gather(*(one_client() for _ in range(clients))), timeout=120)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40, help="per client")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env |= {"FISHERSFT_HOME": f"{tmp}/home", "FISHERSFT_DATA_DIR": f"{tmp}/data", "FISHERSFT_LOG_LEVEL": "WARNING"}
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "fishersft.cli", "serve", "--port", str(port)], env=env, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        try:
            with Client(url) as client:
                client.wait_ready(alive=lambda: server.poll() is None)
                dataset = client.upload_dataset(sample_dataset())
                request = SelectionCreate(dataset_id=dataset.id, budget=Budget(examples=20))
                job = client.wait(client.create_selection(request))
            start = time.perf_counter()
            latencies = asyncio.run(hammer(url, job.id, args.clients, args.requests))
            elapsed = time.perf_counter() - start
            wrk = (
                shutil.which("wrk")
                and subprocess.run(
                    ["wrk", "-t2", f"-c{args.clients}", "-d10s", "--latency", f"{url}/v1/selections/{job.id}"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
        finally:
            server.terminate()
            server.wait(30)
        ms = sorted(x * 1000 for x in latencies)
        pct = {p: ms[min(len(ms) - 1, int(p / 100 * len(ms)))] for p in (50, 95, 99)}
        print(
            f"GET /v1/selections/{{id}} (succeeded job, full result), {args.clients} concurrent clients, "
            f"{len(ms)} requests: p50 {pct[50]:.1f} ms, p95 {pct[95]:.1f} ms, p99 {pct[99]:.1f} ms, "
            f"max {ms[-1]:.1f} ms, mean {statistics.mean(ms):.1f} ms; {len(ms) / elapsed:.0f} requests/s"
        )
        if wrk:
            lines = {
                line.split()[0]: line.split()[1]
                for line in wrk.splitlines()
                if line.strip()[:3] in ("50%", "90%", "99%")
            }
            rate = next(line.split()[1] for line in wrk.splitlines() if line.startswith("Requests/sec"))
            print(
                f"same with wrk, {args.clients} connections, 10 s: p50 {lines['50%']}, p90 {lines['90%']}, "
                f"p99 {lines['99%']}; {float(rate):.0f} requests/s"
            )
        start = time.perf_counter()
        demo = subprocess.run(
            [sys.executable, "-m", "fishersft.cli", "demo"], env=env, capture_output=True, text=True, check=True
        )
        total = time.perf_counter() - start
        print(
            f"fishersft demo end to end (default model already built): {total:.1f} s, including Python and torch "
            f"start-up; the demo itself reports: {demo.stdout.strip().splitlines()[-1]}"
        )


if __name__ == "__main__":
    main()
