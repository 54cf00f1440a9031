"""Read SFT datasets: JSONL, one example per line, in one of three shapes.

- prompt/response: {"id"?, "prompt": str, "response": str}: SFT trains on the response, given the prompt.
- chat:            {"id"?, "messages": [{"role": str, "content": str}, ...]}: trains on the assistant turns.
- text:            {"id"?, "text": str}: trains on every token.

`id` (a string or an integer) defaults to the 0-based line number. Other keys with string values are kept as
`labels` (`category`, `language`, `source`: what held-out splits are stratified by); the rest are ignored. Every
line of a file must have the same shape. Blank lines are skipped. `.jsonl.gz` and Parquet files are validated by
the same code (`iter_records`) as they are converted into JSONL: see fishersft.data.formats.
"""

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from fishersft.contract.base import ExampleId
from fishersft.errors import DatasetError, LineError

T = TypeVar("T")
Shape = Literal["prompt_response", "messages", "text"]
SHAPE_KEYS: dict[Shape, tuple[str, ...]] = {
    "prompt_response": ("prompt", "response"),
    "messages": ("messages",),
    "text": ("text",),
}
DEFAULT_MAX_LENGTH = 1024
"""Tokens per example unless a request or command says otherwise (or the model's context is shorter)."""
ENCODE_CHUNK = 1024
"""Examples the embedder reads, encodes and batches at a time (memory holds one chunk, whatever the dataset's
size). Batches, and so the features to the last bit, depend on the chunks: a shard starts at a multiple of it."""
OWN_KEYS = {"id", "prompt", "response", "messages", "text"}
SHAPE_NAMES: dict[Shape, str] = {"prompt_response": "prompt/response", "messages": "chat messages", "text": "text"}


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Example:
    id: ExampleId
    line: int
    """1-based line number in the source file (the row, in a Parquet file)."""
    shape: Shape
    prompt: str = ""
    response: str = ""
    text: str = ""
    messages: tuple[Message, ...] = field(default=())
    labels: dict[str, str] = field(default_factory=dict)
    """The line's other string fields, e.g. {"category": "coding"}."""


class _BadLine(Exception):
    pass


def read_jsonl(path: str | Path, max_errors: int = 20) -> list[Example]:
    with open(path, "rb") as f:
        return read_examples(f, max_errors=max_errors)


def read_examples(lines: Iterable[bytes | str], max_errors: int = 20) -> list[Example]:
    """Parse and validate every line; raise DatasetError listing the first `max_errors` problems."""
    return list(iter_examples(lines, max_errors))


def iter_examples(
    lines: Iterable[bytes | str] | Iterable[tuple[int, bytes | str]], max_errors: int = 20
) -> Iterator[Example]:
    """Yield the examples as the lines come, keeping only their ids (for duplicates); at the end, or once more
    than `max_errors` lines are bad, raise DatasetError listing the first `max_errors` problems. `lines`: the
    file's lines, or (1-based line number, line) pairs from further into it."""
    return iter_records(((number, _parse, line) for number, line in _numbered(lines)), max_errors)


Record = dict[str, Any]
"""One example's fields, as a JSON object or a Parquet row holds them."""


def iter_records(
    records: Iterable[tuple[int, Callable[[T], Record | None], T]], max_errors: int = 20, unit: str = "line"
) -> Iterator[Example]:
    """`iter_examples` over (1-based number, parse, raw) triples: `parse(raw)` gives the record (None: skip it)
    or raises _BadLine. Every format's rows are validated here, and errors name the `unit` ("line", "row")."""
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    shape: tuple[Shape, int] | None = None  # the dataset's shape and the line that set it
    for number, parse, raw in records:
        if len(errors) > max_errors:
            raise DatasetError(errors[:max_errors], more=True)
        try:
            record = parse(raw)
            if record is None:
                continue
            example = _example(record, number)
            if shape is None:
                shape = (example.shape, number)
            elif example.shape != shape[0]:
                raise _BadLine(
                    f"mixed shapes: this {unit} is {SHAPE_NAMES[example.shape]} but {unit} {shape[1]} is "
                    f"{SHAPE_NAMES[shape[0]]}; use one shape per file"
                )
            key = str(example.id)
            if key in seen:
                raise _BadLine(f"duplicate id {example.id!r} (first used on {unit} {seen[key]})")
            seen[key] = number
        except _BadLine as e:
            errors.append(LineError(number, str(e), unit))
            continue
        yield example
    if errors:
        raise DatasetError(errors[:max_errors], more=len(errors) > max_errors)
    if not seen:
        raise DatasetError([LineError(1, "the dataset is empty: no examples found", unit)])


def _numbered(lines: Iterable[bytes | str] | Iterable[tuple[int, bytes | str]]) -> Iterator[tuple[int, bytes | str]]:
    for number, line in enumerate(lines, start=1):
        yield line if isinstance(line, tuple) else (number, line)


def _parse(raw: bytes | str) -> dict[str, Any] | None:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise _BadLine(f"not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise _BadLine(f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise _BadLine("JSON nested too deeply to read (arrays or objects within each other)") from None
    if not isinstance(record, dict):
        raise _BadLine(f"expected a JSON object, got {type(record).__name__}")
    if "\\u" in text:  # only a \uXXXX escape can smuggle a lone surrogate past UTF-8 decoding
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _BadLine(
                "a string holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape): not valid text"
            ) from None
    return record


def _example(record: dict[str, Any], number: int) -> Example:
    present = [shape for shape, keys in SHAPE_KEYS.items() if any(k in record for k in keys)]
    if not present:
        keys = ", ".join(sorted(record)) or "none"
        raise _BadLine(f'unknown shape: expected "prompt"+"response", "messages" or "text"; got keys: {keys}')
    if len(present) > 1:
        names = " and ".join(SHAPE_NAMES[s] for s in present)
        raise _BadLine(f"ambiguous shape: the object has fields of both {names}")
    example_id = record.get("id", number - 1)
    if isinstance(example_id, bool) or not isinstance(example_id, str | int):
        raise _BadLine(f'"id" must be a string or an integer, got {_shown(example_id)}')
    shape = present[0]
    labels = _labels(record)
    if shape == "prompt_response":
        return Example(
            example_id,
            number,
            shape,
            prompt=_string(record, "prompt", empty_ok=True),
            response=_string(record, "response"),
            labels=labels,
        )
    if shape == "text":
        return Example(example_id, number, shape, text=_string(record, "text"), labels=labels)
    return Example(example_id, number, shape, messages=_messages(record["messages"]), labels=labels)


def _shown(value: Any) -> str:
    """A value as an error quotes it: its JSON, or its type where it has none (a Parquet timestamp, bytes)."""
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError, RecursionError):
        return type(value).__name__


def example_record(example: Example) -> Record:
    """The record that reads back as `example`, with its id: a dataset's canonical JSONL line (see
    fishersft.data.formats)."""
    fields: Record
    if example.shape == "prompt_response":
        fields = {"prompt": example.prompt, "response": example.response}
    elif example.shape == "text":
        fields = {"text": example.text}
    else:
        fields = {"messages": [{"role": m.role, "content": m.content} for m in example.messages]}
    return {"id": example.id, **fields, **example.labels}


def _labels(record: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in record.items() if isinstance(v, str) and k not in OWN_KEYS}


def read_labels(path: str | Path) -> list[dict[str, str]]:
    """Each example's labels, in order, from a dataset that was validated before (an upload): JSON parsing only."""
    with open(path, "rb") as f:
        return [_labels(record) for line in f if (record := _parse(line)) is not None]


def read_ids(path: str | Path) -> list[ExampleId]:
    """Each example's id, in order, from a dataset that was validated before (an upload)."""
    with open(path, "rb") as f:
        return [
            record.get("id", number - 1)
            for number, line in enumerate(f, start=1)
            if (record := _parse(line)) is not None
        ]


def _string(record: dict[str, Any], key: str, empty_ok: bool = False) -> str:
    if key not in record:
        raise _BadLine(f'missing field "{key}"')
    value = record[key]
    if not isinstance(value, str):
        raise _BadLine(f'"{key}" must be a string, got {type(value).__name__}')
    if not empty_ok and not value.strip():
        raise _BadLine(f'empty "{key}": there is nothing to train on')
    return value


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise _BadLine('"messages" must be a non-empty list of {"role", "content"} objects')
    messages = []
    for k, message in enumerate(value):
        if not isinstance(message, dict):
            raise _BadLine(f"messages[{k}] must be an object")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise _BadLine(f'messages[{k}] needs a string "{key}"')
        messages.append(Message(message["role"], message["content"]))
    if not any(m.role == "assistant" and m.content.strip() for m in messages):
        raise _BadLine('no non-empty "assistant" message: there is nothing to train on')
    return tuple(messages)
