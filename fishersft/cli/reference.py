"""The CLI reference (docs/cli.md): every command's `--help`, read from the parser `fishersft` itself runs, so the
reference cannot say what the CLI does not. Regenerate with `python -m fishersft.cli.reference > docs/cli.md`
(`make docs`); tests/test_docs.py fails when the file is stale."""

import argparse
import functools
import sys
from collections.abc import Iterator
from typing import cast

from fishersft.cli import build_parser

WIDTH = 100
"""Columns the help is wrapped at, whatever the terminal that runs the generator: the text must not depend on it."""

REGENERATE = "python -m fishersft.cli.reference > docs/cli.md"


def commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser, then each subcommand's parser, depth first, in the order `--help` lists them."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in dict.fromkeys(action.choices.values()):  # an alias names a parser again
                yield from commands(subparser)


def help_text(parser: argparse.ArgumentParser) -> str:
    """`parser`'s `--help`, wrapped at WIDTH columns."""
    formatter_class = cast(type[argparse.HelpFormatter], parser.formatter_class)  # a class, as argparse's own are
    parser.formatter_class = functools.partial(formatter_class, width=WIDTH)
    return parser.format_help().rstrip()


def reference() -> str:
    """The markdown of docs/cli.md."""
    sections = [
        "# CLI reference",
        "",
        f"Generated from the parser by `{REGENERATE}` (`make docs`); do not edit by hand. How the commands fit",
        "together, with examples: [Selecting from your data](selecting.md).",
    ]
    for parser in commands(build_parser()):
        sections += ["", f"## `{parser.prog}`", "", "```text", help_text(parser), "```"]
    return "\n".join(sections) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
