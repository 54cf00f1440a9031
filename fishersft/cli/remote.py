"""The HTTP client's commands: `select --server`, `datasets upload|list`, `jobs get`."""

import argparse
from pathlib import Path

from pydantic import BaseModel

from fishersft.cli.common import (
    ProgressBars,
    add_server_arguments,
    add_training_arguments,
    budget,
    comparison_options,
    evaluation_request,
    feature_options,
    job_progress,
    lora_settings,
    positive_int,
    print_json,
    read_ids,
    selection_options,
    training_settings,
)
from fishersft.client import ServiceClient
from fishersft.contract.comparison import ComparisonCreate, ComparisonResult
from fishersft.contract.selection import METHODS, SelectionCreate
from fishersft.contract.training import FinetuneCreate
from fishersft.errors import InputError


def run_remote_select(args: argparse.Namespace, client: ServiceClient) -> dict:
    """Select on a service: upload DATA unless it is a dataset id, request the job, optionally wait for it."""
    dataset_id = dataset_ref(client, args.data)
    options = selection_options(args, read_ids(args.warm_start) if args.warm_start else [])
    features = feature_options(args, args.model)
    target = None if args.target is None else dataset_ref(client, str(args.target))
    body = SelectionCreate(
        dataset_id=dataset_id, target_dataset_id=target, **options.model_dump(), **features.model_dump()
    )
    job = client.create_selection(request_json(body))
    return follow(client, job) if args.wait else job


def dataset_ref(client: ServiceClient, data: str) -> str:
    """A dataset id: DATA itself, or the id of DATA uploaded when it is a file."""
    return data if not Path(data).exists() else client.upload(Path(data))["id"]


def request_json(body: BaseModel) -> dict:
    """A request as the API takes it: by the fields' JSON names, leaving out what is not given."""
    return body.model_dump(mode="json", by_alias=True, exclude_none=True)


def datasets_command(args: argparse.Namespace) -> None:
    client = ServiceClient(args.server, args.api_key)
    print_json(client.upload(args.file, args.name) if args.action == "upload" else client.datasets())


def jobs_command(args: argparse.Namespace) -> None:
    print_json(ServiceClient(args.server, args.api_key).job(args.id))


def training_body(args: argparse.Namespace, client: ServiceClient) -> dict:
    """The lora, training and eval fields of a finetune or comparison request, from the shared options."""
    eval_id = client.upload(args.eval_data)["id"] if args.eval_data else None
    return {
        "lora": lora_settings(args),
        "training": training_settings(args).model_copy(update={"max_length": args.max_length}),
        "eval": evaluation_request(args, eval_id),
    }


def follow(client: ServiceClient, job: dict) -> dict:
    """Wait for a job with progress bars; its result, or an InputError saying why it did not succeed."""
    with ProgressBars() as progress:
        job = client.wait(job["id"], job_progress(progress))
    if job["status"] != "succeeded":
        error = job["error"] or {"message": job["status"], "code": job["status"]}
        raise InputError(f"{job['id']} {job['status']}: {error['message']} ({error['code']})")
    return job["result"]


def finetune_command(args: argparse.Namespace) -> None:
    """Fine-tune on a service: on --selection's subset, or select DATA under the budget first."""
    client = ServiceClient(args.server, args.api_key)
    if args.selection:
        source: dict = {"selection_id": args.selection}
    else:
        if not args.data or (args.budget is None and args.budget_tokens is None):
            raise InputError("give --selection ID, or DATA with --budget K or --budget-tokens T")
        dataset_id = dataset_ref(client, args.data)
        source = {"dataset_id": dataset_id, "budget": budget(args), "method": args.method, "model": args.model}
    fields = training_body(args, client)
    if args.selection:  # a selection fixes the loss tokens, max_length included
        fields["training"] = fields["training"].model_copy(update={"max_length": None})
    job = client.create("finetunes", request_json(FinetuneCreate(**source, **fields)))
    if not args.wait:
        print_json(job)
        return
    result = follow(client, job)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print_json(result, args.out_dir / "finetune.json")
    client.download(result["adapter"]["url"], args.out_dir / "adapter.tar.gz")
    evaluation = result["eval"]
    loss = (
        f", held-out loss {evaluation['before']['loss']:.3f} -> {evaluation['after']['loss']:.3f}" if evaluation else ""
    )
    print(f"trained {result['subset']['size']} examples in {result['steps']} steps{loss} -> {args.out_dir}")


def run_remote_compare(args: argparse.Namespace) -> ComparisonResult | None:
    """A comparison on a service; with --wait, its table and plot (saved in --out-dir)."""
    client = ServiceClient(args.server, args.api_key)
    dataset_id = dataset_ref(client, args.data)
    eval_id = dataset_ref(client, str(args.eval_data)) if args.eval_data else None
    target = None if args.target is None else dataset_ref(client, str(args.target))
    options = comparison_options(args, eval_id)
    body = ComparisonCreate(dataset_id=dataset_id, model=args.model, target_dataset_id=target, **dict(options))
    job = client.create("comparisons", request_json(body))
    if not args.wait:
        print_json(job)
        return None
    result = ComparisonResult.model_validate(follow(client, job))
    if result.plot_url:
        client.download(result.plot_url, args.out_dir / "comparison.png")
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
    jobs = commands.add_parser("jobs", help="selection jobs on a running service")
    job_actions = jobs.add_subparsers(dest="action", required=True)
    get = job_actions.add_parser("get", help="a job's status, progress and result (selection, finetune, comparison)")
    get.add_argument("id")
    add_server_arguments(get)
    get.set_defaults(run=jobs_command)
    finetune = commands.add_parser(
        "finetune", help="fine-tune a LoRA adapter on a service (select first, or a selection)"
    )
    finetune.add_argument("data", nargs="?", help="a JSONL dataset or a dataset id (with a budget)")
    finetune.add_argument("--selection", metavar="ID", help="train on this succeeded selection's subset instead")
    choice = finetune.add_mutually_exclusive_group()
    choice.add_argument("--budget", type=positive_int, metavar="K", help="select at most K examples first")
    choice.add_argument("--budget-tokens", type=positive_int, metavar="T", help="or at most T loss tokens")
    finetune.add_argument("--method", choices=[m for m in METHODS if m != "similarity"], default="fisher")
    finetune.add_argument("--model", help="a model name from GET /v1/models (default: the service's)")
    finetune.add_argument("--max-length", type=positive_int, metavar="M", help="tokens per example (1024)")
    finetune.add_argument("--out-dir", type=Path, default=Path("finetune"), help="with --wait: result and adapter")
    add_training_arguments(finetune)
    add_server_arguments(finetune)
    finetune.add_argument("--wait", action="store_true", help="wait, then download the adapter")
    finetune.set_defaults(run=finetune_command)
