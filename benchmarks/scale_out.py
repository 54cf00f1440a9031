"""Scale-out: GreeDi against centralized greedy, and sharded embedding over 1, 2 and 4 RQ workers.

    python benchmarks/scale_out.py greedi [--n 200000] [--k 2000] [--partitions 2 4 8]
    python benchmarks/scale_out.py embedding [--n 4096] [--workers 1 2 4]
    python benchmarks/scale_out.py overhead [--n 8192] [--repeats 9]

GreeDi: synthetic features (benchmarks/synthetic.py) of N examples compressed to rank 16 at 256 dimensions
(what a 1M-example request gets by default; at N = 200k the default, rank 32 at 576, makes each run several
times longer on 2 cores), K = N / 100, the paper's `tokens` weighting. Centralized lazy greedy, then for each
m: greedy K on each of the m seeded random partitions one after another (each reading only its partition's
rows, as a partition job does), then the merge round. Wall time on m workers = the slowest partition + the
merge; the objective is reported against centralized greedy's, and as the share of centralized greedy's lead
over a random subset of K that it keeps.
Writes benchmarks/results/scale_out/greedi.json and greedi.png.

Overhead: see `overhead_rows`. Writes benchmarks/results/scale_out/overhead.json.

Embedding: the service end to end (a private Redis, the API in process, RQ workers as subprocesses, a fresh
artifact store each run) selecting 20 examples from chatterbot English rows cycled to N examples (4,096 by
default: four shards of 1,024) with the default model at max_length 256; once with sharding off and one worker,
then sharded with 1, 2 and 4 workers. Wall time from the request to the result; per-shard overhead = (sharded on
one worker - unsharded on one worker) / shards. Workers share the machine's cores (each gets cores / workers
torch threads: oversubscribed, two workers with two threads each on 2 cores embedded 2.2x slower than one); on a
GPU cluster each has its own device. Writes
benchmarks/results/scale_out/embedding.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import scale  # benchmarks/ is on the path of a script run from it: scale.py writes the synthetic store
from redis import Redis

from fishersft.contract.compression import Compression
from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.features.files import load_features
from fishersft.pipeline import PartitionPicks, merge_partitions, select_features
from fishersft.selection import greedi

ROOT = Path(__file__).parents[1]
OUT = Path(__file__).parent / "results" / "scale_out"
SHARD_EXAMPLES = 1024
GREEDI_COMPRESSION = Compression(rank=16, dim=256)


def greedi_rows(n: int, k: int, partitions: list[int], work: Path) -> dict:
    start = time.perf_counter()
    features = load_features(scale.write_synthetic_store(work / "store", n, compression=GREEDI_COMPRESSION))
    print(f"store written in {time.perf_counter() - start:.0f} s", flush=True)
    budget = Budget(examples=k)
    # the paper's objective over the compressed rows, as benchmarks/scale.py
    options = SelectionOptions(budget=budget, weighting="tokens")
    random_ = select_features(features, options.model_copy(update={"method": "random"})).objective
    start = time.perf_counter()
    central = select_features(features, options)
    central_s = time.perf_counter() - start
    print(f"centralized: {central_s:.0f} s, f = {central.objective:.1f}, random f = {random_:.1f}", flush=True)
    rows = []
    for m in partitions:
        rounds, walls = [], []
        for part in greedi.partition(n, m, seed=0):
            started = time.perf_counter()
            picked = select_features(features, options, candidates=part)
            rounds.append(PartitionPicks(result=picked, candidates=len(part), worker=None))
            walls.append(time.perf_counter() - started)
        started = time.perf_counter()
        merged = merge_partitions(features, options, rounds)
        merge_s = time.perf_counter() - started
        slowest = max(walls)
        assert merged.partitions is not None
        rows.append(
            {
                "m": m,
                "objective": merged.objective,
                "ratio": merged.objective / central.objective,
                "lead_kept": (merged.objective - random_) / (central.objective - random_),
                "answer": merged.partitions.answer,
                "union": merged.partitions.union,
                "same_picks": len(set(merged.selected) & set(central.selected)),
                "partition_wall_s": walls,
                "merge_s": merge_s,
                "wall_on_m_workers_s": slowest + merge_s,
                "speedup": central_s / (slowest + merge_s),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {
        "n": n,
        "k": k,
        "compression": features.meta["compression"],
        "centralized": {
            "objective": central.objective,
            "wall_s": central_s,
            "evaluations": central["gain_evaluations"],
        },
        "random_objective": random_,
        "greedi": rows,
    }


def plot_greedi(result: dict, path: Path) -> None:
    """Wall time against m (centralized at m = 1): on m workers, and all rounds' compute; f / centralized."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["greedi"]
    ms = [1] + [r["m"] for r in rows]
    central = result["centralized"]["wall_s"]
    fig, (time_ax, ratio_ax) = plt.subplots(1, 2, figsize=(10, 4))
    time_ax.plot(ms, [central] + [r["wall_on_m_workers_s"] for r in rows], "o-", label="on m workers")
    time_ax.plot(ms, [central] + [sum(r["partition_wall_s"]) + r["merge_s"] for r in rows], "s--", label="all rounds")
    time_ax.set(xlabel="partitions m (1: centralized greedy)", ylabel="seconds", xscale="log", xticks=ms)
    time_ax.set_xticklabels(ms)
    time_ax.legend()
    above = [100 * (r["ratio"] - 1) for r in rows]
    ratio_ax.plot([r["m"] for r in rows], above, "o-")
    for m, value in zip(ms[1:], above, strict=True):
        ratio_ax.annotate(f"{value:+.4f}%", (m, value), textcoords="offset points", xytext=(0, 8), ha="center")
    ratio_ax.axhline(0.0, color="grey", lw=0.8)
    ratio_ax.set(xlabel="partitions m", ylabel="f(GreeDi) vs centralized greedy, %", xscale="log", xticks=ms[1:])
    ratio_ax.set(ylim=(-3, 3), title="the literature: within a few percent")
    ratio_ax.set_xticklabels(ms[1:])
    for ax in (time_ax, ratio_ax):
        ax.minorticks_off()
    fig.suptitle(f"GreeDi, N = {result['n']:,}, K = {result['k']:,} (synthetic, rank 16, d 256)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def serve_selection(data: Path, workers: int, shard_examples: int, work: Path, model: str | None = None) -> dict:
    """One selection of 20 examples over `data` on a fresh service with `workers` workers sharing the cores
    (FISHERSFT_TORCH_THREADS = cores / workers; `model`: the default model's name, else the service's default):
    its wall time and result."""
    from fastapi.testclient import TestClient
    from rq import Worker

    from app.main import create_app
    from fishersft.service.redis_server import RedisServer
    from fishersft.service.settings import Settings

    with RedisServer(work / "redis", persist=False) as redis_server:
        chosen = {"default_model": model} if model else {}
        threads = max(1, (os.cpu_count() or 1) // workers)
        settings = Settings(
            redis_url=redis_server.url,
            data_dir=work / "data",
            shard_examples=shard_examples,
            torch_threads=threads,
            **chosen,
        )
        client = TestClient(create_app(settings))
        env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
        procs = [subprocess.Popen([sys.executable, "-m", "workers"], env=env, cwd=ROOT) for _ in range(workers)]
        try:
            redis = Redis.from_url(redis_server.url)
            while Worker.count(connection=redis) < workers:
                time.sleep(0.1)
            with data.open("rb") as f:
                dataset = client.post("/v1/datasets", files={"file": (data.name, f)}).json()
            started = time.perf_counter()
            body = {"dataset_id": dataset["id"], "budget": {"examples": 20}, "max_length": 256}
            job = client.post("/v1/selections", json=body).json()
            while (job := client.get(f"/v1/selections/{job['id']}").json())["status"] in ("queued", "running"):
                time.sleep(0.2)
            wall = time.perf_counter() - started
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
    assert job["status"] == "succeeded", job
    return {"wall_s": wall, "result": job["result"]}


def embedding_rows(n: int, worker_counts: list[int], work: Path) -> dict:
    from fishersft.data.corpora import chatterbot

    base = chatterbot(["english"])
    data = work / "chat.jsonl"
    data.write_text("".join(json.dumps({**base[i % len(base)], "id": f"r{i}"}) + "\n" for i in range(n)))
    runs = []
    for workers, shard in [(1, 1 << 30), *((w, SHARD_EXAMPLES) for w in worker_counts)]:
        run = serve_selection(data, workers, shard, work / f"run{len(runs)}")
        shards = run["result"]["shards"] or []
        runs.append(
            {
                "workers": workers,
                "torch_threads": max(1, (os.cpu_count() or 1) // workers),
                "sharded": bool(shards),
                "wall_s": run["wall_s"],
                "shards": shards,
                "assemble_s": run["result"]["timings"]["embed_s"] if shards else None,
                "select_s": run["result"]["timings"]["select_s"],
                "selected": run["result"]["selected"],
            }
        )
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "selected"}), flush=True)
    single, one = runs[0], runs[1]
    return {
        "n": n,
        "shard_examples": SHARD_EXAMPLES,
        "cores": os.cpu_count(),
        "runs": runs,
        "overhead_per_shard_s": (one["wall_s"] - single["wall_s"]) / len(one["shards"]),
        "same_selection": all(r["selected"] == single["selected"] for r in runs),
    }


def overhead_rows(n: int, repeats: int, work: Path) -> dict:
    """What a shard costs beyond its embedding: the same selection with the tiny built-in model (fast, so the
    difference is not lost in the embedding's own variation) unsharded and in n / 1,024 shards, on one worker,
    `repeats` times each, alternating."""
    from fishersft.data.corpora import chatterbot

    base = chatterbot(["english"])
    data = work / "chat.jsonl"
    data.write_text("".join(json.dumps({**base[i % len(base)], "id": f"r{i}"}) + "\n" for i in range(n)))
    walls: dict[str, list[float]] = {"unsharded": [], "sharded": []}
    for k in range(repeats):
        for kind, shard in (("unsharded", 1 << 30), ("sharded", SHARD_EXAMPLES)):
            run = serve_selection(data, 1, shard, work / f"{kind}{k}", model="tiny-llama")
            walls[kind].append(run["wall_s"])
            print(kind, run["wall_s"], flush=True)
    shards = -(-n // SHARD_EXAMPLES)
    paired = [(b - a) / shards for a, b in zip(walls["unsharded"], walls["sharded"], strict=True)]
    return {
        "n": n,
        "shards": shards,
        "walls_s": walls,
        "paired_per_shard_s": paired,
        "overhead_per_shard_s": statistics.mean(paired),
        "stdev_of_mean_s": statistics.stdev(paired) / len(paired) ** 0.5 if len(paired) > 1 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    g = sub.add_parser("greedi")
    g.add_argument("--n", type=int, default=200_000)
    g.add_argument("--k", type=int, default=None, help="default N / 100")
    g.add_argument("--partitions", type=int, nargs="*", default=[2, 4, 8])
    g.add_argument("--out", type=Path, default=OUT)
    e = sub.add_parser("embedding")
    e.add_argument("--n", type=int, default=4 * SHARD_EXAMPLES)
    e.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    e.add_argument("--out", type=Path, default=OUT)
    o = sub.add_parser("overhead")
    o.add_argument("--n", type=int, default=8 * SHARD_EXAMPLES)
    o.add_argument("--repeats", type=int, default=9)
    o.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fishersft-scale-out-") as tmp:
        if args.part == "greedi":
            result = greedi_rows(args.n, args.k or args.n // 100, args.partitions, Path(tmp))
        elif args.part == "embedding":
            result = embedding_rows(args.n, args.workers, Path(tmp))
        else:
            result = overhead_rows(args.n, args.repeats, Path(tmp))
    (args.out / f"{args.part}.json").write_text(json.dumps(result, indent=1))
    if args.part == "greedi":
        plot_greedi(result, args.out / "greedi.png")


if __name__ == "__main__":
    main()
