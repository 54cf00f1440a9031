"""`fishersft` command line: local selection, the service (serve, api, worker, demo) and its client."""

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import transformers

from fishersft.client import ServiceClient
from fishersft.errors import InputError
from fishersft.features import is_features_path, load_features
from fishersft.models import sample_dataset
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
    parser.add_argument(
        "data", help="JSONL dataset or features (.npz, .safetensors, store); with --server also a dataset id"
    )
    parser.add_argument("--model", help="local model directory; with --server, a model name from GET /v1/models")
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
    add_server_arguments(parser, required=False)
    parser.add_argument("--wait", action="store_true", help="with --server: wait for the job and print its result")


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


def _budget(args: argparse.Namespace) -> Budget:
    return Budget(examples=args.budget) if args.budget is not None else Budget(tokens=args.budget_tokens)


def run_select(args: argparse.Namespace) -> dict:
    """Select on this machine: embed a JSONL dataset with a local model (or read features), then select."""
    data = Path(args.data)
    warm_start = _read_ids(args.warm_start) if args.warm_start else []
    with ProgressBars() as progress, tempfile.TemporaryDirectory(prefix="fishersft-") as tmp:
        if is_features_path(data):
            if args.model:
                raise InputError("--model is for JSONL datasets; features input needs no model")
            features, truncated, embed_s = load_features(data), 0, 0.0
        else:
            if not args.model:
                raise InputError("a JSONL dataset needs --model DIR to compute its features")
            if args.features_out and args.features_out.exists():
                raise InputError(f"--features-out {args.features_out} already exists; remove it or pick another")
            embedding = embed_dataset(
                data,
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
            _budget(args),
            method=args.method,
            lam=args.lam,
            seed=args.seed,
            warm_start_ids=warm_start,
            progress=progress,
        )
    result["truncated"] = truncated
    result["timings"]["embed_s"] = embed_s
    return result


def run_remote_select(args: argparse.Namespace, client: ServiceClient) -> dict:
    """Select on a service: upload DATA unless it is a dataset id, request the job, optionally wait for it."""
    dataset_id = args.data if not Path(args.data).exists() else client.upload(Path(args.data))["id"]
    body = {
        "dataset_id": dataset_id,
        "budget": _budget(args).as_dict(),
        "method": args.method,
        "lambda": args.lam,
        "seed": args.seed,
        "max_length": args.max_length,
        "model": args.model,
        "warm_start_ids": _read_ids(args.warm_start) if args.warm_start else [],
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


def _print_json(value: object, out: Path | None = None) -> None:
    text = json.dumps(value, indent=2)
    if out:
        out.write_text(text + "\n")
    else:
        print(text)


def select_command(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if args.server:
        result = run_remote_select(args, ServiceClient(args.server, args.api_key))
    elif args.wait:
        raise InputError("--wait is for --server; a local selection always waits")
    else:
        result = run_select(args)
    _print_json(result, args.out)
    if args.out and "selected" in result:
        elapsed = time.perf_counter() - started
        print(f"selected {len(result['selected'])} examples in {elapsed:.1f}s -> {args.out}", file=sys.stderr)


def demo_command(args: argparse.Namespace) -> None:
    """The whole service on this machine: private Redis, a worker, the API; upload the bundled sample, request
    a selection, follow its progress, print the picks."""
    from app.config import Settings
    from fishersft.embedded import EmbeddedService
    from fishersft.redis_server import free_port

    data = sample_dataset()
    with tempfile.TemporaryDirectory(prefix="fishersft-demo-") as tmp:
        settings = Settings(data_dir=Path(tmp))
        started = time.perf_counter()
        with EmbeddedService(settings, port=free_port(), log_level="WARNING") as service:
            service.serve_in_thread()
            print(
                f"service up at {service.url} (private Redis, 1 worker) in {time.perf_counter() - started:.1f}s",
                file=sys.stderr,
            )
            client = ServiceClient(service.url)
            dataset = client.upload(data, name="sample")
            print(f"uploaded {dataset['n_examples']} examples as {dataset['id']}", file=sys.stderr)
            body = {"dataset_id": dataset["id"], "budget": {"examples": args.budget}}
            job = client.create_selection(body)
            random = client.create_selection({**body, "method": "random"})
            with ProgressBars() as progress:
                job = client.wait(job["id"], lambda j: j["progress"] and progress(**j["progress"]))
            random = client.wait(random["id"])
    if job["status"] != "succeeded":
        raise InputError(f"the demo selection {job['status']}: {job['error']}")
    result = job["result"]
    prompts = {row["id"]: row["prompt"] for row in map(json.loads, data.read_text().splitlines())}
    print(
        f"FisherSFT picked {len(result['selected'])} of {result['n_candidates']} examples: log det "
        f"{result['objective']:.1f} (random pick: {random['result']['objective']:.1f})"
    )
    for example_id, gain in zip(result["selected"], result["gains"], strict=True):
        print(f"  {example_id:<15} gain {gain:6.2f}  {prompts[example_id][:60]}")
    print(
        f"end to end {time.perf_counter() - started:.1f}s (embedding {result['timings']['embed_s']:.2f}s, "
        f"selection {result['timings']['select_s']:.2f}s)"
    )


def serve_command(args: argparse.Namespace) -> None:
    from app.config import Settings
    from fishersft.embedded import EmbeddedService

    with EmbeddedService(Settings.from_env(), host=args.host, port=args.port, workers=args.workers) as service:
        print(
            f"fishersft at {service.url} (docs: {service.url}/docs), Redis {service.settings.redis_url}, "
            f"{args.workers} worker(s), data in {service.settings.data_dir}",
            file=sys.stderr,
        )
        service.server().run()


def api_command(args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port)


def worker_command(args: argparse.Namespace) -> None:
    from workers.__main__ import main as worker_main

    worker_main()


def datasets_command(args: argparse.Namespace) -> None:
    client = ServiceClient(args.server, args.api_key)
    _print_json(client.upload(args.file, args.name) if args.action == "upload" else client.datasets())


def jobs_command(args: argparse.Namespace) -> None:
    _print_json(ServiceClient(args.server, args.api_key).selection(args.id))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fishersft", description="FisherSFT data selection for fine-tuning.")
    commands = parser.add_subparsers(dest="command", required=True)
    select = commands.add_parser("select", help="select the most informative examples of a dataset")
    add_select_arguments(select)
    select.set_defaults(run=select_command)
    demo = commands.add_parser("demo", help="run the service on this machine and select from a bundled sample")
    demo.add_argument("--budget", type=positive_int, default=10, metavar="K", help="examples to select (default 10)")
    demo.set_defaults(run=demo_command)
    for name, run, help_text in (
        ("serve", serve_command, "API + workers (+ a private Redis when REDIS_URL is unset) on this machine"),
        ("api", api_command, "the HTTP API alone (REDIS_URL, FISHERSFT_DATA_DIR shared with workers)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=8000)
        command.set_defaults(run=run)
    commands.choices["serve"].add_argument("--workers", type=positive_int, default=1, help="worker processes")
    commands.add_parser("worker", help="an RQ worker for selection jobs").set_defaults(run=worker_command)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    transformers.logging.disable_progress_bar()
    try:
        args.run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
