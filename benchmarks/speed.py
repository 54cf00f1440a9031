"""The greedy's speed against fast greedy MAP inference (Chen, Zhang and Zhou 2018), one-row examples.

    python benchmarks/speed.py [--n 60000 --d 128 --k 600 --rounds 2 --lazy] [--device cpu|cuda]

Synthetic one-row examples (benchmarks/synthetic.py's rows of SmolLM2-shaped features, one loss token each, as
the `mean` weighting or a one-row features file gives), stored float16, lambda = 1, an example budget of K. In
each round the reference (a numpy copy of Chen et al.'s Algorithm 1 in float64, on the kernel I + X X^T /
lambda, never formed) and `select` (which runs incremental greedy on one-row examples) run back to back on the
same rows, so their ratio is measured under the same load; `--lazy` adds, once, lazy greedy (the heap; what
`select` ran on such data before). Picks are compared with the reference's. Prints one JSON object per run and
writes them all to benchmarks/results/speed/one_row.json.
"""

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import synthetic  # benchmarks/ is on the path of a script run from it
import torch

from fishersft.contract.selection import Budget
from fishersft.selection.blocks import FeatureBlocks
from fishersft.selection.greedy import lazy_greedy
from fishersft.selection.logdet import LogDetObjective
from fishersft.selection.selector import Selection, budget_costs, select_blocks

OUT = Path(__file__).parent / "results" / "speed"
T = TypeVar("T")


def fast_greedy_map(x: np.ndarray, k: int, lam: float) -> list[int]:
    """Chen, Zhang and Zhou (2018), Algorithm 1, on L = I + X X^T / lam (log det L_S = log det(lam I + X_S^T X_S)
    - d log lam: the same greedy): Cholesky rows c_i of every candidate, O(N (d + k)) at pick k, float64."""
    n = len(x)
    c = np.zeros((n, k))
    d2 = 1 + np.einsum("ij,ij->i", x, x) / lam
    j = int(np.argmax(d2))
    picks = [j]
    while len(picks) < k:
        m = len(picks) - 1
        e = (x @ x[j] / lam - c[:, :m] @ c[j, :m]) / np.sqrt(d2[j])
        c[:, m] = e
        d2 -= e**2
        d2[picks] = -np.inf
        j = int(np.argmax(d2))
        picks.append(j)
    return picks


def one_row_features(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return synthetic.rows(torch.ones(n, dtype=torch.int64), synthetic.Topics.draw(d, g), g).to(torch.float16)


def timed(run: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lazy", action="store_true", help="also run lazy greedy once (minutes at the default size)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    features = one_row_features(args.n, args.d)
    offsets = torch.arange(args.n + 1)
    lengths = torch.ones(args.n, dtype=torch.int64)
    budget = Budget(examples=args.k)
    shape = {"n": args.n, "d": args.d, "k": args.k, "device": args.device, "threads": torch.get_num_threads()}
    runs = []

    def ours() -> Selection:
        return select_blocks(FeatureBlocks.of(features, offsets), lengths, budget, device=args.device)

    for round_ in range(args.rounds):
        reference, reference_s = timed(lambda: fast_greedy_map(features.double().numpy(), args.k, 1.0))
        selection, ours_s = timed(ours)
        runs.append(
            {
                **shape,
                "round": round_,
                "reference_s": reference_s,
                "select_s": ours_s,
                "algorithm": selection.algorithm,
                "ratio": reference_s / ours_s,
                "same_picks": selection.indices == reference,
                "first_difference": next(
                    (i for i, (a, b) in enumerate(zip(selection.indices, reference, strict=True)) if a != b), None
                ),
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    if args.lazy:
        blocks = FeatureBlocks.of(features, offsets)
        costs, limit = budget_costs(budget, lengths)
        lazy, lazy_s = timed(lambda: lazy_greedy(LogDetObjective(blocks, 1.0, args.device), costs, limit, offsets[:-1]))
        runs.append({**shape, "lazy_s": lazy_s, "same_picks": lazy.order == reference})
        print(json.dumps(runs[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "one_row.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
