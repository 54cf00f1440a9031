"""The HTTP client's commands: `select --server`, `datasets upload|list`, `jobs get`."""

import argparse
from pathlib import Path

from fishersft.cli.common import ProgressBars, add_server_arguments, budget, print_json, read_ids
from fishersft.client import ServiceClient
from fishersft.errors import InputError


def run_remote_select(args: argparse.Namespace, client: ServiceClient) -> dict:
    """Select on a service: upload DATA unless it is a dataset id, request the job, optionally wait for it."""
    dataset_id = args.data if not Path(args.data).exists() else client.upload(Path(args.data))["id"]
    body = {
        "dataset_id": dataset_id,
        "budget": budget(args).as_dict(),
        "method": args.method,
        "lambda": args.lam,
        "seed": args.seed,
        "max_length": args.max_length,
        "model": args.model,
        "warm_start_ids": read_ids(args.warm_start) if args.warm_start else [],
    }
    job = client.create_selection(body)
    if not args.wait:
        return job
    with ProgressBars() as progress:
        job = client.wait(job["id"], lambda j: j["progress"] and progress(**j["progress"]))
    if job["status"] != "succeeded":
        error = job["error"] or {"message": job["status"], "code": job["status"]}
        raise InputError(f"selection {job['id']} {job['status']}: {error['message']} ({error['code']})")
    return job["result"]


def datasets_command(args: argparse.Namespace) -> None:
    client = ServiceClient(args.server, args.api_key)
    print_json(client.upload(args.file, args.name) if args.action == "upload" else client.datasets())


def jobs_command(args: argparse.Namespace) -> None:
    print_json(ServiceClient(args.server, args.api_key).selection(args.id))


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
    get = job_actions.add_parser("get", help="a job's status, progress and result")
    get.add_argument("id")
    add_server_arguments(get)
    get.set_defaults(run=jobs_command)
