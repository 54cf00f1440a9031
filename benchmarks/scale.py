"""Scale on one machine: selection over 10k, 100k and 1M examples, and the embedder's memory against N.

    python benchmarks/scale.py [--sizes 10000 100000 1000000] [--skip-embedding]

Selection: synthetic features shaped like the default model's after the compression a request of that size gets
by default (SmolLM2-135M's d = 576 and spectrum, log-normal loss tokens per example with median 40, at most
`rank` rows per example in `dim` dimensions; benchmarks/synthetic.py, default_compression), written as
a features store, K = 1% of N. Each
algorithm runs in a fresh process: wall time of `select_features` (reading the store included), peak RSS of the
process, gain evaluations, and the objective relative to lazy greedy's. The peak is compared with the formula
README documents.

Embedding: a chatterbot-shaped JSONL (the English corpus's rows, cycled with fresh ids) of 20,000 and 100,000
examples, embedded with the tiny built-in model (the pipeline's memory does not depend on the model's size):
peak RSS of each run. Writes benchmarks/results/scale/scale.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import synthetic  # benchmarks/ is on the path of a script run from it
import torch

from fishersft.contract.compression import DEFAULT_SELECTION_MEMORY, Compression, default_compression
from fishersft.features.files import load_features
from fishersft.features.store import FeatureStoreWriter
from fishersft.selection.blocks import padded_rows

OUT = Path(__file__).parent / "results" / "scale"
SOURCE_DIM = 576
WRITE_CHUNK = 20_000


def write_synthetic_store(path: Path, n: int, seed: int = 0, compression: Compression | None = None) -> Path:
    """A compressed store of n synthetic examples: each keeps min(loss tokens, rank) rows of `dim` dimensions
    (`compression`: by default the one a request of that size gets)."""
    compression = compression or default_compression(n, SOURCE_DIM)
    dim = compression.output_dim(SOURCE_DIM)
    g = torch.Generator().manual_seed(seed)
    lengths = synthetic.lengths(n, g)
    rows = lengths.clamp(max=compression.rank)
    topics = synthetic.Topics.draw(dim, g)
    writer = FeatureStoreWriter(path, dim, compression)
    writer.add(list(range(n)), lengths.tolist())
    for first in range(0, n, WRITE_CHUNK):
        counts = rows[first : first + WRITE_CHUNK]
        block = synthetic.rows(counts, topics, g).to(torch.float16)
        writer.write(range(first, first + len(counts)), block.split(counts.tolist()))
    return writer.commit()


def predicted_bytes(store_path: Path) -> dict[str, int]:
    """README's formula: float16 blocks padded per bucket, ~400 bytes of bookkeeping per example (its id, the
    id index, the lazy heap's entry and cached gain), and the gain scratch (a 64 MiB float32 chunk, its float16
    gather, two half-width products: 224 MiB)."""
    store = load_features(store_path)
    padded = sum(padded_rows(int(n)) for n in np.diff(store.offsets))
    return {"blocks": 2 * store.features.shape[1] * padded, "per_example": 400 * len(store.ids), "scratch": 224 << 20}


def peak_rss() -> int:
    """This process's peak resident set (VmHWM): unlike getrusage's ru_maxrss, not inherited across exec from
    the parent that spawned it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(store: str, algorithm: str, k: int) -> None:
    from fishersft.contract.selection import Budget, SelectionOptions
    from fishersft.pipeline import select_features

    features = load_features(store)
    base = peak_rss()
    start = time.perf_counter()

    def progress(phase: str, done: int, total: int) -> None:  # the parent reads the last line if it stops us
        if done % 100 == 0:
            print(json.dumps({"picks": done, "elapsed_s": time.perf_counter() - start}), file=sys.stderr, flush=True)

    result = select_features(
        features,
        SelectionOptions(budget=Budget(examples=k), weighting="tokens", algorithm=algorithm),
        device="cpu",
        progress=progress,
    )
    seconds = time.perf_counter() - start
    peak = peak_rss()
    report = {"wall_s": seconds, "peak_rss": peak, "base_rss": base, "evaluations": result.gain_evaluations}
    print(json.dumps({**report, "objective": result.objective, "picks": len(result.selected)}))


def run_child(*args: str, limit_s: float | None = None) -> dict:
    """The child's JSON report; past `limit_s`, what it reached: {"finished": false, picks, elapsed_s}."""
    try:
        out = subprocess.run(
            [sys.executable, __file__, *args], capture_output=True, text=True, check=False, timeout=limit_s
        )
    except subprocess.TimeoutExpired as stopped:
        lines = (stopped.stderr or b"").decode().strip().splitlines()
        reached = [json.loads(line) for line in lines if line.startswith('{"picks"')]
        return {"finished": False, "limit_s": limit_s, **(reached[-1] if reached else {"picks": 0})}
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return {"finished": True, **json.loads(out.stdout.strip().splitlines()[-1])}


def selection_rows(sizes: list[int], work: Path, limit_s: float) -> list[dict]:
    rows = []
    for n in sizes:
        start = time.perf_counter()
        store = write_synthetic_store(work / f"n{n}", n)
        write_s = time.perf_counter() - start
        k = n // 100
        predicted = predicted_bytes(store)
        lazy = None
        for algorithm in ("lazy", "stochastic"):
            run = run_child("--child", str(store), algorithm, str(k), limit_s=limit_s)
            lazy = lazy or run
            finished = run["finished"] and lazy["finished"]
            rows.append(
                {
                    "n": n,
                    "k": k,
                    "algorithm": algorithm,
                    **run,
                    "ratio_to_lazy": run["objective"] / lazy["objective"] if finished else None,
                    "store_bytes": sum(f.stat().st_size for f in store.iterdir()),
                    "predicted_peak": run["base_rss"] + sum(predicted.values()),
                    "write_store_s": write_s,
                    "compression": load_features(store).meta["compression"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        for f in store.iterdir():
            f.unlink()
    return rows


def embedding_child(data: str, out: str) -> None:
    from fishersft.models.registry import resolve_model
    from fishersft.pipeline import embed_dataset

    start = time.perf_counter()
    embedding = embed_dataset(data, resolve_model("tiny-llama"), out, max_length=256)
    peak = peak_rss()
    n = len(embedding.features.ids)
    print(json.dumps({"n": n, "peak_rss": peak, "wall_s": time.perf_counter() - start}))


def embedding_rows(work: Path) -> list[dict]:
    from fishersft.data.corpora import chatterbot

    base = chatterbot(["english"])
    rows = []
    for n in (20_000, 100_000):
        data = work / f"chat{n}.jsonl"
        with data.open("w") as f:
            for i in range(n):
                f.write(json.dumps({**base[i % len(base)], "id": f"r{i}"}) + "\n")
        run = run_child("--embedding-child", str(data), str(work / f"chat{n}.features"))
        rows.append({**run, "jsonl_bytes": data.stat().st_size})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--skip-embedding", action="store_true")
    parser.add_argument("--limit-s", type=float, default=1800, help="stop a selection after this long (1800)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", nargs=3, metavar=("STORE", "ALGORITHM", "K"), help=argparse.SUPPRESS)
    parser.add_argument("--embedding-child", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    if args.embedding_child:
        embedding_child(*args.embedding_child)
        return
    with tempfile.TemporaryDirectory(prefix="fishersft-scale-") as tmp:
        result = {
            "selection_memory_bytes": DEFAULT_SELECTION_MEMORY,
            "selection": selection_rows(args.sizes, Path(tmp), args.limit_s),
            "embedding": [] if args.skip_embedding else embedding_rows(Path(tmp)),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
