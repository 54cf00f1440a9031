"""The real-data study: fisher (three weightings of the objective) against seeded random subsets, fine-tuned with
LoRA on the default model and judged on one held-out set per dataset, at equal examples and at equal loss tokens.

    python benchmarks/study.py [--only english,humaneval,...] [--out benchmarks/results/study]

Each dataset runs `fishersft.training.comparison.compare`, the function behind POST /v1/comparisons and `fishersft
compare`, with weightings tokens (the paper's), examples (1/n_i) and mean (mean-pooled, rank 1): per dataset a
`comparison.json` and `comparison.png`; then `study.json` (the table) and `study.png` (held-out loss per variant
against the random spread, overall and worst group). A dataset whose comparison.json exists is not run again.
"""

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fishersft.contract.comparison import ComparisonBudget, ComparisonOptions, ComparisonRun
from fishersft.contract.training import EvalRequest, TrainingConfig
from fishersft.data import corpora
from fishersft.models.registry import DEFAULT_MODEL, resolve_model
from fishersft.pipeline import embed_dataset
from fishersft.training.comparison import compare
from fishersft.training.plots import plot_curves


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    budget: int
    stratify_by: str
    epochs: int
    eval_points: int

    def rows(self) -> list[dict]:
        if self.name == "english":
            return corpora.chatterbot(["english"])
        if self.name == "humaneval":
            return corpora.humaneval()
        if self.name == "mixed":  # one shape per file: HumanEval as two-turn chats
            return corpora.chatterbot(["english"]) + [as_chat(row) for row in corpora.humaneval()]
        return corpora.chatterbot(corpora.chatterbot_languages())


def as_chat(row: dict) -> dict:
    """A prompt/response row as a user/assistant chat row, its other fields kept."""
    turns = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    return {k: v for k, v in row.items() if k not in ("prompt", "response")} | {"messages": turns}


STUDIES = [
    Study("english", "chatterbot English", 30, "category", 3, 2),
    Study("mixed", "chatterbot English + HumanEval", 30, "category", 3, 2),
    Study("humaneval", "HumanEval", 20, "category", 3, 2),
    Study("all", "chatterbot, 28 languages", 200, "language", 2, 1),
]
WEIGHTINGS = ("tokens", "examples", "mean")
HOLDOUT = 0.15


def run_study(study: Study, out: Path, model: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model(model)
    with tempfile.TemporaryDirectory(prefix="fishersft-study-") as tmp:
        data = Path(tmp) / f"{study.name}.jsonl"
        corpora.write_jsonl(study.rows(), data)
        embedding = embed_dataset(data, model_dir, Path(tmp) / "features")
        options = ComparisonOptions(
            budget=ComparisonBudget(examples=study.budget),
            weightings=list(WEIGHTINGS),
            training=TrainingConfig(epochs=study.epochs),
            eval=EvalRequest(holdout_fraction=HOLDOUT, stratify_by=study.stratify_by),
            eval_points=study.eval_points,
        )
        compared = compare(data, model_dir, model, embedding.features, options)
    compared.timings["embed_s"] = embedding.seconds
    plot_curves(compared.runs, out / "comparison.png", f"{study.title}, {model}")
    result = {"dataset": study.title, **compared.model_dump(mode="json", by_alias=True)}
    (out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def label(row: dict) -> str:
    return ComparisonRun.model_validate(row).label


def table(results: dict[str, dict]) -> list[dict]:
    """One row per (dataset, run): the study's table."""
    return [
        {
            "dataset": name,
            "run": label(r),
            "budget_kind": r["budget_kind"],
            "examples": r["examples"],
            "loss_tokens": r["loss_tokens"],
            "length_ratio": round(r["length_ratio"], 2),
            "groups": f"{r['groups']['covered']}/{r['groups']['total']}",
            "loss_after": round(r["loss_after"], 4),
            "worst_group": r["worst_group"],
        }
        for name, result in results.items()
        for r in result["runs"]
    ]


def markdown(results: dict[str, dict]) -> str:
    """The README's table: per dataset, each fisher run and the random runs' mean [min, max]."""
    lines = [
        "| data (K, held out) | run | budget | examples | loss tokens | length ratio | groups | held-out loss "
        "| worst group |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results.values():
        runs, held = result["runs"], result["held_out"]
        name = f"{result['dataset']} (K={result['budget']['examples']}, {held['n_examples']} held out)"
        random = [r for r in runs if r["method"] == "random"]

        def spread(values: list[float]) -> str:
            return f"{sum(values) / len(values):.3f} [{min(values):.3f}, {max(values):.3f}]"

        lines.append(
            f"| {name} | random, {len(random)} seeds | {random[0]['budget']['examples']} examples "
            f"| {random[0]['examples']} | {round(sum(r['loss_tokens'] for r in random) / len(random)):,} "
            f"| {sum(r['length_ratio'] for r in random) / len(random):.2f} "
            f"| {sum(r['groups']['covered'] for r in random) / len(random):.1f}/{random[0]['groups']['total']} "
            f"| {spread([r['loss_after'] for r in random])} | {spread([r['worst_group']['loss'] for r in random])} |"
        )
        for r in runs:
            if r["method"] != "fisher":
                continue
            budget = " ".join(f"{v:,} {k}" for k, v in r["budget"].items())
            lines.append(
                f"| | {label(r)} | {budget} | {r['examples']} | {r['loss_tokens']:,} | {r['length_ratio']:.2f} "
                f"| {r['groups']['covered']}/{r['groups']['total']} | {r['loss_after']:.3f} "
                f"| {r['worst_group']['loss']:.3f} ({r['worst_group']['group']}) |"
            )
    return "\n".join(lines) + "\n"


def plot_study(results: dict[str, dict], out: Path) -> None:
    """Per dataset, held-out loss (and worst-group loss) of each fisher variant at equal examples and at equal
    tokens, against the random runs' range (band) and mean (line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("loss_after", "held-out loss"), ("worst", "worst-group loss")]
    figure, axes = plt.subplots(
        len(metrics), len(results), figsize=(4.2 * len(results), 7), squeeze=False, constrained_layout=True
    )
    for column, result in enumerate(results.values()):
        runs = result["runs"]
        for row, (metric, ylabel) in enumerate(metrics):
            axis = axes[row][column]

            def value(r: dict, metric: str = metric) -> float:
                return r["worst_group"]["loss"] if metric == "worst" else r["loss_after"]

            random = [value(r) for r in runs if r["method"] == "random"]
            axis.axhspan(min(random), max(random), color="grey", alpha=0.25, label="random (range)")
            axis.axhline(sum(random) / len(random), color="grey", linewidth=1)
            for offset, kind in ((-0.18, "examples"), (0.18, "tokens")):
                fisher = [r for r in runs if r["method"] == "fisher" and r["budget_kind"] == kind]
                axis.bar(
                    [k + offset for k in range(len(fisher))],
                    [value(r) for r in fisher],
                    width=0.34,
                    label=f"fisher, equal {kind}",
                )
            axis.set_xticks(range(len(WEIGHTINGS)), WEIGHTINGS)
            low = min([*random, *(value(r) for r in runs)])
            high = max([*random, *(value(r) for r in runs)])
            axis.set_ylim(low - 0.3 * (high - low) - 0.01, high + 0.15 * (high - low) + 0.01)
            axis.set_title(f"{result['dataset']}, K={result['budget']['examples']}", fontsize=9)
            if column == 0:
                axis.set_ylabel(ylabel)
            axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated study names: " + ", ".join(s.name for s in STUDIES))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/study"))
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else [s.name for s in STUDIES]
    results = {}
    for study in STUDIES:
        path = args.out / study.name / "comparison.json"
        if study.name in chosen and not path.exists():
            started = time.perf_counter()
            run_study(study, args.out / study.name, args.model)
            print(f"{study.name}: {time.perf_counter() - started:.0f}s", flush=True)
        if path.exists():
            results[study.name] = json.loads(path.read_text())
    (args.out / "study.json").write_text(json.dumps(table(results), indent=1) + "\n")
    (args.out / "study.md").write_text(markdown(results))
    plot_study(results, args.out / "study.png")
    for row in table(results):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
