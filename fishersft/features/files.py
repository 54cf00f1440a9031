"""Reading feature files: a features store, or an uploaded `.npz` / `.safetensors` (untrusted: validated); and
adding IFD scores to a store."""

import json
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from fishersft.data.dataset import ExampleId
from fishersft.features.set import (
    FEATURE_SUFFIXES,
    FEATURES_FILE,
    IDS_FILE,
    IFD_FILE,
    LENGTHS_FILE,
    LOSSES_FILE,
    MEANS_FILE,
    META_FILE,
    OFFSETS_FILE,
    PROJECTION_FILE,
    UNCERTAIN_FILE,
    UNCERTAINTY_FILE,
    FeaturesError,
    FeatureSet,
    NpyMember,
    Rows,
    read_rows,
)


def is_features_path(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix in FEATURE_SUFFIXES or (path / FEATURES_FILE).exists()


def load_features(path: str | Path, suffix: str | None = None) -> FeatureSet:
    """Load and validate a features store, `.npz` or `.safetensors` file, every row of an uploaded file included
    (an upload's check at the door); `suffix` names the format of a file whose name does not end in it (a
    content-addressed blob)."""
    features = read_features(path, suffix)
    if features.means is None:  # not a compressed store, whose rows were checked as they were written
        check_rows(features.features, Path(path).name)
    return features


def read_features(path: str | Path, suffix: str | None = None) -> FeatureSet:
    """`load_features` but for the rows of an uploaded file, which are left to whoever reads them next: the
    features store they are compressed into checks each example's rows as it reads them (`store.compress_store`),
    so a file is read once on its way to a store, not once to check it and again to compress it."""
    path = Path(path)
    if not path.exists():
        raise FeaturesError(f"no such file or directory: {path}")
    suffix = suffix or path.suffix
    try:
        if path.is_dir():
            features = np.load(path / FEATURES_FILE, mmap_mode="r")
            offsets = np.load(path / OFFSETS_FILE)
            ids = json.loads((path / IDS_FILE).read_text())
            if (path / LENGTHS_FILE).exists():  # a compressed store
                store = validate(features, offsets, ids, path.name)
                store.lengths = np.load(path / LENGTHS_FILE)
                store.means = np.load(path / MEANS_FILE, mmap_mode="r")
                if (path / PROJECTION_FILE).exists():
                    store.principal = np.load(path / PROJECTION_FILE)
                store.meta = store_meta(path)
                if len(store.lengths) != len(ids) or (store.lengths < np.diff(offsets)).any():
                    raise FeaturesError(f"{path.name}: lengths.npy does not match the rows")
                store.losses, store.ifd = (
                    np.load(path / name) if (path / name).exists() else None for name in (LOSSES_FILE, IFD_FILE)
                )
                for name, scores in ((LOSSES_FILE, store.losses), (IFD_FILE, store.ifd)):
                    if scores is not None and len(scores) != len(ids):
                        raise FeaturesError(f"{path.name}: {name} does not match the examples")
                if (path / UNCERTAINTY_FILE).exists():
                    store.uncertainty = np.load(path / UNCERTAINTY_FILE, mmap_mode="r")
                    store.uncertain = np.load(path / UNCERTAIN_FILE, mmap_mode="r")
                    shapes = (store.uncertainty.shape, store.uncertain.shape)
                    if shapes != ((len(features), 1), (int(store.uncertain_offsets[-1]), features.shape[1])):
                        raise FeaturesError(
                            f"{path.name}: {UNCERTAINTY_FILE} or {UNCERTAIN_FILE} does not match the rows"
                        )
                return store
        elif suffix == ".npz":
            _check_inflation(path)
            with np.load(path, allow_pickle=False) as data:
                missing = {"features", "offsets"} - set(data.files)
                if missing:
                    raise FeaturesError(f"{path.name}: missing array(s) {', '.join(sorted(missing))}")
                offsets = data["offsets"]
                ids = data["ids"].tolist() if "ids" in data.files else None
            features = NpyMember(path, "features.npy")
        elif suffix == ".safetensors":
            features, offsets, ids = _read_safetensors(path)
        else:
            raise FeaturesError(f"{path.name}: expected a features directory, .npz or .safetensors file")
    except FeaturesError:
        raise
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise FeaturesError(f"{path.name}: cannot read features ({e})") from None
    return validate(features, offsets, ids, path.name)


NPZ_SMALL_BYTES = 64 << 20


NPZ_MAX_INFLATION = 10
"""An .npz whose arrays take more than 64 MiB must not take more than 10 times its compressed size: float16
features barely compress, so anything far above is a decompression bomb, refused before it is inflated."""


def _check_inflation(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as e:
        raise FeaturesError(f"{path.name}: not an .npz archive ({e})") from None
    if inflated > max(NPZ_SMALL_BYTES, NPZ_MAX_INFLATION * path.stat().st_size):
        raise FeaturesError(
            f"{path.name}: its arrays inflate to {inflated:,} bytes, {inflated / path.stat().st_size:.0f} times "
            f"the file; more than {NPZ_MAX_INFLATION} times is refused (features barely compress)"
        )


SAFETENSORS_FLOATS = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


def _read_safetensors(path: Path) -> tuple[np.ndarray, np.ndarray, list[ExampleId] | None]:
    """`features` memory-mapped (read a chunk at a time by `read_rows`), once safetensors checked the header."""
    with safe_open(str(path), framework="np") as f:
        keys = set(f.keys())
        missing = {"features", "offsets"} - keys
        if missing:
            raise FeaturesError(f"{path.name}: missing tensor(s) {', '.join(sorted(missing))}")
        ids = f.get_tensor("ids").tolist() if "ids" in keys else None
        metadata = f.metadata() or {}
        if ids is None and "ids" in metadata:
            ids = json.loads(metadata["ids"])
        offsets = f.get_tensor("offsets")
    with open(path, "rb") as raw:
        header_bytes = int.from_bytes(raw.read(8), "little")
        info = json.loads(raw.read(header_bytes))["features"]
    if info["dtype"] not in SAFETENSORS_FLOATS or len(info["shape"]) != 2:
        raise FeaturesError(
            f"{path.name}: `features` must be a 2-D float array (F16, F32, F64), got {info['dtype']} {info['shape']}"
        )
    shape, begin = tuple(info["shape"]), 8 + header_bytes + info["data_offsets"][0]
    features = np.memmap(path, SAFETENSORS_FLOATS[info["dtype"]], "r", offset=begin, shape=shape)
    return features, offsets, ids


FINITE_CHECK_ROWS = 1 << 14


def check_rows(features: Rows, name: str) -> None:
    """Every row of an uploaded file finite, read a chunk at a time (a store's rows were checked as they were
    written)."""
    for start in range(0, len(features), FINITE_CHECK_ROWS):
        if not np.isfinite(read_rows(features, start, min(len(features), start + FINITE_CHECK_ROWS))).all():
            raise FeaturesError(
                f"{name}: `features` has NaN or infinite values (rows {start} to {start + FINITE_CHECK_ROWS})"
            )


def validate(features: Rows, offsets: np.ndarray, ids: list | None, name: str) -> FeatureSet:
    """Check the arrays of a features file but for the values of its rows (see `check_rows`)."""

    def fail(message: str) -> FeaturesError:
        return FeaturesError(f"{name}: {message}")

    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
        raise fail(f"`features` must be a 2-D float array [tokens x d], got {features.dtype} {features.shape}")
    if offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer) or len(offsets) < 2:
        raise fail(f"`offsets` must be a 1-D integer array [N+1], got {offsets.dtype} {offsets.shape}")
    offsets = offsets.astype(np.int64)
    lengths = np.diff(offsets)
    if offsets[0] != 0 or offsets[-1] != len(features):
        raise fail(
            f"`offsets` must start at 0 and end at the number of rows ({len(features)}), "
            f"got {offsets[0]} ... {offsets[-1]}"
        )
    if (lengths <= 0).any():
        raise fail(f"example {int(np.argmax(lengths <= 0))} has no rows: offsets must strictly increase")
    n = len(lengths)
    if ids is None:
        ids = list(range(n))
    if len(ids) != n:
        raise fail(f"{len(ids)} ids for {n} examples")
    if any(isinstance(i, bool) or not isinstance(i, str | int) for i in ids):
        raise fail("ids must be strings or integers")
    if len({str(i) for i in ids}) != n:
        raise fail("ids are not unique")
    return FeatureSet(features, offsets, list(ids))


def store_meta(directory: Path) -> dict[str, Any]:
    """What the embedder recorded beside a features store (e.g. `truncated`); {} for stores without it."""
    path = directory / META_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def save_difficulty(directory: Path, ifd: np.ndarray) -> None:
    """Add each example's IFD (ifd.npy) to the committed store `directory`: written beside it, then renamed into
    place, so a reader finds all of it or none (two workers scoring one store at once write the same values)."""
    partial = directory / f"{IFD_FILE}.{uuid.uuid4().hex[:12]}.partial"
    with open(partial, "wb") as f:
        np.save(f, np.asarray(ifd, dtype=np.float64))
    os.replace(partial, directory / IFD_FILE)
