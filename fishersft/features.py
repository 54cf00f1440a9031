"""Feature files: one flat [rows x d] array, `offsets` [N+1] (example i owns rows offsets[i]:offsets[i+1])
and the example ids.

Three layouts are read:
- a features store, the directory the embedder writes: features.npy (float16, memory-mapped; at most `rank`
  rows per example, see fishersft.compression), offsets.npy, lengths.npy (loss tokens per example), means.npy
  (each example's mean feature), ids.json and meta.json (the compression, truncation);
- `.npz` with arrays `features`, `offsets` and optionally `ids`;
- `.safetensors` with tensors `features`, `offsets` and optionally `ids` (integers), or string ids as a JSON
  list in the metadata key `ids`.
Without ids, example i has id i. The files hold every loss token's row; selection compresses them into a store
first (`compress_store`), as the embedder does.
"""

import contextlib
import functools
import io
import itertools
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from fishersft.compression import compress_examples, gaussian_projection, principal_projection
from fishersft.dataset import ExampleId
from fishersft.errors import InputError
from fishersft.selection.blocks import chunk_rows, row_ranges
from fishersft.variants import Compression

FEATURES_FILE, OFFSETS_FILE, IDS_FILE, META_FILE = "features.npy", "offsets.npy", "ids.json", "meta.json"
LENGTHS_FILE, MEANS_FILE, PROJECTION_FILE, GRAM_FILE = "lengths.npy", "means.npy", "projection.npy", "gram.npy"
STAGING_FILE, STAGING_MEANS_FILE = "staging.npy", "staging-means.npy"
FEATURE_SUFFIXES = (".npz", ".safetensors")
FLOAT16_MAX = float(np.finfo(np.float16).max)


class FeaturesError(InputError):
    pass


@dataclass
class FeatureSet:
    features: np.ndarray
    """[rows x d], any float dtype; memory-mapped for a features store."""
    offsets: np.ndarray
    """int64 [N+1]: example i owns rows offsets[i]:offsets[i+1]."""
    ids: list[ExampleId]
    lengths: np.ndarray | None = None
    """int64 [N]: loss tokens per example (the rows of a compressed store are fewer); None: offsets.diff()."""
    means: np.ndarray | None = None
    """[N x d]: each example's mean feature (a compressed store keeps it; its rows cannot give it back)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """What the writer recorded: `compression`, `truncated`, `max_length`."""

    def __post_init__(self) -> None:
        if self.lengths is None:
            self.lengths = np.diff(self.offsets)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Each example's position by its id as a string (ids may be strings or integers): built once per set, as
        GreeDi's rounds look ids up again and again."""
        return {str(i): k for k, i in enumerate(self.ids)}

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())  # type: ignore[union-attr]

    @property
    def compression(self) -> Compression | None:
        """How the rows were compressed; None for raw features (every loss token's row)."""
        recorded = self.meta.get("compression")
        if recorded is None:
            return None
        return Compression.of(recorded)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return read_rows(self.features, start, stop)

    def subset(self, indices: Sequence[int]) -> "FeatureSet":
        """The examples `indices` (ascending) as an in-memory FeatureSet: their rows, read a chunk of the file at a
        time, so memory holds the subset, not the whole store (GreeDi's partitions)."""
        keep = np.asarray(indices, dtype=np.int64)
        if len(keep) and (np.diff(keep) <= 0).any():
            raise ValueError("subset indices must be ascending and distinct")
        counts = np.diff(self.offsets)[keep]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        rows = np.empty((int(offsets[-1]), self.features.shape[1]), self.features.dtype)
        max_rows = chunk_rows(self.features.shape[1], self.features.dtype.itemsize)
        for first, last in row_ranges(torch.from_numpy(self.offsets), max_rows):
            lo, hi = np.searchsorted(keep, [first, last])
            if lo == hi:
                continue
            base = int(self.offsets[first])
            chunk = self.read_rows(base, int(self.offsets[last]))
            taken = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in keep[lo:hi]]) - base
            rows[offsets[lo] : offsets[hi]] = chunk[taken]
        means = None if self.means is None else np.asarray(self.means[keep])
        ids = [self.ids[i] for i in keep]
        return FeatureSet(rows, offsets, ids, self.lengths[keep], means, dict(self.meta))  # type: ignore[index]

    def mean_rows(self) -> np.ndarray:
        """[N x d] each example's mean feature: kept by a compressed store, computed for raw features."""
        if self.means is not None:
            return self.means
        if self.compression is not None:
            raise FeaturesError("this compressed store has no means.npy")
        sums = np.add.reduceat(np.asarray(self.features, dtype=np.float32), self.offsets[:-1], axis=0)
        return sums / self.lengths[:, None]  # type: ignore[index]


def read_rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of a 2-D array as a fresh array. From a memory-mapped file they are read from the file:
    pages of the map would stay mapped and count against the process (a 1M-example store is many GiB)."""
    if isinstance(array, np.memmap) and array.filename:
        dim = array.shape[1]
        offset = array.offset + start * dim * array.itemsize
        return np.fromfile(array.filename, array.dtype, (stop - start) * dim, offset=offset).reshape(-1, dim)
    return np.array(array[start:stop])


def is_features_path(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix in FEATURE_SUFFIXES or (path / FEATURES_FILE).exists()


class RowFile:
    """A 2-D float16 .npy file that grows by rows, written and read with pwrite/pread: no memory map, so neither
    a writer's nor a reader's memory grows with the file. The header's shape is written by `finish()`."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim, self.rows = path, dim, 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.offset = len(self._header())

    def _header(self) -> bytes:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f2", "fortran_order": False, "shape": (self.rows, self.dim)}
        )
        return header.getvalue()

    def write(self, row: int, rows: np.ndarray) -> None:
        os.pwrite(self.fd, np.ascontiguousarray(rows, dtype=np.float16).data, self.offset + row * self.dim * 2)
        self.rows = max(self.rows, row + len(rows))

    def read(self, start: int, stop: int) -> np.ndarray:
        data = bytearray((stop - start) * self.dim * 2)  # writable, unlike pread's bytes
        os.preadv(self.fd, [data], self.offset + start * self.dim * 2)
        return np.frombuffer(data, np.float16).reshape(stop - start, self.dim)

    def finish(self, rows: int) -> None:
        """Fix the file at `rows` rows and write its header."""
        self.rows = rows
        header = self._header()
        assert len(header) == self.offset, "the .npy header changed size"
        os.pwrite(self.fd, header, 0)
        os.ftruncate(self.fd, self.offset + rows * self.dim * 2)
        os.close(self.fd)


class FeatureStoreWriter:
    """Writes a compressed features store into a partial directory of its own and renames it to `directory` on
    `commit()`, so a store that exists is always complete, and writers of the same store never share files.

    Examples are announced with `add()` (ids and loss tokens, in dataset order, a chunk at a time), then their
    rows given to `write()` in any order: every loss token's row, of which the store keeps each example's mean
    and at most `compression.rank` rows (see fishersft.compression), projected to `compression.dim`
    dimensions. A seeded Gaussian projection is applied as rows arrive; principal directions need the total
    Gram of every row first, so rows are staged in full dimension and projected in one pass over the staged
    file at `commit()`. Rows go to files as they come: memory grows only by an id and two integers an example.

    `part=True` writes one shard's part of a store instead (see `assemble_store`): rows that principal directions
    will project stay in full dimension, and the part keeps their Gram (gram.npy) for the total.
    """

    def __init__(
        self,
        directory: str | Path,
        source_dim: int,
        compression: Compression,
        meta: dict[str, Any] | None = None,
        part: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.partial = self.directory.with_name(f"{self.directory.name}.{uuid.uuid4().hex[:12]}.partial")
        self.partial.mkdir(parents=True)
        self.compression, self.source_dim = compression, source_dim
        self.meta = meta or {}
        self.ids: list[ExampleId] = []
        self.lengths: list[int] = []
        self.offsets: list[int] = [0]
        self.dim = compression.output_dim(source_dim)
        self.projection: torch.Tensor | None = None
        self.gram: torch.Tensor | None = None
        staged = compression.projects(source_dim) and compression.projection == "principal"
        if staged:
            self.gram = torch.zeros(source_dim, source_dim, dtype=torch.float64)
        elif compression.projects(source_dim):
            self.projection = gaussian_projection(source_dim, self.dim, compression.seed).to(torch.float32)
        self.part = part
        stage_dim = source_dim if staged else self.dim
        projected_later = staged and not part
        rows_name, means_name = (STAGING_FILE, STAGING_MEANS_FILE) if projected_later else (FEATURES_FILE, MEANS_FILE)
        self.rows = RowFile(self.partial / rows_name, stage_dim)
        self.means = RowFile(self.partial / means_name, stage_dim)

    def add(self, ids: Sequence[ExampleId], lengths: Sequence[int]) -> None:
        """The next examples: their ids and loss tokens (rows to come)."""
        self.ids.extend(ids)
        for n in lengths:
            self.lengths.append(int(n))
            self.offsets.append(self.offsets[-1] + min(int(n), self.compression.rank))

    def write(self, indices: Sequence[int], examples: Sequence[torch.Tensor]) -> None:
        """Every loss token's row [n_i x source_dim] of the examples `indices` (added before), on any device."""
        if self.gram is not None:
            rows = torch.cat(list(examples)).to(torch.float32)
            self.gram += (rows.T @ rows).to(torch.float64).cpu()
        means = torch.stack([x.to(torch.float32).mean(0) for x in examples])
        projection = None if self.projection is None else self.projection.to(means.device)
        if projection is not None:
            means = means @ projection
        compressed = compress_examples([x.to(torch.float32) for x in examples], self.compression.rank, projection)
        for i, rows, mean in zip(indices, compressed, means.cpu().numpy(), strict=True):
            if not bool((rows.abs() <= FLOAT16_MAX).all()):  # NaN compares false too
                raise FeaturesError(f"example {i}: its features are not finite, or beyond float16's range")
            self.rows.write(self.offsets[i], rows.cpu().numpy())
            self.means.write(i, mean[None])

    def commit(self) -> Path:
        """Project staged rows (principal directions) and move the finished store into place. If another writer
        put the same store there first (two jobs embedding one dataset at once), keep theirs: it is complete and
        may be in use."""
        if self.gram is not None and self.part:
            np.save(self.partial / GRAM_FILE, self.gram.numpy())
        elif self.gram is not None:
            self._project_staged()
        self.rows.finish(self.offsets[-1])
        self.means.finish(len(self.ids))
        np.save(self.partial / OFFSETS_FILE, np.asarray(self.offsets, dtype=np.int64))
        np.save(self.partial / LENGTHS_FILE, np.asarray(self.lengths, dtype=np.int64))
        (self.partial / IDS_FILE).write_text(json.dumps(self.ids))
        recorded = {**self.compression.as_dict(), "source_dim": self.source_dim, "dim": self.dim}
        (self.partial / META_FILE).write_text(json.dumps({**self.meta, "compression": recorded}))
        try:
            os.rename(self.partial, self.directory)
        except OSError:
            if not (self.directory / FEATURES_FILE).exists():
                raise
            shutil.rmtree(self.partial, ignore_errors=True)
        return self.directory

    def append(self, part: FeatureSet, gram: torch.Tensor | None) -> None:
        """The next examples: a part written with `part=True` (its rows in this writer's staging dimension), and
        its Gram when this writer projects onto principal directions."""
        first = len(self.ids)
        self.add(part.ids, part.lengths.tolist())  # type: ignore[union-attr]
        for a, b in row_ranges(torch.from_numpy(part.offsets), STAGED_CHUNK_ROWS):
            self.rows.write(self.offsets[first + a], part.read_rows(int(part.offsets[a]), int(part.offsets[b])))
        for a in range(0, len(part.ids), STAGED_CHUNK_ROWS):
            self.means.write(first + a, read_rows(part.means, a, min(len(part.ids), a + STAGED_CHUNK_ROWS)))  # type: ignore[arg-type]
        if self.gram is not None:
            self.gram += gram  # type: ignore[operator]

    def _project_staged(self) -> None:
        """Rows and means onto the top principal directions of the total Gram, a chunk at a time."""
        projection = principal_projection(self.gram, self.dim).to(torch.float32)  # type: ignore[arg-type]
        np.save(self.partial / PROJECTION_FILE, projection.numpy())
        self.rows = self._projected(self.rows, self.offsets[-1], FEATURES_FILE, projection)
        self.means = self._projected(self.means, len(self.ids), MEANS_FILE, projection)

    def _projected(self, staged: RowFile, n: int, name: str, projection: torch.Tensor) -> RowFile:
        out = RowFile(self.partial / name, self.dim)
        for start in range(0, n, STAGED_CHUNK_ROWS):
            stop = min(n, start + STAGED_CHUNK_ROWS)
            out.write(start, (torch.from_numpy(staged.read(start, stop)).float() @ projection).numpy())
        staged.finish(0)
        staged.path.unlink()
        return out

    def abort(self) -> None:
        for file in (self.rows, self.means):
            with contextlib.suppress(OSError):
                os.close(file.fd)
        shutil.rmtree(self.partial, ignore_errors=True)


STAGED_CHUNK_ROWS = 1 << 16


def assemble_store(parts: Sequence[Path], directory: str | Path) -> FeatureSet:
    """The store at `directory` made of `parts` (written with `FeatureStoreWriter(part=True)` over consecutive
    examples, in order): rows and means are copied, or projected onto the principal directions of the parts'
    total Gram. Parts embedded in the same chunks as one writer would make the same files byte for byte, except
    for principal projections, whose Gram is summed in another order (equal to rounding)."""
    loaded = [load_features(p) for p in parts]
    recorded = loaded[0].meta["compression"]
    meta = {k: v for k, v in loaded[0].meta.items() if k not in ("compression", "truncated")}
    writer = FeatureStoreWriter(directory, recorded["source_dim"], loaded[0].compression, meta)  # type: ignore[arg-type]
    try:
        for path, part in zip(parts, loaded, strict=True):
            gram = path / GRAM_FILE
            writer.append(part, torch.from_numpy(np.load(gram)) if gram.exists() else None)
        writer.meta["truncated"] = sum(part.meta.get("truncated", 0) for part in loaded)
        return load_features(writer.commit())
    except BaseException:
        writer.abort()
        raise


def store_meta(directory: Path) -> dict[str, Any]:
    """What the embedder recorded beside a features store (e.g. `truncated`); {} for stores without it."""
    path = directory / META_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def compress_store(features: FeatureSet, directory: str | Path, compression: Compression) -> FeatureSet:
    """Write raw `features` (every loss token's row: an uploaded file) as a compressed store at `directory`,
    reading a chunk of examples at a time."""
    offsets = torch.from_numpy(features.offsets)
    writer = FeatureStoreWriter(directory, features.features.shape[1], compression)
    writer.add(features.ids, np.diff(features.offsets).tolist())
    try:
        for first, last in row_ranges(offsets, STAGED_CHUNK_ROWS):
            rows = torch.from_numpy(features.read_rows(int(offsets[first]), int(offsets[last])))
            local = (offsets[first : last + 1] - offsets[first]).tolist()
            writer.write(range(first, last), [rows[a:b] for a, b in itertools.pairwise(local)])
    except BaseException:
        writer.abort()
        raise
    return load_features(writer.commit())


def load_features(path: str | Path, suffix: str | None = None) -> FeatureSet:
    """Load and validate a features store, `.npz` or `.safetensors` file; `suffix` names the format of a file
    whose name does not end in it (a content-addressed blob)."""
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
                store.meta = store_meta(path)
                if len(store.lengths) != len(ids) or (store.lengths < np.diff(offsets)).any():
                    raise FeaturesError(f"{path.name}: lengths.npy does not match the rows")
                return store
        elif suffix == ".npz":
            _check_inflation(path)
            with np.load(path, allow_pickle=False) as data:
                missing = {"features", "offsets"} - set(data.files)
                if missing:
                    raise FeaturesError(f"{path.name}: missing array(s) {', '.join(sorted(missing))}")
                features, offsets = data["features"], data["offsets"]
                ids = data["ids"].tolist() if "ids" in data.files else None
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


def _read_safetensors(path: Path) -> tuple[np.ndarray, np.ndarray, list[ExampleId] | None]:
    with safe_open(str(path), framework="np") as f:
        keys = set(f.keys())
        missing = {"features", "offsets"} - keys
        if missing:
            raise FeaturesError(f"{path.name}: missing tensor(s) {', '.join(sorted(missing))}")
        ids = f.get_tensor("ids").tolist() if "ids" in keys else None
        metadata = f.metadata() or {}
        if ids is None and "ids" in metadata:
            ids = json.loads(metadata["ids"])
        return f.get_tensor("features"), f.get_tensor("offsets"), ids


FINITE_CHECK_ROWS = 1 << 14


def validate(features: np.ndarray, offsets: np.ndarray, ids: list | None, name: str) -> FeatureSet:
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
    if not isinstance(features, np.memmap):  # a store's rows were checked as they were written
        for start in range(0, len(features), FINITE_CHECK_ROWS):
            if not np.isfinite(features[start : start + FINITE_CHECK_ROWS]).all():
                raise fail(f"`features` has NaN or infinite values (rows {start} to {start + FINITE_CHECK_ROWS})")
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
