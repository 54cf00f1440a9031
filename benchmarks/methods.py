"""Budget curves of the selection methods: each method's subset, fine-tuned with LoRA on the default model, against
seeded random subsets of the same loss tokens, at small to realistic budgets, overall and on the worst group.

    python benchmarks/methods.py [--only english,humaneval] [--fractions 0.02,0.1,0.3] [--device cuda]
                                 [--methods fisher,random,kcenter,loss,ifd] [--epochs 2] [--deadline-s 540]

Per dataset and budget K (a fraction of the pool's examples) it runs `fishersft.training.comparison.compare`,
the function behind POST /v1/comparisons: every method at K examples and at the random subsets' mean loss tokens
(equal cost, the primary axis). Each comparison is written as it finishes (`<dataset>-<K>.json`), so a run
stopped at its deadline keeps what it measured; then `methods.json` (one row per run) and `methods.png` (held-out
loss against loss tokens, a line per method, the random runs as a band).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from fishersft.contract.comparison import ComparisonBudget, ComparisonOptions, ComparisonResult
from fishersft.contract.selection import METHODS, Method
from fishersft.contract.training import EvalRequest, TrainingConfig
from fishersft.data import corpora
from fishersft.models.loading import resolve_device
from fishersft.models.registry import DEFAULT_MODEL, resolve_model
from fishersft.pipeline import embed_dataset
from fishersft.training.comparison import compare

DATASETS = {
    "english": ("chatterbot English", "category", lambda: corpora.chatterbot(["english"])),
    "humaneval": ("HumanEval", "category", corpora.humaneval),
    "all": ("chatterbot, 28 languages", "language", lambda: corpora.chatterbot(corpora.chatterbot_languages())),
}
HOLDOUT = 0.15


def run(name: str, fractions: list[float], methods: list[Method], args: argparse.Namespace) -> None:
    title, stratify_by, rows = DATASETS[name]
    model_dir, device = resolve_model(args.model), resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="fishersft-methods-") as tmp:
        data = Path(tmp) / f"{name}.jsonl"
        n = corpora.write_jsonl(rows(), data)
        features = embed_dataset(data, model_dir, Path(tmp) / "features", device=args.device).features
        pool = round(n * (1 - HOLDOUT))
        for fraction in fractions:
            out = args.out / f"{name}-{fraction:g}.json"
            if out.exists() or time.monotonic() > args.deadline:
                continue
            started = time.perf_counter()
            options = ComparisonOptions(
                budget=ComparisonBudget(examples=max(1, round(fraction * pool))),
                random_seeds=args.seeds,
                methods=methods,
                training=TrainingConfig(epochs=args.epochs),
                eval=EvalRequest(holdout_fraction=HOLDOUT, stratify_by=stratify_by),
                eval_points=1,
            )
            result = compare(data, model_dir, args.model, features, options, device=device)
            record = {"dataset": title, "fraction": fraction, **result.model_dump(mode="json", by_alias=True)}
            out.write_text(json.dumps(record, indent=1) + "\n")
            print(f"{name} K={fraction:g}: {time.perf_counter() - started:.0f}s " + summary(result), flush=True)


def summary(result: ComparisonResult) -> str:
    tokens = result.summary.get("tokens")
    return json.dumps(tokens.model_dump() if tokens else None)


def table(results: list[dict]) -> list[dict]:
    """One row per run: dataset, budget fraction, method (fisher weighting or random seed), cost and losses."""
    rows = []
    for result in results:
        for r in result["runs"]:
            rows.append(
                {
                    "dataset": result["dataset"],
                    "fraction": result["fraction"],
                    "run": r["method"]
                    if r["method"] not in ("fisher", "random")
                    else (f"fisher/{r['weighting']}" if r["method"] == "fisher" else f"random/{r['seed']}"),
                    "budget_kind": r["budget_kind"],
                    "examples": r["examples"],
                    "loss_tokens": r["loss_tokens"],
                    "loss_after": r["loss_after"],
                    "worst_group": r["worst_group"]["loss"] if r["worst_group"] else None,
                }
            )
    return rows


def plot(results: list[dict], out: Path) -> None:
    """Held-out loss (top) and worst-group loss (bottom) at equal loss tokens, per dataset and budget: a line per
    method, the random runs as mean and range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in results})
    figure, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 7), squeeze=False)
    for column, dataset in enumerate(datasets):
        chosen = sorted((r for r in results if r["dataset"] == dataset), key=lambda r: r["fraction"])
        tokens = [statistics.mean(r["loss_tokens"] for r in c["runs"] if r["method"] == "random") for c in chosen]
        ticks = [f"{c['fraction']:.0%}\n{n:,.0f} tok" for c, n in zip(chosen, tokens, strict=True)]
        for row, metric in enumerate(("loss_after", "worst")):
            axis = axes[row][column]

            def value(run: dict, metric: str = metric) -> float:
                return run["worst_group"]["loss"] if metric == "worst" else run["loss_after"]

            random = [[value(r) for r in c["runs"] if r["method"] == "random"] for c in chosen]
            means = [statistics.mean(v) for v in random]
            spread = [
                [m - min(v) for m, v in zip(means, random, strict=True)],
                [max(v) - m for m, v in zip(means, random, strict=True)],
            ]
            axis.errorbar(
                range(len(chosen)),
                means,
                yerr=spread,
                color="grey",
                capsize=6,
                linewidth=2,
                label="random (mean, range)",
            )
            methods = sorted({r["method"] for c in chosen for r in c["runs"]} - {"random"})
            for method in methods:
                values = [
                    next(value(r) for r in c["runs"] if r["budget_kind"] == "tokens" and r["method"] == method)
                    for c in chosen
                ]
                axis.plot(range(len(chosen)), values, marker="o", label=method)
            axis.set_xticks(range(len(chosen)), ticks)
            axis.set_xlabel("budget: share of the pool, loss tokens (equal for every method)")
            axis.set_ylabel("worst-group held-out loss" if metric == "worst" else "held-out loss")
            axis.set_title(dataset, fontsize=9)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="english,humaneval", help="datasets: " + ", ".join(DATASETS))
    parser.add_argument("--fractions", default="0.02,0.1,0.3", help="budgets K as fractions of the pool's examples")
    parser.add_argument("--methods", default="fisher,random,kcenter,loss,ifd", help="of " + ", ".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="random subsets per budget")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--deadline-s", type=float, default=float("inf"), help="start no comparison after this")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/methods"))
    args = parser.parse_args()
    args.deadline = time.monotonic() + args.deadline_s
    args.out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in METHODS if m in args.methods.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]
    for name in args.only.split(","):
        run(name, fractions, methods, args)
    results = [json.loads(p.read_text()) for p in sorted(args.out.glob("*-*.json"))]
    (args.out / "methods.json").write_text(json.dumps(table(results), indent=1) + "\n")
    if results:
        plot(results, args.out / "methods.png")


if __name__ == "__main__":
    main()
