"""Near-duplicate removal at scale: seconds and peak memory of `near_duplicates` on N x d mean features.

    python benchmarks/dedup.py [--n 20000,50000,100000] [--dim 256] [--device cpu] [--out benchmarks/results/dedup]

The rows are seeded Gaussian vectors, a tenth of them noisy copies of earlier ones (cosine about 0.99), read from
a memory-mapped .npy as a features store's means are; threshold 0.95. The work is O(N^2 d / 2) and the memory
O(block x block) beyond the rows' norms, so seconds grow with N^2; `dedup.json` records each N with the
quadratic extrapolation of its time to 1M rows.
"""

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from fishersft.selection.dedup import near_duplicates

TARGET_N = 1_000_000


def rows(n: int, dim: int, path: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    points = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    points[:] = rng.standard_normal((n, dim), dtype=np.float32)
    copies = rng.choice(np.arange(1, n), n // 10, replace=False)
    sources = (rng.random(len(copies)) * copies).astype(np.int64)
    points[copies] = points[sources] + 0.1 * rng.standard_normal((len(copies), dim), dtype=np.float32)
    points.flush()
    return np.load(path, mmap_mode="r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="20000,50000,100000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dedup"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="fishersft-dedup-") as tmp:
        for n in (int(v) for v in args.n.split(",")):
            points = rows(n, args.dim, Path(tmp) / f"{n}.npy")
            start = time.perf_counter()
            survivor = near_duplicates(points, 0.95, device=args.device)
            seconds = time.perf_counter() - start
            results.append(
                {
                    "n": n,
                    "dim": args.dim,
                    "device": args.device,
                    "removed": int((survivor >= 0).sum()),
                    "seconds": round(seconds, 2),
                    "seconds_at_1m_extrapolated": round(seconds * (TARGET_N / n) ** 2),
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                }
            )
            print(json.dumps(results[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dedup.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
