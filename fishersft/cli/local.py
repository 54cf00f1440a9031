"""Commands that run on this machine: `select` (or on a service with --server), `sample-data`, `models`."""

import argparse
import sys
import time
from pathlib import Path
from typing import get_args

from fishersft.cli.common import (
    ProgressBars,
    add_option_flags,
    add_server_arguments,
    positive_int,
    print_json,
    request_options,
)
from fishersft.cli.remote import run_remote_select
from fishersft.contract.batching import DEFAULT_BATCH_TOKENS
from fishersft.contract.jobs import Selection
from fishersft.contract.selection import SelectionResult
from fishersft.data import corpora
from fishersft.errors import InputError
from fishersft.library import select
from fishersft.models.loading import Precision
from fishersft.models.registry import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    builtin_model_dir,
    prepared_dir,
)


def run_select(args: argparse.Namespace) -> SelectionResult:
    """Select on this machine (fishersft.select): embed a dataset with a model, or read features, then select."""
    with ProgressBars() as progress:
        return select(
            args.data,
            target=args.target,
            model=args.model,
            features_out=args.features_out,
            device=args.device,
            batch_size=args.batch_size,
            batch_tokens=args.batch_tokens,
            precision=args.precision,
            progress=progress,
            **request_options(args),
        )


def select_command(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if args.server:
        result: SelectionResult | Selection = run_remote_select(args)
    elif args.wait:
        raise InputError("--wait is for --server; a local selection always waits")
    else:
        result = run_select(args)
    print_json(result, args.out)
    if args.out and isinstance(result, SelectionResult):
        elapsed = time.perf_counter() - started
        print(f"selected {len(result.selected)} examples in {elapsed:.1f}s -> {args.out}", file=sys.stderr)


def sample_data_command(args: argparse.Namespace) -> None:
    if args.corpus == "humaneval":
        rows = corpora.humaneval()
    else:
        languages = corpora.chatterbot_languages() if args.language == "all" else args.language.split(",")
        rows = corpora.chatterbot(languages)
    n = corpora.write_jsonl(rows, args.out)
    print(f"wrote {n} examples to {args.out}", file=sys.stderr)


def models_command(args: argparse.Namespace) -> None:
    if args.prepare:
        started = time.perf_counter()
        path = builtin_model_dir(args.prepare)
        print(f"{args.prepare} ready in {path} ({time.perf_counter() - started:.1f}s)", file=sys.stderr)
        return
    for model in BUILTIN_MODELS.values():
        ready = prepared_dir(model.name) is not None
        default = " (default)" if model.name == DEFAULT_MODEL else ""
        print(
            f"{model.name}{default}: d={model.dim}, {'prepared' if ready else 'not prepared yet'}; {model.description}"
        )


def add_commands(commands: argparse._SubParsersAction) -> None:
    select = commands.add_parser("select", help="select the most informative examples of a dataset")
    add_select_arguments(select)
    select.set_defaults(run=select_command)
    sample = commands.add_parser(
        "sample-data", help="write real instruction data from installed packages as a JSONL dataset"
    )
    sample.add_argument("corpus", choices=["chatterbot", "humaneval"])
    sample.add_argument(
        "--language",
        default="english",
        help="chatterbot: a language, a comma-separated list, or `all` (28 languages pooled); default english",
    )
    sample.add_argument("--out", type=Path, required=True, metavar="FILE", help="the JSONL file to write")
    sample.set_defaults(run=sample_data_command)
    models = commands.add_parser("models", help="the built-in models; --prepare NAME converts or builds one now")
    models.add_argument("--prepare", choices=sorted(BUILTIN_MODELS), metavar="NAME", help="prepare this model")
    models.set_defaults(run=models_command)


def add_select_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        help="a dataset (.jsonl, .jsonl.gz, .parquet) or features (.npz, .safetensors, store); with --server also a "
        "dataset id",
    )
    parser.add_argument(
        "--model",
        help=f"a built-in model ({', '.join(BUILTIN_MODELS)}) or a local model directory (default: {DEFAULT_MODEL}); "
        "with --server, a model name from GET /v1/models",
    )
    parser.add_argument(
        "--target",
        help="with a method that takes a target set: the set to select for (JSONL embedded by the same model, or "
        "features; with --server, a file to upload or a dataset id)",
    )
    add_option_flags(parser)
    parser.add_argument(
        "--batch-tokens",
        type=positive_int,
        metavar="T",
        help="padded tokens per forward pass (default: by device, "
        + ", ".join(f"{kind} {tokens:,}" for kind, tokens in DEFAULT_BATCH_TOKENS.items())
        + ")",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, metavar="B", help="at most this many examples per forward pass"
    )
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    parser.add_argument(
        "--precision",
        choices=get_args(Precision),
        default="auto",
        help="embedding arithmetic; auto: bfloat16 autocast on CPUs with native bfloat16, else float32 (default)",
    )
    parser.add_argument(
        "--features-out",
        type=Path,
        metavar="DIR",
        help="keep the computed features store here, to select from it again later",
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the JSON result here (default: stdout)")
    add_server_arguments(parser, required=False)
    parser.add_argument("--wait", action="store_true", help="with --server: wait for the job and print its result")
