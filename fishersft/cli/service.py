"""Commands that run the service: `serve` (everything on this machine), `api`, `worker`, and `demo`."""

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from fishersft.cli.common import ProgressBars, job_progress, positive_int
from fishersft.client import Client
from fishersft.contract.selection import (
    DEFAULT_WEIGHTING,
    Budget,
    Method,
    SelectionCreate,
    SelectionResult,
    Weighting,
)
from fishersft.data import corpora
from fishersft.errors import InputError
from fishersft.methods import DEFAULT_METHOD, YARDSTICK, method_spec
from fishersft.service.settings import Settings


def demo_command(args: argparse.Namespace) -> None:
    """The whole service on this machine (private Redis, a worker, the API) on real data: chatterbot-corpus
    English, embedded by the default model, selected five ways: under an example budget fisher with its default
    weighting, fisher with the paper's, and random; under the loss-token budget the random subset used, fisher
    (default weighting) and random."""
    from fishersft.cli.embedded import EmbeddedService
    from fishersft.service.redis_server import free_port

    rows = corpora.chatterbot(["english"])
    category = {row["id"]: row["category"] for row in rows}
    first_turn = {row["id"]: row["messages"][0]["content"] for row in rows}
    with tempfile.TemporaryDirectory(prefix="fishersft-demo-") as tmp:
        data = Path(tmp) / "chatterbot-english.jsonl"
        corpora.write_jsonl(rows, data)
        settings = Settings.from_env().model_copy(update={"data_dir": Path(tmp) / "data", "log_level": "WARNING"})
        started = time.perf_counter()
        with EmbeddedService(settings, port=free_port()) as service, Client(service.url) as client:
            service.serve_in_thread()
            print(f"service up at {service.url} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
            dataset = client.upload_dataset(data, name=data.name)
            print(f"uploaded {dataset.n_examples} conversations as {dataset.id}", file=sys.stderr)

            def run(budget: Budget, method: Method, weighting: Weighting | None = None) -> SelectionResult:
                body = SelectionCreate(dataset_id=dataset.id, budget=budget, method=method, weighting=weighting)
                with ProgressBars() as progress:
                    job = client.wait(client.create_selection(body), on_progress=job_progress(progress))
                if job.result is None:
                    raise InputError(f"the demo selection {job.status}: {job.error}")
                return job.result

            fisher, paper, random = (
                run(Budget(examples=args.budget), DEFAULT_METHOD),
                run(Budget(examples=args.budget), DEFAULT_METHOD, weighting="tokens"),
                run(Budget(examples=args.budget), YARDSTICK),
            )
            tokens = random.n_selected_loss_tokens
            by_tokens = [run(Budget(tokens=tokens), method) for method in (DEFAULT_METHOD, YARDSTICK)]
    groups = fisher.groups
    assert groups is not None, "chatterbot-corpus rows carry a category"
    print(
        f"chatterbot-corpus English: {fisher.n_candidates} conversations in {groups.total} "
        f"categories, {fisher.n_loss_tokens:,} loss tokens; model {fisher.model} (d={fisher.dim}), "
        f"embedded in {fisher.timings['embed_s']:.1f}s\n"
    )
    header = f"{'budget':<18} {'method':<7} {'weighting':<11} {'examples':>8} {'loss tokens':>11} {'categories':>10}"
    print(header + " ratio")
    for label, results in ((f"{args.budget} examples", [fisher, paper, random]), (f"{tokens} loss tokens", by_tokens)):
        for result in results:
            weighting = result.weighting if method_spec(result.method).objective else ""
            covered = f"{result.groups.covered}/{result.groups.total}" if result.groups else ""
            print(
                f"{label:<18} {result.method:<7} {weighting:<11} {len(result.selected):>8} "
                f"{result.n_selected_loss_tokens:>11,} {covered:>10} {result.length_ratio:5.1f}"
            )
    counts = Counter(category[i] for i in paper.selected).most_common(3)
    print(
        f"\nthe paper's weighting under {args.budget} examples picks {', '.join(f'{c} {n}' for c, n in counts)}; first:"
    )
    for example_id in paper.selected[:3]:
        print(f"  {category[example_id]:<13} {first_turn[example_id][:70]!r}")
    for warning in paper.warnings:
        print(f"warning: {warning}")
    print(
        f"\nDefaults (weighting `{DEFAULT_WEIGHTING['examples']}` under an example budget, "
        f"`{DEFAULT_WEIGHTING['tokens']}` under a token budget) were chosen by held-out loss after LoRA fine-tuning: "
        "see docs/results.md."
    )
    print(f"end to end {time.perf_counter() - started:.1f}s")


def serve_command(args: argparse.Namespace) -> None:
    from fishersft.cli.embedded import EmbeddedService, exit_on_sigterm

    exit_on_sigterm()
    with EmbeddedService(Settings.from_env(), host=args.host, port=args.port, workers=args.workers) as service:
        print(
            f"fishersft at {service.url} (docs: {service.url}/docs), Redis {service.settings.redis_url}, "
            f"{args.workers} worker(s), data in {service.settings.data_dir}",
            file=sys.stderr,
        )
        service.server().run()


def api_command(args: argparse.Namespace) -> None:
    import uvicorn

    Settings.from_env()  # a bad setting stops here with its message, not inside uvicorn's factory call
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port)


def worker_command(args: argparse.Namespace) -> None:
    from workers.__main__ import main as worker_main

    worker_main(args.queue or ())


def add_commands(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo", help="run the service on this machine and select from chatterbot-corpus English with the default model"
    )
    demo.add_argument("--budget", type=positive_int, default=30, metavar="K", help="examples to select (default 30)")
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
    worker = commands.add_parser("worker", help="an RQ worker for selection, finetune and comparison jobs")
    worker.add_argument(
        "--queue",
        action="append",
        metavar="NAME",
        help="take jobs from this queue only (repeatable; default: FISHERSFT_QUEUE and FISHERSFT_TRAINING_QUEUE); "
        "webhook deliveries are always taken",
    )
    worker.set_defaults(run=worker_command)
