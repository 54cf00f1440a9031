"""Quality of compressed features: the exact objective (on every loss token's row) of the subset chosen from
compressed features, divided by that of the subset chosen from full features. Goal: >= 0.99.

    python benchmarks/compression.py [--real DIR ...] [--k 30]

Datasets: synthetic features shaped like SmolLM2-135M's (benchmarks/synthetic.py) and real SmolLM2-135M-Instruct
features of chatterbot-corpus English and HumanEval (embedded uncompressed first unless given as stores).
Settings: the defaults (token budget with the `tokens` weighting, example budget with `mean`) and the paper's
weighting under an example budget. Writes benchmarks/results/compression/quality.{json,md}.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import synthetic  # benchmarks/ is on the path of a script run from it
import torch

from fishersft.contract.compression import COMPRESSION_LADDER, Compression
from fishersft.contract.selection import Budget, SelectionOptions, SelectionResult
from fishersft.data.corpora import chatterbot, humaneval, write_jsonl
from fishersft.features.files import load_features
from fishersft.features.set import FeatureSet
from fishersft.features.store import compress_store
from fishersft.models.registry import DEFAULT_MODEL, resolve_model
from fishersft.pipeline import embed_dataset, select_features

OUT = Path(__file__).parent / "results" / "compression"
UNCOMPRESSED = Compression(rank=1 << 30)
CONFIGS = [
    *(Compression(rank=r) for r in (4, 8, 16, 32, 64)),
    *(Compression(rank=32, dim=dim) for dim in (384, 256, 128)),
    *(Compression(rank=32, dim=dim, projection="gaussian") for dim in (384, 256)),
]


def full_objective(raw: FeatureSet, indices: list[int], weighting: str, lam: float = 1.0) -> float:
    """log det(lam I + sum of the chosen examples' terms) in float64 from every loss token's row."""
    d = raw.features.shape[1]
    sigma = lam * torch.eye(d, dtype=torch.float64)
    for i in indices:
        x = torch.from_numpy(np.asarray(raw.features[raw.offsets[i] : raw.offsets[i + 1]], dtype=np.float64))
        if weighting == "mean":
            x = x.mean(0, keepdim=True)
        elif weighting == "examples":
            x = x / len(x) ** 0.5
        sigma += x.T @ x
    return float(torch.linalg.slogdet(sigma).logabsdet)


def real_store(name: str, work: Path) -> Path:
    rows = chatterbot(["english"]) if name == "chatterbot-english" else humaneval()
    data = work / f"{name}.jsonl"
    write_jsonl(rows, data)
    embed_dataset(data, resolve_model(DEFAULT_MODEL), work / name, compression=UNCOMPRESSED)
    return work / name


def measure(name: str, raw: FeatureSet, work: Path, k: int, configs: list[Compression], hard_only: bool) -> list[dict]:
    reference = compress_store(raw, work / f"{name}-full", UNCOMPRESSED)
    tokens = round(k * raw.n_tokens / len(raw.ids))
    settings = [("tokens", Budget(tokens=tokens)), ("mean", Budget(examples=k)), ("tokens", Budget(examples=k))]
    settings = settings[:1] if hard_only else settings
    rows = []
    for weighting, budget in settings:
        full = select_features(reference, SelectionOptions(budget=budget, weighting=weighting))
        best = full_objective(raw, _indices(raw, full), weighting)
        for config in configs:
            if weighting == "mean" and not config.projects(raw.features.shape[1]) and config.rank != configs[0].rank:
                continue  # the mean is one row: rank never changes it
            start = time.perf_counter()
            store = compress_store(raw, work / f"{name}-{len(rows)}", config)
            compress_s = time.perf_counter() - start
            chosen = select_features(store, SelectionOptions(budget=budget, weighting=weighting))
            ratio = full_objective(raw, _indices(raw, chosen), weighting) / best
            rows.append(
                {
                    "dataset": name,
                    "n": len(raw.ids),
                    "weighting": weighting,
                    "budget": budget.model_dump(),
                    **config.model_dump(),
                    "ratio": ratio,
                    "same_picks": sorted(chosen.selected, key=str) == sorted(full.selected, key=str),
                    "store_bytes": int(store.features.nbytes),
                    "full_bytes": int(raw.features.shape[0] * raw.features.shape[1] * 2),
                    "compress_s": compress_s,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _indices(raw: FeatureSet, result: SelectionResult) -> list[int]:
    position = {str(i): k for k, i in enumerate(raw.ids)}
    return [position[str(i)] for i in result.selected]


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | budget | weighting | rank | dim | projection | ratio | same picks | store / full |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget = ", ".join(f"{v} {k}" for k, v in r["budget"].items())
        dim = r["dim"] or "all"
        projection = r["projection"] if r["dim"] else ""
        lines.append(
            f"| {r['dataset']} | {budget} | {r['weighting']} | {r['rank']} | {dim} | {projection} | "
            f"{r['ratio']:.4f} | {'yes' if r['same_picks'] else 'no'} | {r['store_bytes'] / r['full_bytes']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, nargs="*", help="uncompressed real features stores (default: embed)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where quality.json and .md go ({OUT})")
    parser.add_argument("--k", type=int, default=30, help="examples per subset (30)")
    parser.add_argument("--synthetic-n", type=int, default=3000, help="synthetic examples (3000; 0: none)")
    parser.add_argument(
        "--ladder",
        action="store_true",
        help="only the compressions the default chooses from, only the token budget (the hard case): for large N",
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        configs, hard_only = (list(COMPRESSION_LADDER), True) if args.ladder else (CONFIGS, False)
        if args.synthetic_n:
            features, offsets = synthetic.dataset(args.synthetic_n)
            raw = FeatureSet(features.numpy(), offsets.numpy(), list(range(args.synthetic_n)))
            rows += measure("synthetic", raw, work, args.k, configs, hard_only)
        stores = (
            args.real if args.real is not None else [real_store(n, work) for n in ("chatterbot-english", "humaneval")]
        )
        for store in stores:
            rows += measure(store.name, load_features(store), work, args.k, configs, hard_only)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(rows, indent=1))
    (args.out / "quality.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
