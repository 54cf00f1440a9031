"""/v1/datasets: upload (multipart), read, list, delete."""

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile

from app import deps
from app.errors import ApiError
from app.schemas import Dataset, Page
from app.store import ArtifactStore
from fishersft.dataset import read_jsonl
from fishersft.errors import DatasetError, InputError
from fishersft.features import load_features

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".npz": "npz", ".safetensors": "safetensors"}


@router.post("", status_code=201, response_model=Dataset, summary="Upload a dataset or a features file")
def create_dataset(
    response: Response,
    store: Annotated[ArtifactStore, Depends(deps.store)],
    file: Annotated[UploadFile, File(description="JSONL dataset (.jsonl), or features (.npz, .safetensors).")],
    name: Annotated[str | None, Form(description="A name to show; default: the file name.")] = None,
) -> Dataset:
    """Stored content-addressed: the same bytes always give the same dataset id. Bad rows: 422 naming the first
    20 bad lines, and nothing is stored."""
    suffix = Path(file.filename or "").suffix.lower()
    if suffix not in FORMATS:
        message = f"expected a .jsonl, .npz or .safetensors file, got {file.filename!r}"
        detail = {"field": "file", "message": "the file name must end in .jsonl, .npz or .safetensors"}
        raise ApiError(422, "unsupported_format", message, [detail])
    temp = store.temp_file(suffix)
    try:
        sha256, size = _copy_hashing(file, temp)
        dataset_id = f"ds_{sha256[:24]}"
        existing = store.dataset(dataset_id)
        if existing is None:
            n_examples, n_loss_tokens = _validate(temp, FORMATS[suffix])
            existing = Dataset(
                id=dataset_id,
                name=name or file.filename,
                format=FORMATS[suffix],
                n_examples=n_examples,
                n_loss_tokens=n_loss_tokens,
                sha256=sha256,
                bytes=size,
                created_at=datetime.now(UTC),
            ).model_dump(mode="json")
            store.put_blob(temp, sha256)
            store.put_dataset(existing)
    finally:
        temp.unlink(missing_ok=True)
    response.headers["Location"] = f"/v1/datasets/{dataset_id}"
    return Dataset(**existing)


def _copy_hashing(file: UploadFile, target: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        while chunk := file.file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def _validate(path: Path, fmt: str) -> tuple[int, int | None]:
    try:
        if fmt == "jsonl":
            return len(read_jsonl(path)), None
        features = load_features(path)
        return len(features.ids), features.n_tokens
    except DatasetError as e:
        details = [{"line": err.line, "message": err.message} for err in e.errors]
        raise ApiError(422, "invalid_dataset", e.message, details) from None
    except InputError as e:
        raise ApiError(422, "invalid_features", e.message.replace(path.name, "file"), e.details) from None


@router.get("", response_model=Page[Dataset], summary="List datasets, newest first")
def list_datasets(
    store: Annotated[ArtifactStore, Depends(deps.store)],
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 50,
    after: Annotated[str | None, Query(description="The `next_after` of the previous page.")] = None,
) -> Page[Dataset]:
    records = sorted(store.datasets(), key=lambda r: (r["created_at"], r["id"]), reverse=True)
    if after is not None:
        ids = [r["id"] for r in records]
        records = records[ids.index(after) + 1 :] if after in ids else []
    page = records[:limit]
    return Page(data=[Dataset(**r) for r in page], next_after=page[-1]["id"] if len(records) > limit else None)


@router.get("/{dataset_id}", response_model=Dataset, summary="Read a dataset's metadata")
def get_dataset(dataset_id: str, store: Annotated[ArtifactStore, Depends(deps.store)]) -> Dataset:
    return Dataset(**_found(store, dataset_id))


@router.delete("/{dataset_id}", status_code=204, summary="Delete a dataset and its cached features")
def delete_dataset(dataset_id: str, store: Annotated[ArtifactStore, Depends(deps.store)]) -> Response:
    store.delete_dataset(_found(store, dataset_id))
    return Response(status_code=204)


def _found(store: ArtifactStore, dataset_id: str) -> dict:
    record = store.dataset(dataset_id)
    if record is None:
        raise ApiError(404, "dataset_not_found", f"no dataset {dataset_id!r}")
    return record
