"""What the command groups share: argument types, the budget options, progress bars and JSON output."""

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fishersft.cli.options import FieldFlag, add_model_flags, model_input
from fishersft.contract.comparison import DEFAULT_HOLDOUT, TARGET_HOLDOUT, ComparisonOptions
from fishersft.contract.jobs import JobBody
from fishersft.contract.selection import FeatureOptions, SelectionOptions
from fishersft.contract.training import EvalRequest, LoraConfig, TrainingConfig
from fishersft.errors import InputError
from fishersft.pipeline import Progress


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
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
                total=total,
                desc=phase,
                unit="ex" if phase in ("embedding", "scoring", "deduplicating") else "",
                leave=True,
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


TRAINING_FLAGS = {
    "lora.target_modules": "target-modules",
    "training.epochs": "epochs",
    "training.max_steps": "max-steps",
    "training.learning_rate": "learning-rate",
    "training.batch_size": "train-batch-size",
    "training.batch_tokens": "train-batch-tokens",
    "training.seed": "train-seed",
    "training.precision": "train-precision",
}
"""The LoRA and training options' flag names that are not their field paths."""


def add_training_arguments(parser: argparse.ArgumentParser) -> list[FieldFlag]:
    """LoRA, training and evaluation options, shared by `finetune` and `compare`, as flags named after the
    contract's fields (training.max_length comes from --max-length); what `model_input` reads back."""
    lora = parser.add_argument_group("LoRA (the request's `lora`)")
    flags = add_model_flags(lora, LoraConfig, renames=TRAINING_FLAGS, prefix=("lora",))
    training = parser.add_argument_group("training (the request's `training`)")
    flags += add_model_flags(
        training, TrainingConfig, skip={"training.max_length"}, renames=TRAINING_FLAGS, prefix=("training",)
    )
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
    return flags


def training_input(args: argparse.Namespace, flags: list[FieldFlag]) -> dict[str, Any]:
    """The `lora` and `training` fields given as flags, training's max_length from --max-length."""
    given = model_input(args, flags)
    if args.max_length is not None:
        given.setdefault("training", {})["max_length"] = args.max_length
    return given


def evaluation_request(args: argparse.Namespace, dataset_id: str | None = None) -> EvalRequest:
    """The held-out set: a dataset uploaded from --eval-data (`dataset_id`), else the --holdout fraction."""
    if dataset_id is not None:
        return EvalRequest(dataset_id=dataset_id, stratify_by=args.stratify_by)
    fraction = DEFAULT_HOLDOUT if args.holdout is None else args.holdout
    return EvalRequest(holdout_fraction=fraction, stratify_by=args.stratify_by)


SELECTION_FLAGS = {"budget.examples": "budget"}
"""The selection options' flag names that are not their field paths: `--budget K` is `budget.examples`."""


def add_option_flags(parser: argparse.ArgumentParser, features: bool = True) -> None:
    """A selection's options (SelectionOptions and, with `features`, FeatureOptions but its model) as flags named
    after the fields, and --warm-start FILE for its warm_start_ids."""
    group = parser.add_argument_group("selection options (the fields of POST /v1/selections)")
    flags = add_model_flags(group, SelectionOptions, skip={"warm_start_ids"}, renames=SELECTION_FLAGS)
    if features:
        flags += add_model_flags(group, FeatureOptions, skip={"model"})
    group.add_argument(
        "--warm-start",
        type=Path,
        metavar="FILE",
        help="ids already selected earlier, one a line (warm_start_ids): they seed Sigma and are not chosen again",
    )
    parser.set_defaults(option_flags=flags)


def request_options(args: argparse.Namespace) -> dict[str, Any]:
    """The selection options given as flags (the contract supplies the rest), --warm-start's ids among them."""
    warm_start = {"warm_start_ids": read_ids(args.warm_start)} if args.warm_start else {}
    return {**model_input(args, args.option_flags), **warm_start}


def comparison_options(args: argparse.Namespace, eval_dataset_id: str | None = None) -> ComparisonOptions:
    """A comparison's options from the `compare` command's flags (`eval_dataset_id`: --eval-data uploaded)."""
    given = {**model_input(args, args.option_flags), **training_input(args, args.training_flags)}
    if args.target is None or args.eval_data is not None or args.holdout is not None:
        given["eval"] = evaluation_request(args, eval_dataset_id)
    return ComparisonOptions.model_validate(given)
