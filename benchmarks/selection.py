"""Selection speed: lazy vs exact greedy on synthetic pre-logit features.

    python benchmarks/selection.py [--n 20000 --d 256 --tokens 32 --k 500]

Two feature models, 32 tokens per example:
- clustered: examples drawn around 50 topic centres, a shared mean and a decaying per-dimension spread, as
  hidden states of real models are (anisotropic, clustered by content);
- isotropic: a random 64-dimensional subspace plus isotropic noise: every candidate looks alike, the hard case
  for lazy greedy.
Exact greedy evaluates every remaining candidate at every step, sum_{k<K} (N - k) gains; running it at full
size takes many minutes, so its count is that sum, and exact and lazy are run side by side (same picks
asserted, evaluations counted) on a smaller instance.
"""

import argparse
import time

import torch

from fishersft.contract.selection import Budget
from fishersft.selection import select


def clustered(n: int, tokens: int, d: int, g: torch.Generator) -> torch.Tensor:
    centres = 2 * torch.randn(50, d, generator=g)
    topic = torch.randint(0, 50, (n,), generator=g)
    example = centres[topic] + 0.5 * torch.randn(n, d, generator=g)
    spread = torch.linspace(1.5, 0.05, d)
    return (
        3 * torch.randn(d, generator=g)
        + example.repeat_interleave(tokens, 0)
        + spread * torch.randn(n * tokens, d, generator=g)
    )


def isotropic(n: int, tokens: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n * tokens, 64, generator=g) @ torch.randn(64, d, generator=g) + 0.5 * torch.randn(
        n * tokens, d, generator=g
    )


def run(name: str, make, n: int, d: int, tokens: int, k: int) -> None:
    g = torch.Generator().manual_seed(0)
    features = make(n, tokens, d, g).to(torch.float16)
    offsets = torch.arange(0, n * tokens + 1, tokens)
    start = time.perf_counter()
    lazy = select(features, offsets, Budget(examples=k))
    seconds = time.perf_counter() - start
    exact_count = sum(n - i for i in range(k))
    random = select(features, offsets, Budget(examples=k), method="random")
    print(
        f"{name:>10}: N={n} d={d} tokens={tokens} K={k}: lazy {seconds:.1f} s, "
        f"{lazy.evaluations:,} gain evaluations vs exact {exact_count:,} "
        f"({exact_count / lazy.evaluations:.1f}x fewer); "
        f"log det {lazy.objective:.1f} (random {random.objective:.1f})",
        flush=True,
    )


def verify(name: str, make, n: int, d: int, tokens: int, k: int) -> None:
    g = torch.Generator().manual_seed(1)
    features = make(n, tokens, d, g).to(torch.float16)
    offsets = torch.arange(0, n * tokens + 1, tokens)
    timings, results = {}, {}
    for lazy in (False, True):
        start = time.perf_counter()
        results[lazy] = select(features, offsets, Budget(examples=k), algorithm="lazy" if lazy else "exact")
        timings[lazy] = time.perf_counter() - start
    assert results[True].indices == results[False].indices, "lazy and exact greedy disagree"
    print(
        f"{name:>10}: N={n} K={k}: same {k} picks in the same order; exact {results[False].evaluations:,} "
        f"evaluations in {timings[False]:.1f} s, lazy {results[True].evaluations:,} in {timings[True]:.1f} s "
        f"({results[False].evaluations / results[True].evaluations:.1f}x fewer)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--k", type=int, default=500)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, make in (("clustered", clustered), ("isotropic", isotropic)):
        verify(name, make, 2_000, args.d, args.tokens, 100)
    for name, make in (("clustered", clustered), ("isotropic", isotropic)):
        run(name, make, args.n, args.d, args.tokens, args.k)


if __name__ == "__main__":
    main()
