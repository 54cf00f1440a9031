"""What the command groups share: argument types, the budget options, progress bars and JSON output."""

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from fishersft.contract.base import ExampleId
from fishersft.contract.comparison import DEFAULT_HOLDOUT, TARGET_HOLDOUT, ComparisonBudget, ComparisonOptions
from fishersft.contract.jobs import JobBody
from fishersft.contract.selection import Budget, FeatureOptions, SelectionOptions
from fishersft.contract.training import EvalRequest, LoraConfig, TrainingConfig
from fishersft.errors import InputError
from fishersft.pipeline import Progress


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_server_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    server = os.environ.get("FISHERSFT_SERVER")
    parser.add_argument(
        "--server",
        default=server,
        required=required and not server,
        metavar="URL",
        help="a running fishersft service (default: $FISHERSFT_SERVER)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FISHERSFT_API_KEY"),
        help="its API key, if it has keys (default: $FISHERSFT_API_KEY)",
    )


def budget(args: argparse.Namespace) -> Budget:
    return Budget(examples=args.budget) if args.budget is not None else Budget(tokens=args.budget_tokens)


def read_ids(path: Path) -> list[str | int]:
    """Ids one a line; integers stay integers, matching ids given as numbers or as default line numbers."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    return [int(line) if line.lstrip("-").isdigit() else line for line in lines]


def print_json(value: object, out: Path | None = None) -> None:
    """JSON to `out` or stdout; a contract model (or a list of them) as the API writes it."""
    if isinstance(value, list):
        value = [v.model_dump(mode="json", by_alias=True) if isinstance(v, BaseModel) else v for v in value]
    elif isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    text = json.dumps(value, indent=2)
    if out:
        out.write_text(text + "\n")
    else:
        print(text)


def job_progress(progress: Progress) -> Callable[[JobBody], None]:
    """A `Client.wait` callback that shows a job's reported progress."""

    def show(job: JobBody) -> None:
        if job.progress:
            progress(job.progress.phase, job.progress.done, job.progress.total)

    return show


PROGRESS_LINE_S = 10.0
"""Off a terminal, a progress line at most this often per phase (and one when a phase starts or ends)."""


class ProgressBars:
    """One tqdm bar per phase on stderr when it is a terminal; otherwise a plain line (`progress: embedding
    450/898`) when a phase starts or ends and at most every PROGRESS_LINE_S seconds, so that logs and callers
    waiting on the command see it move."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.bars: dict = {}
        self.lines: dict[str, tuple[float, int]] = {}

    def __enter__(self) -> Progress:
        return self.update

    def update(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            self._line(phase, done, total)
            return
        from tqdm import tqdm

        if phase not in self.bars:
            for bar in self.bars.values():
                bar.close()
            self.bars[phase] = tqdm(
                total=total, desc=phase, unit="ex" if phase in ("embedding", "scoring") else "", leave=True
            )
        bar = self.bars[phase]
        bar.update(done - bar.n)

    def _line(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        last = self.lines.get(phase)
        if last is None or done == total != last[1] or (done != last[1] and now - last[0] >= PROGRESS_LINE_S):
            print(f"progress: {phase} {done}/{total}", file=sys.stderr, flush=True)
            self.lines[phase] = (now, done)

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """LoRA, training and evaluation options, shared by `finetune` and `compare`; defaults from the contract."""
    lora_defaults, training_defaults = LoraConfig(), TrainingConfig()
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--lora-r", type=positive_int, default=lora_defaults.r, metavar="R", help="rank (default 8)")
    lora.add_argument("--lora-alpha", type=positive_float, default=lora_defaults.alpha, metavar="A", help="scale (16)")
    lora.add_argument("--lora-dropout", type=float, default=lora_defaults.dropout, metavar="P", help="dropout (0.05)")
    lora.add_argument(
        "--target-modules",
        default=",".join(lora_defaults.target_modules),
        metavar="M,M",
        help="comma-separated module names (default q_proj,k_proj,v_proj,o_proj)",
    )
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=positive_int, default=training_defaults.epochs, help="epochs (default 3)")
    training.add_argument("--max-steps", type=positive_int, metavar="N", help="stop after N optimizer steps")
    training.add_argument(
        "--learning-rate", type=positive_float, default=training_defaults.learning_rate, metavar="LR", help="(3e-4)"
    )
    training.add_argument(
        "--train-batch-size", type=positive_int, default=training_defaults.batch_size, metavar="B", help="(8)"
    )
    training.add_argument(
        "--train-batch-tokens", type=positive_int, metavar="T", help="padded tokens per step at most (default: none)"
    )
    training.add_argument("--train-seed", type=int, default=training_defaults.seed, metavar="S", help="(0)")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument(
        "--holdout",
        type=float,
        metavar="F",
        help=f"held-out fraction, never selected (default {DEFAULT_HOLDOUT:g}; compare --target: "
        f"{TARGET_HOLDOUT:g} of the target, stratified by category)",
    )
    evaluation.add_argument("--stratify-by", default="category", metavar="FIELD", help="label to stratify by")
    evaluation.add_argument("--eval-data", type=Path, metavar="FILE", help="a separate JSONL held-out set")
    evaluation.add_argument(
        "--eval-points", type=positive_int, default=4, metavar="N", help="held-out evaluations per run (default 4)"
    )


def lora_settings(args: argparse.Namespace) -> LoraConfig:
    modules = [m.strip() for m in args.target_modules.split(",") if m.strip()]
    return LoraConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, target_modules=modules)


def training_settings(args: argparse.Namespace) -> TrainingConfig:
    return TrainingConfig(
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        batch_size=args.train_batch_size,
        batch_tokens=args.train_batch_tokens,
        seed=args.train_seed,
    )


def evaluation_request(args: argparse.Namespace, dataset_id: str | None = None) -> EvalRequest:
    """The held-out set: a dataset uploaded from --eval-data (`dataset_id`), else the --holdout fraction."""
    if dataset_id is not None:
        return EvalRequest(dataset_id=dataset_id, stratify_by=args.stratify_by)
    fraction = DEFAULT_HOLDOUT if args.holdout is None else args.holdout
    return EvalRequest(holdout_fraction=fraction, stratify_by=args.stratify_by)


def selection_options(args: argparse.Namespace, warm_start: list[ExampleId]) -> SelectionOptions:
    """The selection's options from the command's flags (checked against the contract's limits)."""
    return SelectionOptions(
        budget=budget(args),
        method=args.method,
        weighting=args.weighting,
        group_by=args.group_by,
        lambda_=args.lam,
        seed=args.seed,
        warm_start_ids=warm_start,
        algorithm=args.algorithm,
        epsilon=args.epsilon,
        partitions=args.partitions,
    )


def feature_options(args: argparse.Namespace, model: str | None = None) -> FeatureOptions:
    """How features are made, from the command's flags."""
    return FeatureOptions(
        model=model, max_length=args.max_length, rank=args.rank, dim=args.dim, projection=args.projection or "principal"
    )


def comparison_options(args: argparse.Namespace, eval_dataset_id: str | None = None) -> ComparisonOptions:
    """A comparison's options from the `compare` command's flags (`eval_dataset_id`: --eval-data uploaded)."""
    return ComparisonOptions(
        budget=ComparisonBudget(examples=args.budget),
        random_seeds=args.random_seeds,
        lambda_=args.lam,
        max_length=args.max_length,
        eval_points=args.eval_points,
        weightings=args.weightings,
        methods=args.methods,
        budget_kinds=args.budget_kinds,
        lora=lora_settings(args),
        training=training_settings(args).model_copy(update={"max_length": args.max_length}),
        eval=None
        if args.target is not None and args.eval_data is None and args.holdout is None
        else evaluation_request(args, eval_dataset_id),
    )
