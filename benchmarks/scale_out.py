"""Scale-out: GreeDi against centralized greedy, and sharded embedding over 1, 2 and 4 RQ workers.

    python benchmarks/scale_out.py greedi [--n 200000] [--k 2000] [--partitions 2 4 8]
    python benchmarks/scale_out.py embedding [--n 12288] [--workers 1 2 4]

GreeDi: synthetic features (benchmarks/synthetic.py) of N examples compressed to rank 16 at 256 dimensions (what
a 1M-example request gets by default; at N = 200k the default, rank 32 at 576, makes the centralized run alone
take most of an hour on 2 cores), K = N / 100, the paper's `tokens` weighting. Centralized lazy greedy, then for each m: greedy K on each of the m
seeded random partitions one after another (each reading only its partition's rows, as a partition job does),
then the merge round. Wall time on m workers = the slowest partition + the merge; the objective is reported
against centralized greedy's, and as the share of centralized greedy's lead over a random subset of K it keeps.
Writes benchmarks/results/scale_out/greedi.json.

Embedding: see `embedding_rows`. Writes benchmarks/results/scale_out/embedding.json.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import scale  # benchmarks/ is on the path of a script run from it: scale.py writes the synthetic store

from fishersft.features import load_features
from fishersft.pipeline import merge_partitions, select_features
from fishersft.selection import Budget, greedi
from fishersft.variants import Compression

OUT = Path(__file__).parent / "results" / "scale_out"
GREEDI_COMPRESSION = Compression(rank=16, dim=256)


def greedi_rows(n: int, k: int, partitions: list[int], work: Path) -> dict:
    start = time.perf_counter()
    features = load_features(scale.write_synthetic_store(work / "store", n, compression=GREEDI_COMPRESSION))
    print(f"store written in {time.perf_counter() - start:.0f} s", flush=True)
    budget = Budget(examples=k)
    options = {"weighting": "tokens"}  # the paper's objective over the compressed rows, as benchmarks/scale.py
    random_ = select_features(features, budget, method="random", **options)["objective"]
    start = time.perf_counter()
    central = select_features(features, budget, **options)
    central_s = time.perf_counter() - start
    print(f"centralized: {central_s:.0f} s, f = {central['objective']:.1f}, random f = {random_:.1f}", flush=True)
    rows = []
    for m in partitions:
        rounds = []
        for part in greedi.partition(n, m, seed=0):
            started = time.perf_counter()
            picked = select_features(features, budget, candidates=part, **options)
            rounds.append(picked | {"candidates": len(part), "wall_s": time.perf_counter() - started})
        started = time.perf_counter()
        merged = merge_partitions(features, budget, rounds, **options)
        merge_s = time.perf_counter() - started
        slowest = max(r["wall_s"] for r in rounds)
        rows.append(
            {
                "m": m,
                "objective": merged["objective"],
                "ratio": merged["objective"] / central["objective"],
                "lead_kept": (merged["objective"] - random_) / (central["objective"] - random_),
                "answer": merged["partitions"]["answer"],
                "union": merged["partitions"]["union"],
                "same_picks": len(set(merged["selected"]) & set(central["selected"])),
                "partition_wall_s": [r["wall_s"] for r in rounds],
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
            "objective": central["objective"],
            "wall_s": central_s,
            "evaluations": central["gain_evaluations"],
        },
        "random_objective": random_,
        "greedi": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    g = sub.add_parser("greedi")
    g.add_argument("--n", type=int, default=200_000)
    g.add_argument("--k", type=int, default=None, help="default N / 100")
    g.add_argument("--partitions", type=int, nargs="*", default=[2, 4, 8])
    g.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fishersft-scale-out-") as tmp:
        if args.part == "greedi":
            result = greedi_rows(args.n, args.k or args.n // 100, args.partitions, Path(tmp))
            (args.out / "greedi.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
