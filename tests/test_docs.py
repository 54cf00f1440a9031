"""The documentation stays usable: the README is a short front door that starts with the two commands, every
relative link in it and in docs/ reaches a file (and a heading, when it names one), and the CLI reference is
what the parser says today."""

import re
from pathlib import Path

import pytest

from fishersft.cli.reference import REGENERATE, reference
from fishersft.methods.study import STUDY

ROOT = Path(__file__).parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 200

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(markdown: str) -> str:
    """`markdown` without code, where brackets and parentheses are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def anchors(markdown: str) -> set[str]:
    """The ids GitHub gives the headings: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    ids, repeats = set(), dict[str, int]()
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", FENCE.sub("", markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        ids.add(f"{slug}-{repeats[slug]}" if slug in repeats else slug)
        repeats[slug] = repeats.get(slug, 0) + 1
    return ids


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file, or heading in a markdown file, does not exist."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not this repository's
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no such heading")
    return broken


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda page: page.name)
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_link_check_catches_a_missing_file_and_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## Scale-out (GPU)\n\n```sh\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#scale-out-gpu) [ok](#top) [gone](missing.md) [gone](other.md#not-a-heading) "
        "`[code](missing.md)` [web](https://example.com/x.md)\n\n# Top\n"
    )
    assert broken_links(page) == ["missing.md: no such file", "other.md#not-a-heading: no such heading"]


def test_readme_is_a_short_front_door_that_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    opening = [line for line in lines[1:] if line.strip()][:4]
    assert opening[0] == "```sh" and opening[3] == "```", "README.md opens with one sh block of the two commands"
    assert [line.split()[:2] for line in opening[1:3]] == [["make", "demo"], ["make", "test"]]


def test_cli_reference_is_current() -> None:
    written = (ROOT / "docs" / "cli.md").read_text()
    assert written == reference(), f"docs/cli.md is stale: regenerate it with `{REGENERATE}` (or `make docs`)"


def test_selection_warnings_point_at_a_section_that_exists() -> None:
    """A selection's warnings send the caller to the study by file and heading: both must be there."""
    cited = re.search(r"\((\S+\.md), '(.+)'\)", STUDY)
    assert cited is not None, STUDY
    path, heading = cited.groups()
    headings = re.findall(r"^#+ +(.+)$", FENCE.sub("", (ROOT / path).read_text()), re.M)
    assert any(title.startswith(heading) for title in headings), f"{STUDY}: no such heading in {path}"
