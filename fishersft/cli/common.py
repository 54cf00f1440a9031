"""What the command groups share: argument types, the budget options, progress bars and JSON output."""

import argparse
import json
import os
import sys
from pathlib import Path

from fishersft.errors import InputError
from fishersft.pipeline import Progress
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
    text = json.dumps(value, indent=2)
    if out:
        out.write_text(text + "\n")
    else:
        print(text)


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
