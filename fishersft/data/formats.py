"""Dataset files besides JSONL: compressed JSONL (`.jsonl.gz`) and Parquet (`.parquet`), converted into the JSONL
the embedder reads, validated as they are converted.

Every reader of a dataset (the embedder, the workers, held-out splits, labels) reads JSONL; a `.jsonl.gz` or
`.parquet` file is turned into JSONL once, where it enters (the API's upload, the CLI's input), by `to_jsonl`, in
bounded memory: a line at a time from gzip, a batch of rows at a time from Parquet (pyarrow reads a row group at
a time). A `.jsonl.gz` becomes its decompressed lines as they are, so line numbers (and default ids) are the
decompressed file's. A Parquet row becomes one canonical line (`example_record`: `id`, the shape's fields, the
labels), so row numbers are line numbers and the default id, the 0-based row, is written out; columns of the
same names as JSONL's keys (`messages` as a list of {role, content} structs, `prompt`/`response`, `text`, `id`,
string columns as labels), and a null is an absent field.
"""

import gzip
import itertools
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, get_args

import pyarrow as pa
import pyarrow.parquet as pq

from fishersft.contract.datasets import DatasetFormat, TextFormat
from fishersft.data.dataset import Example, Record, example_record, iter_examples, iter_records
from fishersft.errors import DatasetError, InputError, LineError

SUFFIXES: dict[str, DatasetFormat] = {
    ".jsonl.gz": "jsonl.gz",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".npz": "npz",
    ".safetensors": "safetensors",
}
"""File name endings and the format they mean (longest first: `.jsonl.gz` before `.gz`-less matches)."""
TEXT_FORMATS: tuple[TextFormat, ...] = get_args(TextFormat)
CONVERTED: tuple[TextFormat, ...] = ("jsonl.gz", "parquet")
"""The text formats stored, and read, as the JSONL `to_jsonl` makes of them."""
MAX_LINE_BYTES = 64 << 20
"""One JSONL example may take up to 64 MiB; a longer line is refused (it would be parsed into memory whole)."""
PARQUET_BATCH_ROWS = 1024


class TooLarge(InputError):
    """The JSONL a compressed upload converts to passes the size limit."""


def dataset_format(name: str | Path) -> DatasetFormat | None:
    """The format a file name's ending says; None for an ending no format has."""
    lower = str(name).lower()
    return next((fmt for suffix, fmt in SUFFIXES.items() if lower.endswith(suffix)), None)


def as_jsonl(path: Path, directory: Path) -> Path:
    """A dataset file as JSONL: `path` itself, or (.jsonl.gz, .parquet) its conversion, validated, into `directory`
    (the command line's input)."""
    fmt = dataset_format(path)
    if fmt not in CONVERTED:
        return path
    out = directory / f"{path.name}.jsonl"
    for _ in to_jsonl(path, fmt, out):
        pass
    return out


GZ_CHUNK = 1 << 20
GZ_MAX_INFLATION = 20
"""An uploaded .jsonl.gz may inflate to at most 20 times its size past its first GZ_FREE_BYTES (JSONL text
compresses 3 to 10 times): a small file of newlines or repeated lines would otherwise cost minutes of work."""
GZ_FREE_BYTES = 1 << 20
GZ_BYTES_PER_LINE = 32
"""An uploaded .jsonl.gz may hold at most one line (blank ones too) per 32 bytes of the file past its first
GZ_FREE_LINES: each line costs work (about 10 us for the smallest valid one), and an example of SFT text takes
tens of bytes or more compressed. A plain .jsonl's smallest valid line, `{"text": "a"}`, takes 14 bytes."""
GZ_FREE_LINES = 50_000


def to_jsonl(source: Path, fmt: TextFormat, out: Path, max_bytes: int | None = None) -> Iterator[Example]:
    """Convert the `.jsonl.gz` or `.parquet` file `source` into JSONL at `out`, yielding its examples validated as
    they are written (DatasetError names the bad lines or rows, as for JSONL). With `max_bytes` (an upload):
    TooLarge once `out` would pass `max_bytes`, or a .jsonl.gz inflates past GZ_MAX_INFLATION times its size or
    holds more lines than GZ_BYTES_PER_LINE allows."""
    with open(out, "wb") as f:
        if fmt == "jsonl.gz":
            yield from iter_examples(_gzip_lines(source, f, max_bytes))
        elif fmt == "parquet":
            sink = _Sink(f, max_bytes)
            for example in iter_records(((n, _present, row) for n, row in _parquet_rows(source)), unit="row"):
                sink.write(json.dumps(example_record(example), ensure_ascii=False).encode("utf-8"))
                yield example
        else:
            raise ValueError(f"{fmt} needs no conversion")


class _Sink:
    def __init__(self, out: IO[bytes], max_bytes: int | None) -> None:
        self.out, self.max_bytes, self.size = out, max_bytes, 0

    def write(self, line: bytes) -> None:
        self.size += len(line) + 1
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise TooLarge(_too_large(self.max_bytes))
        self.out.write(line + b"\n")


def _too_large(max_bytes: int) -> str:
    return f"the dataset takes more than {max_bytes:,} bytes as JSONL, the upload size limit"


def _gzip_lines(path: Path, out: IO[bytes], max_bytes: int | None) -> Iterator[tuple[int, bytes]]:
    """Decompress `path` into `out` a chunk at a time, as it is (a final newline added if missing), and yield its
    lines that are not blank with their 1-based numbers. Blank lines are skipped in bulk, never one at a time in
    Python, and the limits are checked before each chunk is split."""
    size = path.stat().st_size
    limits = max_bytes is not None
    max_inflated = max(GZ_FREE_BYTES, GZ_MAX_INFLATION * size)
    max_lines = max(GZ_FREE_LINES, size // GZ_BYTES_PER_LINE)
    number, inflated, pending = 0, 0, bytearray()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(GZ_CHUNK):
                inflated += len(chunk)
                if max_bytes is not None and inflated > max_bytes:
                    raise TooLarge(_too_large(max_bytes))
                if limits and inflated > max_inflated:
                    raise TooLarge(
                        f"the .jsonl.gz inflates to more than {GZ_MAX_INFLATION} times its size, the limit for a "
                        "compressed upload: upload it as .jsonl"
                    )
                if limits and number + chunk.count(b"\n") > max_lines:
                    raise TooLarge(
                        f"the .jsonl.gz holds more than {max_lines:,} lines (blank ones too): at most one per "
                        f"{GZ_BYTES_PER_LINE} bytes of a compressed upload; upload it as .jsonl"
                    )
                out.write(chunk)
                start = len(pending)
                pending += chunk
                cut = pending.rfind(b"\n", start)
                if cut < 0:
                    check_line_length(number + 1, len(pending))
                    continue
                lines = bytes(pending[:cut]).split(b"\n")
                del pending[: cut + 1]
                yield from numbered_lines(lines, number)
                number += len(lines)
        if pending:
            if max_bytes is not None and inflated + 1 > max_bytes:
                raise TooLarge(_too_large(max_bytes))
            out.write(b"\n")
            yield from numbered_lines([bytes(pending)], number)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"not a readable gzip file after line {number} ({e})") from None


def numbered_lines(
    lines: list[bytes], before: int, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes]]:
    """The lines that are not blank, numbered from `before + 1`: filtered by C-level iterators, so that blank lines
    cost no Python-level work each. DatasetError for a line over `max_line_bytes`, naming it."""
    if lines and max(map(len, lines)) > max_line_bytes:
        longest = next(k for k, line in enumerate(lines) if len(line) > max_line_bytes)
        check_line_length(before + 1 + longest, len(lines[longest]), max_line_bytes)
    yield from itertools.compress(enumerate(lines, before + 1), map(bytes.strip, lines))


def check_line_length(number: int, length: int, max_line_bytes: int = MAX_LINE_BYTES) -> None:
    if length > max_line_bytes:
        raise DatasetError([LineError(number, f"a line longer than {max_line_bytes:,} bytes")])


def _parquet_rows(path: Path) -> Iterator[tuple[int, Record]]:
    """(1-based row number, row as a dict), a batch at a time."""
    number = 0
    try:
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InputError(f"not a readable Parquet file after row {number} ({e})") from None


def _present(row: dict[str, Any]) -> Record:
    """A Parquet row's fields that are not null: a column holds every field, a row may lack some."""
    return {key: value for key, value in row.items() if value is not None}
