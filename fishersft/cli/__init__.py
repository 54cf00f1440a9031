"""`fishersft` command line. Four groups of commands, a module each: `local` (select on this machine, sample
data, models), `compare` (methods fine-tuned against random subsets), `service` (serve, api, worker, demo) and
`remote` (the HTTP client)."""

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from fishersft.cli import compare, local, remote, service
from fishersft.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fishersft", description="FisherSFT data selection for fine-tuning.")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (local, compare, service, remote):
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import transformers

    transformers.logging.disable_progress_bar()
    try:
        args.run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:  # an option outside what the contract allows (the same limits as the API's)
        fields = [".".join(str(part).rstrip("_") for part in err["loc"]) or "options" for err in e.errors()]
        problems = "; ".join(f"{field}: {err['msg']}" for field, err in zip(fields, e.errors(), strict=True))
        print(f"error: {problems}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
