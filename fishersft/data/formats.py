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


def to_jsonl(source: Path, fmt: TextFormat, out: Path, max_bytes: int | None = None) -> Iterator[Example]:
    """Convert the `.jsonl.gz` or `.parquet` file `source` into JSONL at `out`, yielding its examples validated as
    they are written (DatasetError names the bad lines or rows, as for JSONL). TooLarge once `out` would pass
    `max_bytes`."""
    with open(out, "wb") as f:
        sink = _Sink(f, max_bytes)
        if fmt == "jsonl.gz":
            yield from iter_examples(sink.copied(_gzip_lines(source)))
        elif fmt == "parquet":
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
            raise TooLarge(f"the dataset takes more than {self.max_bytes:,} bytes as JSONL, the upload size limit")
        self.out.write(line + b"\n")

    def copied(self, lines: Iterator[bytes]) -> Iterator[bytes]:
        for line in lines:
            self.write(line)
            yield line


def _gzip_lines(path: Path) -> Iterator[bytes]:
    """The decompressed lines (without their newline), each read up to MAX_LINE_BYTES and no further."""
    number = 0
    try:
        with gzip.open(path, "rb") as f:
            while line := f.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(line) > MAX_LINE_BYTES:
                    raise DatasetError([LineError(number, f"a line longer than {MAX_LINE_BYTES:,} bytes")])
                yield line.removesuffix(b"\n")
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"not a readable gzip file after line {number} ({e})") from None


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
