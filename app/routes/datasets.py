"""/v1/datasets: upload (multipart), read, list, delete."""

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile
from redis import Redis

from app import deps
from app.caller import Datasets
from app.errors import ApiError, documented, shown
from app.jobs import jobs_using
from fishersft.contract.base import Text
from fishersft.contract.datasets import DatasetClaim, DatasetFormat, DatasetRecord
from fishersft.contract.jobs import ID_HEX
from fishersft.contract.pages import Page
from fishersft.data.dataset import Example, iter_examples
from fishersft.data.formats import (
    CONVERTED,
    MAX_LINE_BYTES,
    SUFFIXES,
    TEXT_FORMATS,
    TooLarge,
    check_line_length,
    dataset_format,
    numbered_lines,
    to_jsonl,
)
from fishersft.data.groups import LabelCounter
from fishersft.errors import DatasetError, InputError
from fishersft.features.files import load_features
from fishersft.service import metrics
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
T = TypeVar("T")
Counts = tuple[int, int | None, int | None, dict[str, int]]
"""Examples, loss tokens, feature width and label fields of an upload."""


@router.post(
    "",
    status_code=201,
    response_model=DatasetRecord,
    summary="Upload a dataset or a features file",
    responses=documented(400, 413, 422, 507),
)
def create_dataset(
    response: Response,
    store: Annotated[ArtifactStore, Depends(deps.store)],
    datasets: Annotated[Datasets, Depends(deps.datasets)],
    settings: Annotated[Settings, Depends(deps.settings)],
    redis: Annotated[Redis, Depends(deps.redis)],
    file: Annotated[
        UploadFile,
        File(description="Examples (.jsonl, .jsonl.gz, .parquet), or features (.npz, .safetensors)."),
    ],
    name: Annotated[
        Text | None, Form(description="A name to show (at most 1,000 characters); default: the file name.")
    ] = None,
) -> DatasetRecord:
    """Stored content-addressed: the same bytes always give the same dataset id. Bad rows: 422 naming the first
    20 bad lines (rows, for Parquet), and nothing is stored. A .jsonl.gz or .parquet upload is stored as the JSONL
    it converts to (see fishersft.data.formats), which may not pass the upload size limit either."""
    fmt = dataset_format(file.filename or "")
    if fmt is None:
        endings = ", ".join(SUFFIXES)
        message = f"expected one of {endings} files, got {shown(file.filename or '')}"
        detail = {"field": "file", "message": f"the file name must end in one of {endings}"}
        raise ApiError(422, "unsupported_format", message, [detail])
    temp = store.temp_file(f".{fmt}")
    converted = store.temp_file(".jsonl")
    try:
        with _Upload(file, temp) as upload:
            counts = functools.partial(_counts, upload, fmt, converted, settings.max_upload_bytes)
            n_examples, n_loss_tokens, dim, labels = _validated(counts, fmt, temp, file.filename)
            upload.finish()
        dataset_id = f"ds_{upload.sha256[:ID_HEX]}"
        claim = DatasetClaim(name=name or file.filename, created_at=datetime.now(UTC))
        existing = store.dataset(dataset_id)
        if existing is None:
            if store.dataset_count() >= settings.max_datasets:
                message = f"the store holds its limit of {settings.max_datasets:,} datasets; delete some first"
                raise ApiError(507, "insufficient_storage", message)
            if store.free_bytes() < settings.min_free_bytes:
                raise ApiError(507, "insufficient_storage", "the artifact store is out of disk space; retry later")
            record = DatasetRecord(
                id=dataset_id,
                name=claim.name,
                format=fmt,
                n_examples=n_examples,
                n_loss_tokens=n_loss_tokens,
                dim=dim,
                labels=labels,
                sha256=upload.sha256,
                bytes=upload.size,
                created_at=claim.created_at,
            )
            store.put_blob(converted if fmt in CONVERTED else temp, upload.sha256)
            existing = store.put_dataset_once(record)  # concurrent identical uploads: the first record wins
        datasets.claim(dataset_id, claim)
        seen = datasets.get(dataset_id) or existing  # the caller's view: its own claim's name and time
        metrics.count(redis, metrics.BYTES_UPLOADED, amount=upload.size)
    finally:
        temp.unlink(missing_ok=True)
        converted.unlink(missing_ok=True)
    response.headers["Location"] = f"/v1/datasets/{dataset_id}"
    return seen


class _Upload:
    """Copies an uploaded file to `target` in 1 MiB chunks, hashing it, and hands out its lines on the way."""

    def __init__(self, file: UploadFile, target: Path) -> None:
        self.file, self.target = file, target
        self.digest, self.size, self.lines_read = hashlib.sha256(), 0, 0

    def __enter__(self) -> "_Upload":
        self.out = open(self.target, "wb")
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.close()

    def chunks(self) -> Iterator[bytes]:
        while chunk := self.file.file.read(1 << 20):
            self.digest.update(chunk)
            self.size += len(chunk)
            self.out.write(chunk)
            yield chunk

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """Lines that are not blank, with their 1-based numbers, as they arrive, in time linear in the upload (a
        line's bytes are scanned once, however long it is; blank lines cost no Python-level work each); a line
        over MAX_LINE_BYTES is refused as soon as it passes the limit."""
        pending = bytearray()
        for chunk in self.chunks():
            start = len(pending)
            pending += chunk
            cut = pending.rfind(b"\n", start)
            if cut >= 0:
                lines = bytes(pending[:cut]).split(b"\n")
                del pending[: cut + 1]
                yield from numbered_lines(lines, self.lines_read, MAX_LINE_BYTES)
                self.lines_read += len(lines)
            check_line_length(self.lines_read + 1, len(pending), MAX_LINE_BYTES)
        if pending:
            yield from numbered_lines([bytes(pending)], self.lines_read, MAX_LINE_BYTES)

    def finish(self) -> None:
        """Copy whatever was not read yet."""
        for _ in self.chunks():
            pass
        self.out.flush()

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


def _counts(upload: _Upload, fmt: DatasetFormat, converted: Path, max_bytes: int) -> Counts:
    """JSONL is validated line by line as it is copied; .jsonl.gz and .parquet are copied, then converted into
    JSONL at `converted` and validated a line or row group at a time (only ids and label values are kept); a
    features file is read whole once copied."""
    if fmt == "jsonl":
        return _text_counts(iter_examples(upload.lines()))
    upload.finish()
    if fmt in CONVERTED:
        return _text_counts(to_jsonl(upload.target, fmt, converted, max_bytes))
    features = load_features(upload.target)
    return len(features.ids), features.n_tokens, int(features.features.shape[1]), {}


def _text_counts(examples: Iterable[Example]) -> Counts:
    labels, n = LabelCounter(), 0
    for example in examples:
        labels.add(example.labels)
        n += 1
    return n, None, None, labels.counts()


def _validated(check: Callable[[], T], fmt: DatasetFormat, temp: Path, filename: str | None) -> T:
    """`check()`, with its input errors as 422s (413 past the size limit) that name the uploaded file, not our
    temporary copy."""
    try:
        return check()
    except DatasetError as e:
        details = [{err.unit: err.line, "message": err.message} for err in e.errors]
        raise ApiError(422, "invalid_dataset", e.message, details) from None
    except TooLarge as e:
        raise ApiError(413, "too_large", e.message) from None
    except InputError as e:
        code = "invalid_dataset" if fmt in TEXT_FORMATS else "invalid_features"
        details = [{"field": "file", "message": d} for d in e.details]  # the one error shape: objects, not strings
        raise ApiError(422, code, e.message.replace(temp.name, filename or "file"), details) from None


@router.get("", response_model=Page[DatasetRecord], summary="List datasets, newest first")
def list_datasets(
    datasets: Annotated[Datasets, Depends(deps.datasets)],
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 50,
    after: Annotated[str | None, Query(description="The `next_after` of the previous page.")] = None,
) -> Page[DatasetRecord]:
    records = sorted(datasets.all(), key=lambda r: (r.created_at, r.id), reverse=True)
    if after is not None:
        ids = [r.id for r in records]
        records = records[ids.index(after) + 1 :] if after in ids else []
    page = records[:limit]
    return Page(data=page, next_after=page[-1].id if len(records) > limit else None)


@router.get(
    "/{dataset_id}", response_model=DatasetRecord, summary="Read a dataset's metadata", responses=documented(404)
)
def get_dataset(dataset_id: str, datasets: Annotated[Datasets, Depends(deps.datasets)]) -> DatasetRecord:
    return _found(datasets, dataset_id)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Delete a dataset and its cached features",
    responses=documented(404, 409),
)
def delete_dataset(
    dataset_id: str, datasets: Annotated[Datasets, Depends(deps.datasets)], redis: Annotated[Redis, Depends(deps.redis)]
) -> Response:
    """With API keys, a key deletes its own claim; the dataset and its cached features go once no key holds it
    (an admin key deletes it for all). 409 while a queued or running job of the caller's uses it, naming each:
    cancel them, or wait for them to end."""
    record = _found(datasets, dataset_id)
    using = jobs_using(redis, record.id, datasets.caller)
    if using:
        details = [{"field": "dataset_id", "message": f"used by {job_id}"} for job_id in using[:20]]
        message = f"dataset {record.id} is used by {len(using)} queued or running job(s): cancel them or wait"
        raise ApiError(409, "dataset_in_use", message, details)
    datasets.delete(record)
    return Response(status_code=204)


def _found(datasets: Datasets, dataset_id: str) -> DatasetRecord:
    record = datasets.get(dataset_id)
    if record is None:
        raise ApiError(404, "dataset_not_found", f"no dataset {shown(dataset_id)}")
    return record
