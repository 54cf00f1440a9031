"""Commands that run on this machine: `select` (or on a service with --server), `sample-data`, `models`."""

import argparse
import sys
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

from fishersft.cli.common import (
    ProgressBars,
    add_server_arguments,
    feature_options,
    positive_float,
    positive_int,
    print_json,
    read_ids,
    selection_options,
)
from fishersft.cli.remote import run_remote_select
from fishersft.contract.batching import DEFAULT_BATCH_TOKENS
from fishersft.contract.compression import PROJECTIONS, TARGET_COMPRESSION
from fishersft.contract.jobs import Selection
from fishersft.contract.selection import (
    ALGORITHMS,
    DEFAULT_EPSILON,
    DEFAULT_WEIGHTING,
    FALLBACK_WEIGHTING,
    METHODS,
    TARGET_METHODS,
    WEIGHTINGS,
    Method,
    SelectionResult,
    needs_difficulty,
)
from fishersft.data import corpora
from fishersft.data.dataset import DEFAULT_MAX_LENGTH, read_labels
from fishersft.data.formats import as_jsonl
from fishersft.errors import InputError
from fishersft.features.files import is_features_path, load_features
from fishersft.features.set import FeatureSet
from fishersft.features.store import compress_store
from fishersft.features.target import TargetSet
from fishersft.models.loading import cached_model
from fishersft.models.registry import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    builtin_model_dir,
    model_dim,
    prepared_dir,
    resolve_model,
)
from fishersft.pipeline import (
    Progress,
    count_lines,
    embed_dataset,
    score_difficulty,
    select_features,
    select_partitioned,
)


def run_select(args: argparse.Namespace) -> SelectionResult:
    """Select on this machine: embed a dataset (.jsonl, .jsonl.gz, .parquet) with a model (the default one
    unless --model), or read features, then select."""
    data = Path(args.data)
    check_target([args.method], args.target)
    if args.target is not None and args.partitions is not None:
        raise InputError("--partitions: GreeDi's guarantee needs log det; a selection for a --target runs exact greedy")
    warm_start = read_ids(args.warm_start) if args.warm_start else []
    with ProgressBars() as progress, tempfile.TemporaryDirectory(prefix="fishersft-") as tmp:
        if is_features_path(data):
            if args.model:
                raise InputError("--model is for JSONL datasets; features input needs no model")
            if args.group_by:
                raise InputError("--group-by is for JSONL datasets; features files carry no row fields")
            features = compressed(load_features(data), args.features_out or Path(tmp) / "features", args)
            truncated, embed_s, model, labels = 0, 0.0, None, None
        else:
            if args.features_out and args.features_out.exists():
                raise InputError(f"--features-out {args.features_out} already exists; remove it or pick another")
            model = args.model or DEFAULT_MODEL
            model_dir = resolve_model(model)
            data = as_jsonl(data, Path(tmp))
            store = args.features_out or Path(tmp) / "features"
            passes = {
                "batch_size": args.batch_size,
                "batch_tokens": args.batch_tokens,
                "device": args.device,
                "precision": args.precision,
                "progress": progress,
                "load": cached_model,
            }
            embedding = embed_dataset(
                data,
                model_dir,
                store,
                max_length=args.max_length or DEFAULT_MAX_LENGTH,
                compression=feature_options(args).compression(count_lines(data), model_dim(model_dir)),
                **passes,
            )
            features, truncated, embed_s = embedding.features, embedding.truncated, embedding.seconds
            if needs_difficulty([args.method]):
                features = score_difficulty(data, model_dir, store, **passes)
            labels = read_labels(data)
        options = selection_options(args, warm_start)
        max_length = args.max_length or DEFAULT_MAX_LENGTH
        target = target_features(args.target, model, max_length, Path(tmp) / "target", progress)
        served = None if target is None else TargetSet(str(args.target), target)
        context = {"labels": labels, "progress": progress, "model": model, "device": args.device, "target": served}
        if options.partitions is not None:
            if options.method != "fisher":
                raise InputError(
                    f"--partitions: GreeDi partitions a greedy selection; --method {options.method} takes none"
                )
            result = select_partitioned(features, options, options.partitions, **context)
        else:
            result = select_features(features, options, **context)
    result.truncated = truncated
    result.timings["embed_s"] = embed_s
    return result


def check_target(methods: Collection[Method], target: Path | None) -> None:
    """--target: method similarity needs it, fisher takes it (targeted design), the others refuse it; said before
    anything is embedded."""
    if ("similarity" in methods and target is None) or (target is not None and not set(methods) & set(TARGET_METHODS)):
        raise InputError("--target goes with methods fisher and similarity, and similarity needs it")


def target_features(
    target: Path | None, model: str | None, max_length: int, directory: Path, progress: Progress
) -> FeatureSet | None:
    """--target (see `check_target`): examples embedded by the same model, or a features file."""
    if target is None:
        return None
    if is_features_path(target):
        return compress_store(load_features(target), directory, TARGET_COMPRESSION)
    if model is None:
        raise InputError("--target: a JSONL target needs a model, so the data must be JSONL too")
    embedding = embed_dataset(
        as_jsonl(target, directory.parent),
        resolve_model(model),
        directory,
        max_length=max_length,
        compression=TARGET_COMPRESSION,
        progress=progress,
        load=cached_model,
    )
    return embedding.features


COMPRESSION_OPTIONS = ("rank", "dim", "projection")


def compressed(features: FeatureSet, directory: Path, args: argparse.Namespace) -> FeatureSet:
    """Features ready to select from: raw features (.npz, .safetensors) compressed into `directory`, or a
    compressed store as it is (its compression is fixed: options that contradict it are an error)."""
    asked = feature_options(args).compression(len(features.ids), features.features.shape[1])
    if features.compression is None:
        return compress_store(features, directory, asked)
    if any(getattr(args, k) is not None for k in COMPRESSION_OPTIONS) and asked != features.compression:
        raise InputError(
            f"this features store is compressed as {features.compression.key}, not {asked.key}: select from it "
            "without --rank/--dim/--projection, or from raw features"
        )
    return features


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
    budget_group = parser.add_mutually_exclusive_group(required=True)
    budget_group.add_argument("--budget", type=positive_int, metavar="K", help="select at most K examples")
    budget_group.add_argument("--budget-tokens", type=positive_int, metavar="T", help="select at most T loss tokens")
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="fisher",
        help="fisher (default; with --target, targeted design), random, kcenter, similarity (with --target), loss "
        "or ifd: see the README",
    )
    parser.add_argument(
        "--target",
        type=Path,
        metavar="FILE",
        help="with --method similarity or fisher: the set to select for (JSONL embedded by the same model, or "
        "features; with --server, a file to upload or a dataset id)",
    )
    parser.add_argument(
        "--weighting",
        choices=WEIGHTINGS,
        help="how an example's loss tokens add to Sigma: tokens (the paper's sum over loss tokens), examples (each "
        "example's mean outer product), mean (the outer product of its mean feature), uncertainty (the sum over loss "
        "tokens scaled by 1 - sum_k p_k^2 under the model: JSONL data only); default: "
        f"{DEFAULT_WEIGHTING['examples']} under --budget, {DEFAULT_WEIGHTING['tokens']} under --budget-tokens "
        f"({FALLBACK_WEIGHTING} for a features file; chosen by held-out loss after fine-tuning; see the README)",
    )
    parser.add_argument(
        "--group-by",
        metavar="FIELD",
        help="a string field of the rows whose groups the result counts (default: category or source)",
    )
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
        metavar="M",
        help="tokens per example at most; longer ones lose prompt tokens first (default 1024; with --server, 1024 "
        "or the model's context if smaller)",
    )
    parser.add_argument(
        "--rank",
        type=positive_int,
        metavar="R",
        help="feature rows kept per example: longer ones keep the best rank-R factor of X^T X (default: with --dim, "
        "the most faithful compression that fits 8 GiB: rank 64 at the model's dimension unless the dataset is "
        "large; chosen by measurement, see the README)",
    )
    parser.add_argument(
        "--dim", type=positive_int, metavar="D", help="project features to D dimensions (default: see --rank)"
    )
    parser.add_argument(
        "--projection",
        choices=PROJECTIONS,
        help="with --dim: principal (top directions of the total Gram; default) or gaussian (seeded)",
    )
    parser.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default="lazy",
        help="fisher greedy: lazy (default; exact greedy's picks), exact (reference, slow), stochastic "
        "(approximate, for very large datasets), batched (exact greedy's picks, for a GPU)",
    )
    parser.add_argument(
        "--epsilon",
        type=positive_float,
        default=DEFAULT_EPSILON,
        help=f"stochastic greedy's epsilon (default {DEFAULT_EPSILON}): (N/K) ln(1/epsilon) candidates per pick",
    )
    parser.add_argument(
        "--partitions",
        type=positive_int,
        metavar="M",
        help="GreeDi: greedy on M seeded random partitions, then over the union of their picks (approximate; with "
        "--server the partitions run as parallel jobs on the service's workers; default: centralized greedy)",
    )
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
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="embedding arithmetic; auto: bfloat16 autocast on CPUs with native bfloat16, else float32 (default)",
    )
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
    add_server_arguments(parser, required=False)
    parser.add_argument("--wait", action="store_true", help="with --server: wait for the job and print its result")
