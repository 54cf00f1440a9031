"""A features set: one flat [rows x d] array, `offsets` [N+1] (example i owns rows
offsets[i]:offsets[i+1]), the example ids and, for a compressed store, loss tokens and means per example, and the
embedder's scores and uncertainty (fishersft.features.scores)."""

import functools
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from fishersft.contract.compression import Compression, RecordedCompression
from fishersft.contract.selection import Weighting
from fishersft.data.dataset import ExampleId
from fishersft.errors import InputError
from fishersft.selection.blocks import FeatureBlocks, chunk_rows, row_ranges

FEATURES_FILE, OFFSETS_FILE, IDS_FILE, META_FILE = "features.npy", "offsets.npy", "ids.json", "meta.json"


LENGTHS_FILE, MEANS_FILE, PROJECTION_FILE, GRAM_FILE = "lengths.npy", "means.npy", "projection.npy", "gram.npy"


STAGING_FILE, STAGING_MEANS_FILE = "staging.npy", "staging-means.npy"


LOSSES_FILE, IFD_FILE = "losses.npy", "ifd.npy"


UNCERTAINTY_FILE, UNCERTAIN_FILE, STAGING_UNCERTAIN_FILE = "uncertainty.npy", "uncertain.npy", "staging-uncertain.npy"


STORE_VERSION = 3
"""The embedder's store layout: 2 adds the scores (losses.npy; ifd.npy once method ifd has asked for it), 3 the
uncertainty (uncertainty.npy, uncertain.npy). Cached stores are keyed by it."""


FEATURE_SUFFIXES = (".npz", ".safetensors")


FLOAT16_MAX = float(np.finfo(np.float16).max)


class FeaturesError(InputError):
    pass


class NpyMember:
    """A 2-D array in an .npz (a zip member, perhaps deflated), read a chunk of rows at a time, in order, and
    never whole unless asked (`np.asarray`): an uploaded features file needs no memory for its rows."""

    def __init__(self, path: Path, member: str) -> None:
        self.path, self.member = path, member
        self._file: IO[bytes] | None = None
        with zipfile.ZipFile(path) as archive, archive.open(member) as f:
            version = np.lib.format.read_magic(f)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise FeaturesError(f"{path.name}: {member} is an .npy of version {version}, not 1.0 or 2.0")
            shape, fortran_order, self.dtype = readers[version](f)
            self.start = f.tell()
        if self.dtype.hasobject:
            raise FeaturesError(f"{path.name}: {member} holds Python objects, not numbers")
        if fortran_order and len(shape) > 1:
            raise FeaturesError(f"{path.name}: {member} is in Fortran order; save it in C order (the default)")
        self.shape: tuple[int, ...] = tuple(shape)
        self.ndim = len(shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("rows are read a contiguous range at a time")
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        try:
            if self._file is None:
                # kept open between reads, so rows read in order are inflated once: closed with this object
                self._file = zipfile.ZipFile(self.path).open(self.member)  # noqa: SIM115
            self._file.seek(self.start + start * row_bytes)  # reading in order, the file is where it should be
            data = self._file.read(max(0, stop - start) * row_bytes)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
            raise FeaturesError(f"{self.path.name}: cannot read {self.member} ({e})") from None
        if len(data) != max(0, stop - start) * row_bytes:
            raise FeaturesError(f"{self.path.name}: {self.member} is shorter than its shape says")
        return np.frombuffer(bytearray(data), self.dtype).reshape(-1, *self.shape[1:])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


Rows = np.ndarray | NpyMember
"""[rows x d]: in memory, memory-mapped (a features store, an uploaded .safetensors) or in an .npz."""


@dataclass(init=False)
class FeatureSet:
    features: Rows
    """[rows x d], any float dtype; memory-mapped for a features store, read in chunks from an uploaded file."""
    offsets: np.ndarray
    """int64 [N+1]: example i owns rows offsets[i]:offsets[i+1]."""
    ids: list[ExampleId]
    lengths: np.ndarray
    """int64 [N]: loss tokens per example (the rows of a compressed store are fewer); offsets.diff() if not given."""
    means: np.ndarray | None
    """[N x d]: each example's mean feature (a compressed store keeps it; its rows cannot give it back)."""
    losses: np.ndarray | None
    """float64 [N]: each example's mean loss per loss token under the model; None without a model (uploaded
    features) or from a store written before scores."""
    ifd: np.ndarray | None
    """float64 [N]: each example's Instruction-Following Difficulty; None until a pass scored it
    (`pipeline.score_difficulty`, method ifd alone), and where `losses` is."""
    uncertainty: np.ndarray | None
    """float16 [rows x 1]: each row's uncertainty u (fishersft.features.scores) where its example is kept exact;
    unused (zero) for the rows of a compressed example. None without a model, or from a store written before it."""
    uncertain: np.ndarray | None
    """[compressed rows x d]: for each compressed example (more loss tokens than rows), in order, the rank-r
    factor of X^T diag(u^2) X (see `store.FeatureStoreWriter`); None where `uncertainty` is."""
    meta: dict[str, Any]
    """What the writer recorded: `compression`, `truncated`, `max_length`."""
    principal: np.ndarray | None
    """[source_dim x dim]: the principal directions a store's rows and means were projected onto, when they were."""

    def __init__(
        self,
        features: Rows,
        offsets: np.ndarray,
        ids: list[ExampleId],
        lengths: np.ndarray | None = None,
        means: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        losses: np.ndarray | None = None,
        ifd: np.ndarray | None = None,
    ) -> None:
        """Written out rather than generated: `lengths` may be left out, yet is always set."""
        self.features, self.offsets, self.ids = features, offsets, ids
        self.lengths = np.diff(offsets) if lengths is None else lengths
        self.means, self.losses, self.ifd = means, losses, ifd
        self.uncertainty, self.uncertain = None, None
        self.meta = {} if meta is None else meta
        self.principal = None

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Each example's position by its id as a string (ids may be strings or integers): built once per set, as
        GreeDi's rounds look ids up again and again."""
        return {str(i): k for k, i in enumerate(self.ids)}

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def recorded_compression(self) -> RecordedCompression | None:
        """How the rows were compressed, as the store recorded it; None for raw features (every loss token's row)."""
        recorded = self.meta.get("compression")
        return None if recorded is None else RecordedCompression.model_validate(recorded)

    @property
    def compression(self) -> Compression | None:
        """How the rows were compressed; None for raw features."""
        recorded = self.recorded_compression
        return None if recorded is None else Compression.model_validate(recorded.model_dump(exclude={"source_dim"}))

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return read_rows(self.features, start, stop)

    @property
    def compressed(self) -> np.ndarray:
        """bool [N]: the examples whose rows are a factor of X^T X (more loss tokens than rows), not their tokens."""
        return np.asarray(self.lengths) > np.diff(self.offsets)

    @property
    def uncertain_offsets(self) -> np.ndarray:
        """int64 [N+1]: example i owns rows uncertain_offsets[i]:uncertain_offsets[i+1] of `uncertain` (as many as
        its rows when it is compressed, else none)."""
        counts = np.where(self.compressed, np.diff(self.offsets), 0)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "FeatureSet":
        """The examples `indices` (ascending) as an in-memory FeatureSet: their rows, read a chunk of the file at a
        time, so memory holds the subset, not the whole store (GreeDi's partitions)."""
        keep = np.asarray(indices, dtype=np.int64)
        if len(keep) and (np.diff(keep) <= 0).any():
            raise ValueError("subset indices must be ascending and distinct")
        rows, offsets = gather_rows(self.features, self.offsets, keep)
        means = None if self.means is None else np.asarray(self.means[keep])
        ids = [self.ids[i] for i in keep]
        scores = [None if a is None else a[keep] for a in (self.losses, self.ifd)]
        subset = FeatureSet(rows, offsets, ids, self.lengths[keep], means, dict(self.meta), *scores)
        if self.uncertainty is not None and self.uncertain is not None:
            subset.uncertainty = gather_rows(self.uncertainty, self.offsets, keep)[0]
            subset.uncertain = gather_rows(self.uncertain, self.uncertain_offsets, keep)[0]
        return subset

    def uncertain_rows(self, first: int, last: int) -> np.ndarray:
        """The rows of examples first:last under weighting `uncertainty` (rows offsets[first]:offsets[last]): an
        exact example's rows times their u, a compressed one's factor of X^T diag(u^2) X."""
        if self.uncertainty is None or self.uncertain is None:
            raise FeaturesError(
                "weighting 'uncertainty' scales each loss token by the model's uncertainty there: these features "
                "carry none (uploaded features have no model); select from a JSONL dataset, or use another weighting"
            )
        start, stop = int(self.offsets[first]), int(self.offsets[last])
        rows = self.read_rows(start, stop) * read_rows(self.uncertainty, start, stop)
        uncertain = self.uncertain_offsets
        rows[np.repeat(self.compressed[first:last], np.diff(self.offsets[first : last + 1]))] = read_rows(
            self.uncertain, int(uncertain[first]), int(uncertain[last])
        )
        return rows

    def mean_rows(self) -> np.ndarray:
        """[N x d] each example's mean feature: kept by a compressed store, computed for raw features."""
        if self.means is not None:
            return self.means
        if self.compression is not None:
            raise FeaturesError("this compressed store has no means.npy")
        sums = np.add.reduceat(np.asarray(self.features, dtype=np.float32), self.offsets[:-1], axis=0)
        return sums / self.lengths[:, None]


def read_rows(array: Rows, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of a 2-D array as a fresh array. From a memory-mapped file they are read from the file:
    pages of the map would stay mapped and count against the process (a 1M-example store is many GiB)."""
    if isinstance(array, np.memmap) and array.filename:
        dim = array.shape[1]
        offset = array.offset + start * dim * array.itemsize
        return np.fromfile(array.filename, array.dtype, (stop - start) * dim, offset=offset).reshape(-1, dim)
    return np.array(array[start:stop])


def gather_rows(array: Rows, offsets: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the examples `keep` (ascending) of a 2-D array whose example i owns rows
    offsets[i]:offsets[i+1], read a chunk at a time, and their offsets."""
    counts = np.diff(offsets)[keep]
    out_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = np.empty((int(out_offsets[-1]), array.shape[1]), array.dtype)
    for first, last in row_ranges(torch.from_numpy(offsets), chunk_rows(array.shape[1], array.dtype.itemsize)):
        lo, hi = np.searchsorted(keep, [first, last])
        if lo == hi:
            continue
        base = int(offsets[first])
        chunk = read_rows(array, base, int(offsets[last]))
        taken = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in keep[lo:hi]]).astype(np.int64) - base
        rows[out_offsets[lo] : out_offsets[hi]] = chunk[taken]
    return rows, out_offsets


def feature_blocks(features: FeatureSet, weighting: Weighting) -> tuple[FeatureBlocks, torch.Tensor]:
    """The blocks selection runs on under `weighting`, read from `features` a chunk at a time (float16 stays
    float16), and the loss tokens per example."""
    lengths = torch.from_numpy(np.asarray(features.lengths))
    rows: Rows
    if weighting == "mean":
        rows, offsets, scale = features.mean_rows(), torch.arange(len(lengths) + 1), None
    else:
        rows, offsets = features.features, torch.from_numpy(features.offsets)
        scale = lengths.to(torch.float32).rsqrt() if weighting == "examples" else None
    ranges = row_ranges(offsets, chunk_rows(rows.shape[1], rows.dtype.itemsize))
    if weighting == "uncertainty":
        chunks = (torch.from_numpy(features.uncertain_rows(a, b)) for a, b in ranges)
    else:
        chunks = (torch.from_numpy(read_rows(rows, int(offsets[a]), int(offsets[b]))) for a, b in ranges)
    dtype = torch.from_numpy(np.zeros(0, rows.dtype)).dtype
    return FeatureBlocks(offsets, rows.shape[1], chunks, dtype, scale), lengths
