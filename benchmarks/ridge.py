"""The ridge against the features' scale: how fisher's picks change when lambda is set relative to the features'
per-dimension second moment instead of the fixed default 1.0.

    python benchmarks/ridge.py [--only english,humaneval] [--out benchmarks/results/ridge]

For each dataset (embedded by the default model) the scale is s = mean over loss tokens of ||x||^2 / d (from the
store's rows), the average eigenvalue one token adds to Sigma. lambda = c * s for c from 1e-3 to 1e3 (and the
default 1.0); at token budgets of 2%, 10% and 30% of the pool's loss tokens it records what fisher (weighting
tokens) picks: examples, loss tokens per example against the pool's mean (length ratio), groups covered, and the
overlap (Jaccard) with the default's picks. `ridge.json` holds the rows, `ridge.png` draws examples picked and
overlap against c. Selection only: what each lambda does to held-out loss after fine-tuning is a comparison
(`lambda` in POST /v1/comparisons), not measured here.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.data import corpora
from fishersft.models.registry import DEFAULT_MODEL, resolve_model
from fishersft.pipeline import embed_dataset, select_features

DATASETS = {
    "english": ("chatterbot English", lambda: corpora.chatterbot(["english"])),
    "humaneval": ("HumanEval", corpora.humaneval),
}
FACTORS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
SHARES = (0.02, 0.1, 0.3)


def run(name: str, model: str) -> list[dict]:
    title, rows = DATASETS[name]
    with tempfile.TemporaryDirectory(prefix="fishersft-ridge-") as tmp:
        data, examples = Path(tmp) / f"{name}.jsonl", rows()
        corpora.write_jsonl(examples, data)
        features = embed_dataset(data, resolve_model(model), Path(tmp) / "features").features
        labels = [{"category": row["category"]} for row in examples]
        matrix = features.features.astype(np.float64)
        scale = float((matrix**2).sum() / (matrix.shape[1] * features.n_tokens))
        results = []
        for share in SHARES:
            budget = Budget(tokens=max(1, round(share * features.n_tokens)))
            default = set(select_features(features, SelectionOptions(budget=budget, weighting="tokens")).selected)
            for factor in (*FACTORS, None):
                lam = 1.0 if factor is None else factor * scale
                started = time.perf_counter()
                options = SelectionOptions(budget=budget, weighting="tokens", lambda_=lam)
                result = select_features(features, options, labels=labels)
                picked = set(result.selected)
                results.append(
                    {
                        "dataset": title,
                        "scale": scale,
                        "share": share,
                        "factor": factor,
                        "lambda": lam,
                        "examples": len(picked),
                        "length_ratio": result.length_ratio,
                        "groups": f"{result.groups.covered}/{result.groups.total}" if result.groups else None,
                        "jaccard_with_default": len(picked & default) / len(picked | default),
                        "seconds": time.perf_counter() - started,
                    }
                )
                print(json.dumps(results[-1]), flush=True)
        return results


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    figure, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 7), squeeze=False)
    for column, dataset in enumerate(datasets):
        scale = next(r["scale"] for r in rows if r["dataset"] == dataset)
        for share in SHARES:
            chosen = [r for r in rows if r["dataset"] == dataset and r["share"] == share and r["factor"] is not None]
            factors = [r["factor"] for r in chosen]
            axes[0][column].plot(factors, [r["examples"] for r in chosen], marker="o", label=f"{share:.0%} of tokens")
            axes[1][column].plot(factors, [r["jaccard_with_default"] for r in chosen], marker="o", label=f"{share:.0%}")
        for row, ylabel in enumerate(("examples picked", "overlap with lambda = 1.0 (Jaccard)")):
            axis = axes[row][column]
            axis.axvline(1.0 / scale, color="grey", linestyle="--", label="lambda = 1.0 (default)")
            axis.set_xscale("log")
            axis.set_xlabel(f"lambda / s  (s = {scale:.3g}: a token's mean square per dimension)")
            axis.set_ylabel(ylabel)
            axis.set_title(dataset, fontsize=9)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="english,humaneval", help="of " + ", ".join(DATASETS))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ridge"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [row for name in args.only.split(",") for row in run(name, args.model)]
    (args.out / "ridge.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.out / "ridge.png")


if __name__ == "__main__":
    main()
