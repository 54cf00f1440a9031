"""The selection study: each method's subset, fine-tuned with LoRA on the default model, against seeded random
subsets of the same loss tokens, from small to realistic budgets, overall and on the worst group, on several
datasets, one of them a distribution shift (the pool from some languages, the target and held-out set another).

    python benchmarks/study.py [--only english,humaneval,mixed,all,shift] [--fractions 0.02,0.1,0.3] [--device cuda]
                               [--methods fisher,random,kcenter,loss,ifd,similarity] [--weightings uncertainty]
                               [--budget-kinds tokens] [--epochs 2] [--training-seed 0] [--deadline-s 3000]
                               [--out DIR]
    python benchmarks/study.py --data rows.jsonl [--target target.jsonl] [--stratify-by category] ...

The first form runs the built-in datasets (real data from installed packages); the second one JSONL dataset of
your own (fishersft's row format), with an optional target whose half is held out as for the shift.

Per dataset and budget K (a fraction of the pool's examples; its random subsets hold about that fraction of the
pool's loss tokens) it runs `fishersft.training.comparison.compare`, the function behind POST /v1/comparisons:
each method at the random subsets' mean loss tokens (equal cost, the primary axis) and, with `--budget-kinds
examples,tokens`, at K examples too. Held out: 15% of the dataset stratified by its group label, or for a dataset
with a target, half of the target (the methods with a target select for the other half). Each comparison is
written as it finishes (`<dataset>-<K>.json`) and not run again, so a run stopped at its deadline keeps what it
measured; then, over every cell under --out (a cell run again into a subdirectory adds the runs the first lacks),
`study.json` (one row per run), `study.md` (the table) and `study.png` (held-out loss against budget, a line per
method, the random runs as a band; overall and worst group).
"""

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fishersft.contract.comparison import (
    BUDGET_KINDS,
    COMPARED_WEIGHTINGS,
    ComparisonBudget,
    ComparisonOptions,
    ComparisonResult,
    ComparisonRun,
)
from fishersft.contract.compression import TARGET_COMPRESSION
from fishersft.contract.selection import METHODS, WEIGHTINGS, needs_difficulty
from fishersft.contract.training import EvalRequest, TrainingConfig
from fishersft.data import corpora
from fishersft.models.loading import resolve_device
from fishersft.models.registry import DEFAULT_MODEL, resolve_model
from fishersft.pipeline import embed_dataset, score_difficulty
from fishersft.training.comparison import compare

Rows = Callable[[], list[dict]]


@dataclass(frozen=True)
class Dataset:
    title: str
    stratify_by: str
    pool: Rows
    target: Rows | None = None
    """Rows of the target distribution: half is held out, the methods with a target select for the rest."""


def as_chat(row: dict) -> dict:
    """A prompt/response row as a user/assistant chat row, its other fields kept (one row shape per file)."""
    turns = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    return {k: v for k, v in row.items() if k not in ("prompt", "response")} | {"messages": turns}


SHIFT_POOL = ("portuguese", "dutch", "german", "french")
SHIFT_TARGET = ("spanish",)
DATASETS = {
    "english": Dataset("chatterbot English", "category", lambda: corpora.chatterbot(["english"])),
    "humaneval": Dataset("HumanEval", "category", corpora.humaneval),
    "mixed": Dataset(
        "chatterbot English + HumanEval",
        "category",
        lambda: corpora.chatterbot(["english"]) + [as_chat(r) for r in corpora.humaneval()],
    ),
    "all": Dataset("chatterbot, 28 languages", "language", lambda: corpora.chatterbot(corpora.chatterbot_languages())),
    "shift": Dataset(
        f"shift: pool {'+'.join(SHIFT_POOL)}, target {'+'.join(SHIFT_TARGET)}",
        "category",
        lambda: corpora.chatterbot(SHIFT_POOL),
        lambda: corpora.chatterbot(SHIFT_TARGET),
    ),
}
HOLDOUT = 0.15


def from_file(data: Path, target: Path | None, stratify_by: str) -> Dataset:
    """A dataset of one's own: JSONL rows, an optional target (half held out), groups from `stratify_by`."""

    def rows(path: Path) -> Rows:
        return lambda: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    title = data.name if target is None else f"{data.name}, target {target.name}"
    return Dataset(title, stratify_by, rows(data), rows(target) if target is not None else None)


def run(name: str, dataset: Dataset, args: argparse.Namespace) -> None:
    model_dir, device = resolve_model(args.model), resolve_device(args.device)
    methods = [m for m in args.methods if dataset.target is not None or m != "similarity"]  # it needs a target
    cells = {fraction: args.out / f"{name}-{fraction:g}.json" for fraction in args.fractions}
    pending = [fraction for fraction, out in cells.items() if not out.exists()]
    if not pending or time.monotonic() > args.deadline:
        return  # nothing to run: no embedding
    with tempfile.TemporaryDirectory(prefix="fishersft-study-") as tmp:
        data, target_data = Path(tmp) / f"{name}.jsonl", Path(tmp) / f"{name}-target.jsonl"
        n = corpora.write_jsonl(dataset.pool(), data)
        features = embed_dataset(data, model_dir, Path(tmp) / "features", device=args.device).features
        if needs_difficulty(methods):
            features = score_difficulty(data, model_dir, Path(tmp) / "features", device=args.device)
        target = None
        if dataset.target is not None:
            corpora.write_jsonl(dataset.target(), target_data)
            target = embed_dataset(
                target_data, model_dir, Path(tmp) / "target", device=args.device, compression=TARGET_COMPRESSION
            ).features
        pool = n if target is not None else round(n * (1 - HOLDOUT))
        held_out = EvalRequest(holdout_fraction=HOLDOUT, stratify_by=dataset.stratify_by) if target is None else None
        for fraction in pending:
            if time.monotonic() > args.deadline:
                break
            started = time.perf_counter()
            options = ComparisonOptions(
                budget=ComparisonBudget(examples=max(1, round(fraction * pool))),
                random_seeds=args.seeds,
                methods=methods,
                weightings=args.weightings,
                budget_kinds=args.budget_kinds,
                training=TrainingConfig(epochs=args.epochs, seed=args.training_seed),
                eval=held_out,
                eval_points=1,
            )
            result = compare(
                data,
                model_dir,
                args.model,
                features,
                options,
                target=target,
                target_data=target_data if target is not None else None,
                device=device,
            )
            record = {"dataset": dataset.title, "fraction": fraction, **result.model_dump(mode="json", by_alias=True)}
            cells[fraction].write_text(json.dumps(record, indent=1) + "\n")
            print(f"{name} K={fraction:g}: {time.perf_counter() - started:.0f}s " + summary(result), flush=True)


def merged(cells: list[dict]) -> list[dict]:
    """One cell per dataset and budget: a cell run again into a subdirectory of --out (with other methods or
    weightings) adds the runs the first lacks; its random runs, the same seeds, are the first's."""
    by_key: dict[tuple[str, float], dict] = {}
    for cell in cells:
        first = by_key.setdefault((cell["dataset"], cell["fraction"]), cell | {"runs": []})
        have = {(label(r), r["budget_kind"]) for r in first["runs"]}
        first["runs"] += [r for r in cell["runs"] if (label(r), r["budget_kind"]) not in have]
    return list(by_key.values())


def summary(result: ComparisonResult) -> str:
    tokens = result.summary.get("tokens")
    return json.dumps(tokens.model_dump() if tokens else None)


def label(run: dict) -> str:
    return ComparisonRun.model_validate(run).label


def table(results: list[dict]) -> list[dict]:
    """One row per run: dataset, budget fraction, run (`fisher/tokens`, `random/0`, `loss`), cost and losses."""
    return [
        {
            "dataset": result["dataset"],
            "fraction": result["fraction"],
            "run": label(r),
            "budget_kind": r["budget_kind"],
            "examples": r["examples"],
            "loss_tokens": r["loss_tokens"],
            "loss_after": r["loss_after"],
            "worst_group": r["worst_group"]["loss"] if r["worst_group"] else None,
        }
        for result in results
        for r in result["runs"]
    ]


def value(run: dict, metric: str) -> float:
    return run["worst_group"]["loss"] if metric == "worst" else run["loss_after"]


def verdict(loss: float, random: list[float]) -> str:
    """`win` below every random seed, `loss` above every one, else `tie` (inside the seeds' spread)."""
    return "win" if loss < min(random) else "loss" if loss > max(random) else "tie"


def uniform(runs: list[dict]) -> list[dict]:
    """The uniform random runs (their mean loss tokens are the other methods' token budget)."""
    return [r for r in runs if r["method"] == "random" and not r.get("balanced_by")]


def yardstick(runs: list[dict]) -> tuple[str, list[dict]]:
    """What the methods are judged against: the uniform random runs, or the balanced ones (grouped rows) when their
    mean held-out loss is lower."""
    balanced = [r for r in runs if r["method"] == "random" and r.get("balanced_by")]
    plain = uniform(runs)
    if balanced and statistics.mean(r["loss_after"] for r in balanced) < statistics.mean(
        r["loss_after"] for r in plain
    ):
        return "random-balanced", balanced
    return "random", plain


def markdown(results: list[dict]) -> str:
    """Per dataset and budget, at equal loss tokens: the yardstick's random runs' mean [min, max], then each
    method's held-out loss and worst-group loss with its verdict against those random seeds."""
    lines = [
        "| data | budget (loss tokens) | run | held-out loss | | worst group | |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in sorted(results, key=lambda r: (r["dataset"], r["fraction"])):
        runs = result["runs"]
        name, random = yardstick(runs)
        tokens = round(statistics.mean(r["loss_tokens"] for r in uniform(runs)))
        spread = {m: [value(r, m) for r in random] for m in ("loss_after", "worst")}

        def shown(values: list[float]) -> str:
            return f"{statistics.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"

        lines.append(
            f"| {result['dataset']} | {result['fraction']:.0%} ({tokens:,}) | {name}, {len(random)} seeds "
            f"| {shown(spread['loss_after'])} | | {shown(spread['worst'])} | |"
        )
        for r in sorted((r for r in runs if r["method"] != "random" and r["budget_kind"] == "tokens"), key=label):
            loss, worst = value(r, "loss_after"), value(r, "worst")
            lines.append(
                f"| | | {label(r)} | {loss:.3f} | {verdict(loss, spread['loss_after'])} "
                f"| {worst:.3f} | {verdict(worst, spread['worst'])} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], out: Path) -> None:
    """Held-out loss (top) and worst-group loss (bottom) at equal loss tokens against the budget, per dataset: a
    line per method, the random runs as mean and range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in results})
    figure, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 7), squeeze=False)
    for column, dataset in enumerate(datasets):
        chosen = sorted((r for r in results if r["dataset"] == dataset), key=lambda r: r["fraction"])
        tokens = [statistics.mean(r["loss_tokens"] for r in uniform(c["runs"])) for c in chosen]
        ticks = [f"{c['fraction']:.0%}\n{n:,.0f} tok" for c, n in zip(chosen, tokens, strict=True)]
        for row, metric in enumerate(("loss_after", "worst")):
            axis = axes[row][column]
            random = [[value(r, metric) for r in yardstick(c["runs"])[1]] for c in chosen]
            means = [statistics.mean(v) for v in random]
            axis.fill_between(
                range(len(chosen)),
                [min(v) for v in random],
                [max(v) for v in random],
                color="grey",
                alpha=0.3,
                label="random yardstick (range)",
            )
            axis.plot(range(len(chosen)), means, color="grey", linewidth=2, label="random yardstick (mean)")
            labels = sorted({label(r) for c in chosen for r in c["runs"] if r["method"] != "random"})
            for name in labels:
                points = [
                    (x, value(r, metric))
                    for x, c in enumerate(chosen)
                    for r in c["runs"]
                    if r["budget_kind"] == "tokens" and label(r) == name
                ]
                axis.plot(*zip(*points, strict=True), marker="o", label=name)
            axis.set_xticks(range(len(chosen)), ticks)
            axis.set_xlabel("budget: share of the pool, loss tokens (equal for every method)")
            axis.set_ylabel("worst-group held-out loss" if metric == "worst" else "held-out loss")
            axis.set_title(dataset, fontsize=9)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def names(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = text.split(",")
        unknown = sorted(set(chosen) - set(choices))
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}: of {', '.join(choices)}")
        return [c for c in choices if c in chosen]

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", type=names(tuple(DATASETS)), help="built-in datasets (default: all but mixed)")
    parser.add_argument("--data", type=Path, help="a JSONL dataset of your own (fishersft rows), instead")
    parser.add_argument("--target", type=Path, help="with --data: the target's rows (half held out)")
    parser.add_argument("--stratify-by", default="category", help="with --data: the group field (worst group)")
    parser.add_argument("--fractions", default="0.02,0.1,0.3", help="budgets K as fractions of the pool's examples")
    parser.add_argument("--methods", type=names(METHODS), default=list(METHODS), help="of " + ", ".join(METHODS))
    parser.add_argument(
        "--weightings", type=names(WEIGHTINGS), default=list(COMPARED_WEIGHTINGS), help="fisher's weightings"
    )
    parser.add_argument("--budget-kinds", type=names(BUDGET_KINDS), default=["tokens"])
    parser.add_argument("--seeds", type=int, default=3, help="random subsets per budget")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--training-seed", type=int, default=0, help="LoRA initialisation and batch order")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--deadline-s", type=float, default=float("inf"), help="start no comparison after this")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/study"))
    args = parser.parse_args()
    if args.target is not None and args.data is None:
        parser.error("--target goes with --data (the built-in shift has its own)")
    args.deadline = time.monotonic() + args.deadline_s
    args.fractions = [float(f) for f in args.fractions.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.data is not None:
        run(args.data.stem, from_file(args.data, args.target, args.stratify_by), args)
    for name in args.only or ([] if args.data else ["english", "humaneval", "all", "shift"]):
        run(name, DATASETS[name], args)
    results = merged([json.loads(p.read_text()) for p in sorted(args.out.rglob("*-*.json"))])
    (args.out / "study.json").write_text(json.dumps(table(results), indent=1) + "\n")
    (args.out / "study.md").write_text(markdown(results))
    if results:
        plot(results, args.out / "study.png")


if __name__ == "__main__":
    main()
