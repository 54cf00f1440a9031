"""`fishersft compare`: methods against seeded random subsets, each fine-tuned with LoRA and judged on one
held-out set, on this machine or on a service (--server)."""

import argparse
import tempfile
from pathlib import Path

from fishersft.cli.common import (
    ProgressBars,
    add_server_arguments,
    add_training_arguments,
    comparison_options,
    print_json,
)
from fishersft.cli.options import add_model_flags
from fishersft.cli.remote import run_remote_compare
from fishersft.contract.comparison import ComparisonOptions, ComparisonResult
from fishersft.contract.selection import needs_difficulty, target_problem
from fishersft.data.dataset import DEFAULT_MAX_LENGTH
from fishersft.data.formats import as_jsonl
from fishersft.errors import InputError
from fishersft.features.files import is_features_path
from fishersft.library import target_features
from fishersft.models.loading import cached_model
from fishersft.models.registry import (
    DEFAULT_MODEL,
    resolve_model,
)
from fishersft.pipeline import embed_dataset, score_difficulty


def compare_command(args: argparse.Namespace) -> None:
    """Fisher against seeded random subsets, fine-tuned and judged on one held-out set: the table (JSON) and the
    plot (PNG) go to --out-dir."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.server:
        result = run_remote_compare(args)
        if result is not None:
            print_json(result, args.out_dir / "comparison.json")
            print_comparison(result)
        return
    if args.wait:
        raise InputError("--wait is for --server; a local comparison always waits")
    from fishersft.training.comparison import compare
    from fishersft.training.plots import plot_curves

    options = comparison_options(args)
    problem = target_problem(options.methods, args.target is not None)
    if problem:
        raise InputError(f"--target: {problem}")
    if args.target is not None and is_features_path(args.target):
        raise InputError("--target: a comparison's target is a JSONL file (its held-out half is trained text)")
    model = args.model or DEFAULT_MODEL
    model_dir = resolve_model(model)
    max_length = options.max_length or DEFAULT_MAX_LENGTH
    with ProgressBars() as progress, tempfile.TemporaryDirectory(prefix="fishersft-") as tmp:
        features_dir = Path(tmp) / "features"
        data = as_jsonl(Path(args.data), Path(tmp))
        embedding = embed_dataset(
            data, model_dir, features_dir, max_length=max_length, progress=progress, load=cached_model
        )
        features = embedding.features
        if needs_difficulty(options.methods):
            features = score_difficulty(data, model_dir, features_dir, progress=progress, load=cached_model)
        target = target_features(args.target, model, max_length, Path(tmp) / "target", progress)
        cached_model.cache_clear()  # the passes are done; training loads a copy of its own per run
        result = compare(
            data,
            model_dir,
            model,
            features,
            options,
            eval_data=args.eval_data and as_jsonl(args.eval_data, Path(tmp)),
            target=target,
            target_data=args.target and as_jsonl(args.target, Path(tmp)),
        )
    result.timings["embed_s"] = embedding.seconds
    print_json(result, args.out_dir / "comparison.json")
    plot_curves(result.runs, args.out_dir / "comparison.png", f"{Path(args.data).name}, {model}")
    print_comparison(result)


COMPARISON_FLAGS = {"budget.examples": "budget"}


def print_comparison(result: ComparisonResult) -> None:
    print(
        f"{'run':<16} {'budget':>16} {'examples':>8} {'loss tok':>8} {'groups':>7} {'before':>7} {'after':>7} "
        "worst group"
    )
    for r in result.runs:
        worst, groups = r.worst_group, r.groups
        budget = " ".join(f"{v} {k}" for k, v in r.budget.model_dump().items())
        print(
            f"{r.label:<16} {budget:>16} {r.examples:>8} {r.loss_tokens:>8,} "
            f"{groups.covered:>3}/{groups.total:<3} {r.loss_before:>7.3f} {r.loss_after:>7.3f} "
            + (f"{worst.group} {worst.loss:.3f}" if worst else "")
        )


def add_commands(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare", help="fine-tune fisher and seeded random subsets with LoRA and compare their held-out loss"
    )
    compare.add_argument("data", help="a dataset: .jsonl, .jsonl.gz or .parquet")
    compare.add_argument("--model", help=f"a built-in model or a model directory (default: {DEFAULT_MODEL})")
    options = compare.add_argument_group("comparison options (the fields of POST /v1/comparisons)")
    flags = add_model_flags(options, ComparisonOptions, skip={"lora", "training", "eval"}, renames=COMPARISON_FLAGS)
    compare.set_defaults(option_flags=flags)
    compare.add_argument(
        "--target",
        type=Path,
        metavar="FILE",
        help="with methods similarity or fisher: the JSONL set to select for (half of it held out unless "
        "--holdout/--eval-data)",
    )
    compare.add_argument("--out-dir", type=Path, default=Path("comparison"), help="where the table and plot go")
    compare.set_defaults(training_flags=add_training_arguments(compare))
    add_server_arguments(compare, required=False)
    compare.add_argument("--wait", action="store_true", help="with --server: wait for the job")
    compare.set_defaults(run=compare_command)
