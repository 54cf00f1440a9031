"""The remote commands, through fishersft.client: `select --server`, `datasets upload|list`, `jobs
get|wait|cancel|events`, `finetune`, and `compare --server` (in compare.py)."""

import argparse
from pathlib import Path
from typing import Any

from fishersft.cli.common import (
    ProgressBars,
    add_option_flags,
    add_server_arguments,
    add_training_arguments,
    comparison_options,
    evaluation_request,
    job_progress,
    positive_int,
    print_json,
    request_options,
    training_input,
)
from fishersft.client import Client, JobT, kind_of
from fishersft.contract.comparison import ComparisonCreate, ComparisonResult
from fishersft.contract.jobs import Comparison, Selection
from fishersft.contract.selection import SelectionCreate, SelectionResult
from fishersft.contract.training import FinetuneCreate, FinetuneResult
from fishersft.errors import InputError


def client_for(args: argparse.Namespace) -> Client:
    """A client of --server with --api-key."""
    return Client(args.server, args.api_key)


def run_remote_select(args: argparse.Namespace) -> Selection | SelectionResult:
    """Select on a service: upload DATA unless it is a dataset id, request the job; with --wait, its result."""
    with client_for(args) as client:
        dataset_id = dataset_ref(client, args.data)
        target = None if args.target is None else dataset_ref(client, str(args.target))
        body = SelectionCreate.model_validate(
            {"dataset_id": dataset_id, "target_dataset_id": target, "model": args.model, **request_options(args)}
        )
        job = client.create_selection(body)
        return follow(client, job) if args.wait else job


def dataset_ref(client: Client, data: str) -> str:
    """A dataset id: DATA itself, or the id of DATA uploaded when it is a file."""
    return data if not Path(data).exists() else client.upload_dataset(Path(data)).id


def datasets_command(args: argparse.Namespace) -> None:
    with client_for(args) as client:
        print_json(client.upload_dataset(args.file, args.name) if args.action == "upload" else client.list_datasets())


def jobs_command(args: argparse.Namespace) -> None:
    """`jobs get|wait|cancel|events ID`: `wait` ends non-zero unless the job succeeded (for scripts and CI)."""
    with client_for(args) as client:
        job = client.get(kind_of(args.id), args.id)
        if args.action == "get":
            print_json(job)
        elif args.action == "cancel":
            print_json(client.cancel(job))
        elif args.action == "events":
            print_json(client.events(job))
        else:
            print_json(ended(client, job))


def ended(client: Client, job: JobT) -> JobT:
    """Wait for a job with progress bars; the job once it succeeded, else an InputError saying how it ended."""
    with ProgressBars() as progress:
        job = client.wait(job, on_progress=job_progress(progress))
    if job.status != "succeeded":
        code, message = (job.error.code, job.error.message) if job.error else (job.status, job.status)
        raise InputError(f"{job.id} {job.status}: {message} ({code})")
    return job


def follow(client: Client, job: JobT) -> Any:
    """The result of a job that succeeded (an InputError saying why not otherwise), waiting for it."""
    result = ended(client, job).result
    assert result is not None, "a succeeded job has its result"
    return result


def finetune_command(args: argparse.Namespace) -> None:
    """Fine-tune on a service: on --selection's subset, or select DATA with the selection options first."""
    with client_for(args) as client:
        eval_id = client.upload_dataset(args.eval_data).id if args.eval_data else None
        given = training_input(args, args.training_flags)
        if args.selection:
            source: dict[str, Any] = {"selection_id": args.selection}
            given.get("training", {}).pop("max_length", None)  # a selection fixes the loss tokens, max_length too
        elif args.data:
            source = {"dataset_id": dataset_ref(client, args.data), "selection": request_options(args)}
        else:
            raise InputError("give --selection ID, or DATA with --budget K or --budget-tokens T")
        body = {**source, **given, "model": args.model, "eval": evaluation_request(args, eval_id)}
        job = client.create_finetune(FinetuneCreate.model_validate(body))
        if not args.wait:
            print_json(job)
            return
        result: FinetuneResult = follow(client, job)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        print_json(result, args.out_dir / "finetune.json")
        client.download(job, args.out_dir / "adapter.tar.gz")
    evaluation = result.eval
    loss = f", held-out loss {evaluation.before.loss:.3f} -> {evaluation.after.loss:.3f}" if evaluation else ""
    print(f"trained {result.subset.size} examples in {result.steps} steps{loss} -> {args.out_dir}")


def run_remote_compare(args: argparse.Namespace) -> ComparisonResult | None:
    """A comparison on a service; with --wait, its table and plot (saved in --out-dir)."""
    with client_for(args) as client:
        dataset_id = dataset_ref(client, args.data)
        eval_id = dataset_ref(client, str(args.eval_data)) if args.eval_data else None
        target = None if args.target is None else dataset_ref(client, str(args.target))
        options = comparison_options(args, eval_id)
        body = ComparisonCreate(dataset_id=dataset_id, model=args.model, target_dataset_id=target, **dict(options))
        job: Comparison = client.create_comparison(body)
        if not args.wait:
            print_json(job)
            return None
        result: ComparisonResult = follow(client, job)
        if result.plot_url:
            client.download(job, args.out_dir / "comparison.png")
        return result


def add_commands(commands: argparse._SubParsersAction) -> None:
    datasets = commands.add_parser("datasets", help="datasets on a running service")
    actions = datasets.add_subparsers(dest="action", required=True)
    upload = actions.add_parser("upload", help="upload a JSONL dataset or a features file")
    upload.add_argument("file", type=Path)
    upload.add_argument("--name")
    listing = actions.add_parser("list", help="list datasets")
    for action in (upload, listing):
        add_server_arguments(action)
        action.set_defaults(run=datasets_command)
    jobs = commands.add_parser("jobs", help="jobs on a running service (selections, finetunes, comparisons)")
    job_actions = jobs.add_subparsers(dest="action", required=True)
    for name, help_text in (
        ("get", "a job's status, progress and result"),
        ("wait", "wait until the job ends: its body, or exit 2 unless it succeeded"),
        ("cancel", "cancel a queued or running job"),
        ("events", "a job's events, oldest first (finetunes)"),
    ):
        action = job_actions.add_parser(name, help=help_text)
        action.add_argument("id", help="a job id: sel_..., ft_... or cmp_...")
        add_server_arguments(action)
        action.set_defaults(run=jobs_command)
    finetune = commands.add_parser(
        "finetune", help="fine-tune a LoRA adapter on a service (select first, or a selection)"
    )
    finetune.add_argument("data", nargs="?", help="a JSONL dataset or a dataset id (with a budget)")
    finetune.add_argument("--selection", metavar="ID", help="train on this succeeded selection's subset instead")
    add_option_flags(finetune, features=False)
    finetune.add_argument("--model", help="a model name from GET /v1/models (default: the service's)")
    finetune.add_argument("--max-length", type=positive_int, metavar="M", help="tokens per example (1024)")
    finetune.add_argument("--out-dir", type=Path, default=Path("finetune"), help="with --wait: result and adapter")
    finetune.set_defaults(training_flags=add_training_arguments(finetune))
    add_server_arguments(finetune)
    finetune.add_argument("--wait", action="store_true", help="wait, then download the adapter")
    finetune.set_defaults(run=finetune_command)
