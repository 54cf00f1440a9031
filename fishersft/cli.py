"""`fishersft` command line."""

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import transformers

from fishersft.errors import InputError
from fishersft.features import is_features_path, load_features
from fishersft.models import default_model_dir, sample_dataset
from fishersft.pipeline import Progress, embed_dataset, select_features
from fishersft.selection import Budget


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


def add_select_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="JSONL dataset, or features (.npz, .safetensors, features store)")
    parser.add_argument("--model", type=Path, help="local transformers model directory (JSONL input only)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=positive_int, metavar="K", help="select at most K examples")
    budget.add_argument("--budget-tokens", type=positive_int, metavar="T", help="select at most T loss tokens")
    parser.add_argument("--method", choices=["fisher", "random"], default="fisher")
    parser.add_argument(
        "--lambda",
        dest="lam",
        type=positive_float,
        default=1.0,
        metavar="L",
        help="ridge term of Sigma = L*I + sum X^T X (default 1.0)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random method (default 0)")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=1024,
        metavar="M",
        help="tokens per example at most; longer ones lose prompt tokens first (default 1024)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, metavar="B", help="examples per forward pass")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    parser.add_argument(
        "--warm-start",
        type=Path,
        metavar="FILE",
        help="ids already selected earlier, one a line: they seed Sigma and are not chosen again",
    )
    parser.add_argument(
        "--features-out",
        type=Path,
        metavar="DIR",
        help="keep the computed features store here, to select from it again later",
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the JSON result here (default: stdout)")


def run_select(args: argparse.Namespace) -> dict:
    budget = Budget(examples=args.budget) if args.budget is not None else Budget(tokens=args.budget_tokens)
    warm_start = _read_ids(args.warm_start) if args.warm_start else []
    with ProgressBars() as progress, tempfile.TemporaryDirectory(prefix="fishersft-") as tmp:
        if is_features_path(args.data):
            if args.model:
                raise InputError("--model is for JSONL datasets; features input needs no model")
            features, truncated, embed_s = load_features(args.data), 0, 0.0
        else:
            if not args.model:
                raise InputError("a JSONL dataset needs --model DIR to compute its features")
            embedding = embed_dataset(
                args.data,
                args.model,
                args.features_out or Path(tmp) / "features",
                max_length=args.max_length,
                batch_size=args.batch_size,
                device=args.device,
                progress=progress,
            )
            features, truncated, embed_s = embedding.features, embedding.truncated, embedding.seconds
        result = select_features(
            features,
            budget,
            method=args.method,
            lam=args.lam,
            seed=args.seed,
            warm_start_ids=warm_start,
            progress=progress,
        )
    result["truncated"] = truncated
    result["timings"]["embed_s"] = embed_s
    return result


def _read_ids(path: Path) -> list[str | int]:
    """Ids one a line; integers stay integers, matching ids given as numbers or as default line numbers."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    return [int(line) if line.lstrip("-").isdigit() else line for line in lines]


class ProgressBars:
    """One tqdm bar per phase on stderr when it is a terminal; silent otherwise."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.bars: dict = {}

    def __enter__(self) -> Progress:
        return self.update

    def update(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if phase not in self.bars:
            for bar in self.bars.values():
                bar.close()
            self.bars[phase] = tqdm(total=total, desc=phase, unit="ex" if phase == "embedding" else "", leave=True)
        bar = self.bars[phase]
        bar.update(done - bar.n)

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()


def select_command(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    result = run_select(args)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
        elapsed = time.perf_counter() - started
        print(f"selected {len(result['selected'])} examples in {elapsed:.1f}s -> {args.out}", file=sys.stderr)
    else:
        print(text)


def demo_command(args: argparse.Namespace) -> None:
    """Select from the bundled sample with the default model, and show what was picked beside random."""
    data, model = sample_dataset(), default_model_dir()
    print(f"model:   tiny Llama built locally, no model hub needed ({model})\ndataset: {data}", file=sys.stderr)
    parser = argparse.ArgumentParser()
    add_select_arguments(parser)
    select = parser.parse_args([str(data), "--model", str(model), "--budget", str(args.budget)])
    fisher = run_select(select)
    random = run_select(argparse.Namespace(**{**vars(select), "method": "random"}))
    prompts = {row["id"]: row["prompt"] for row in map(json.loads, data.read_text().splitlines())}
    print(
        f"FisherSFT picked {len(fisher['selected'])} of {fisher['n_candidates']} examples: "
        f"log det {fisher['objective']:.1f} (random pick: {random['objective']:.1f})"
    )
    for example_id, gain in zip(fisher["selected"], fisher["gains"], strict=True):
        print(f"  {example_id:<15} gain {gain:6.2f}  {prompts[example_id][:60]}")
    timings = fisher["timings"]
    print(f"embedding {timings['embed_s']:.2f}s, selection {timings['select_s']:.2f}s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fishersft", description="FisherSFT data selection for fine-tuning.")
    commands = parser.add_subparsers(dest="command", required=True)
    select = commands.add_parser("select", help="select the most informative examples of a dataset")
    add_select_arguments(select)
    select.set_defaults(run=select_command)
    demo = commands.add_parser("demo", help="select from a bundled sample with the default model: no setup")
    demo.add_argument("--budget", type=positive_int, default=10, metavar="K", help="examples to select (default 10)")
    demo.set_defaults(run=demo_command)
    args = parser.parse_args(argv)
    transformers.logging.disable_progress_bar()
    try:
        args.run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
