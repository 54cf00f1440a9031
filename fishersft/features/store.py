"""The compressed features store: written by the embedder (or from an uploaded file) a chunk at a time,
assembled from shards' parts, renamed into place when complete."""

import array
import contextlib
import io
import itertools
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fishersft.contract.compression import Compression, RecordedCompression
from fishersft.data.dataset import ExampleId
from fishersft.features.compression import compress_examples, gaussian_projection, principal_projection
from fishersft.features.files import load_features
from fishersft.features.set import (
    FEATURES_FILE,
    GRAM_FILE,
    IDS_FILE,
    LENGTHS_FILE,
    LOSSES_FILE,
    MEANS_FILE,
    META_FILE,
    OFFSETS_FILE,
    PROJECTION_FILE,
    STAGING_FILE,
    STAGING_MEANS_FILE,
    STAGING_UNCERTAIN_FILE,
    UNCERTAIN_FILE,
    UNCERTAINTY_FILE,
    FeaturesError,
    FeatureSet,
    read_rows,
)
from fishersft.selection.blocks import row_ranges


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
    and at most `compression.rank` rows (see fishersft.features.compression), projected to `compression.dim`
    dimensions. A seeded Gaussian projection is applied as rows arrive; principal directions need the total
    Gram of every row first, so rows are staged in full dimension and projected in one pass over the staged
    file at `commit()`. Rows go to files as they come: memory grows only by an id, three integers and a float
    an example. The embedder also gives each example's mean loss to `score()` (fishersft.features.scores); a store
    given any has them for every example (losses.npy).

    With `uncertainty=True` (the embedder's pass), `write()` also takes each loss token's uncertainty u (see
    `scores.uncertainty`), and the store keeps what weighting `uncertainty` needs, sum_j u_j^2 x_j x_j^T per
    example, exactly as it keeps X^T X: an example kept exact (at most `rank` loss tokens) keeps each row's u
    (uncertainty.npy, a column aligned with features.npy); a longer one, whose rows are a factor of X^T X that
    no per-row factor could reweight, keeps a second factor, the best rank-`rank` factor of X^T diag(u^2) X (its
    rows scaled before compression), in uncertain.npy, which holds those examples' factors alone, in order.

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
        uncertainty: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.partial = self.directory.with_name(f"{self.directory.name}.{uuid.uuid4().hex[:12]}.partial")
        self.partial.mkdir(parents=True)
        self.compression, self.source_dim = compression, source_dim
        self.meta = meta or {}
        self.ids: list[ExampleId] = []
        self.lengths: list[int] = []
        self.offsets: list[int] = [0]
        self.uncertain_offsets: list[int] = [0]
        """Rows of uncertain.npy: `rank` for each compressed example, none for the others."""
        self.losses, self.scored = array.array("d"), 0
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
        self.factors: RowFile | None = None
        self.uncertain: RowFile | None = None
        if uncertainty:
            self.factors = RowFile(self.partial / UNCERTAINTY_FILE, 1)
            uncertain_name = STAGING_UNCERTAIN_FILE if projected_later else UNCERTAIN_FILE
            self.uncertain = RowFile(self.partial / uncertain_name, stage_dim)

    def add(self, ids: Sequence[ExampleId], lengths: Sequence[int]) -> None:
        """The next examples: their ids and loss tokens (rows to come)."""
        self.ids.extend(ids)
        rank = self.compression.rank
        for n in lengths:
            self.lengths.append(int(n))
            self.offsets.append(self.offsets[-1] + min(int(n), rank))
            self.uncertain_offsets.append(self.uncertain_offsets[-1] + (rank if int(n) > rank else 0))
        self.losses.extend([np.nan] * len(lengths))

    def write(
        self,
        indices: Sequence[int],
        examples: Sequence[torch.Tensor],
        uncertainty: Sequence[torch.Tensor] | None = None,
    ) -> None:
        """Every loss token's row [n_i x source_dim] of the examples `indices` (added before), on any device, and
        with `uncertainty=True` each row's uncertainty [n_i]: checked, compressed, then written, in that order.
        The batch is reduced on its device and copied to the host once, as float16.

        The check is the rows' only one on their way into a store: an example's mean, summed in float64, is finite
        exactly when all its rows are, so rows an uploaded file's reader left unchecked (`files.read_features`)
        are checked here, once, before anything is computed from them."""
        if (uncertainty is None) != (self.factors is None):
            raise ValueError("uncertainty goes to a writer made with uncertainty=True, and such a writer needs it")
        flat = torch.cat(list(examples)).to(torch.float32)
        counts = [len(x) for x in examples]
        means = segment_means(flat, counts)
        _check_examples(indices, torch.isfinite(means).all(1).cpu().numpy(), "its features are not finite")
        if self.gram is not None:
            self.gram += (flat.T @ flat).to(torch.float64).cpu()
        projection = None if self.projection is None else self.projection.to(flat.device)
        if projection is not None:
            means = means @ projection
        compressed = compress_examples(list(flat.split(counts)), self.compression.rank, projection)
        kept = [len(rows) for rows in compressed]
        # float16 on the device: what float16 cannot hold becomes infinite
        rows16, means16 = torch.cat(compressed).to(torch.float16), means.to(torch.float16)
        starts = np.cumsum([0, *kept[:-1]])
        rows_fit = np.logical_and.reduceat(torch.isfinite(rows16).all(1).cpu().numpy(), starts)
        means_fit = torch.isfinite(means16).all(1).cpu().numpy()
        _check_examples(indices, rows_fit & means_fit, "its features are beyond float16's range")
        rows_host, means_host = rows16.cpu().numpy(), means16.cpu().numpy()
        start = 0
        for i, n, mean in zip(indices, kept, means_host, strict=True):
            self.rows.write(self.offsets[i], rows_host[start : start + n])
            self.means.write(i, mean[None])
            start += n
        if uncertainty is not None:
            self._write_uncertainty(indices, examples, uncertainty, projection)

    def _write_uncertainty(
        self,
        indices: Sequence[int],
        examples: Sequence[torch.Tensor],
        uncertainty: Sequence[torch.Tensor],
        projection: torch.Tensor | None,
    ) -> None:
        """Each exact example's u per row; each longer one's rank-r factor of its rows scaled by u. Like `write`,
        checked and copied to the host once a batch, not once an example."""
        assert self.factors is not None and self.uncertain is not None
        rank = self.compression.rank
        counts = [len(x) for x in examples]
        starts = np.cumsum([0, *counts])
        for i, u, n in zip(indices, uncertainty, counts, strict=True):
            if len(u) != n:
                raise ValueError(f"example {i}: {len(u)} uncertainties in [0, 1] expected for {n} rows")
        u_host = torch.cat([u.to(torch.float32) for u in uncertainty]).cpu().numpy()
        outside = np.flatnonzero((u_host < 0) | (u_host > 1) | np.isnan(u_host))
        if len(outside):
            k = int(np.searchsorted(starts, outside[0], side="right")) - 1
            raise ValueError(f"example {indices[k]}: {counts[k]} uncertainties in [0, 1] expected for {counts[k]} rows")
        long = [k for k, n in enumerate(counts) if n > rank]
        scaled = [
            examples[k].to(torch.float32) * uncertainty[k].to(examples[k].device, torch.float32)[:, None] for k in long
        ]
        compressed = compress_examples(scaled, rank, projection)
        if compressed:
            flat = torch.cat(compressed)
            finite, rows_host = torch.isfinite(flat.to(torch.float16)).all(1).cpu().numpy(), flat.cpu().numpy()
            at = 0
            for k, rows in zip(long, compressed, strict=True):
                if not finite[at : at + len(rows)].all():
                    raise FeaturesError(f"example {indices[k]}: its uncertainty-weighted features are not finite")
                self.uncertain.write(self.uncertain_offsets[indices[k]], rows_host[at : at + len(rows)])
                at += len(rows)
        for k, i in enumerate(indices):
            if counts[k] <= rank:
                self.factors.write(self.offsets[i], u_host[starts[k] : starts[k + 1], None])

    def score(self, indices: Sequence[int], losses: np.ndarray) -> None:
        """The mean loss of the examples `indices` (added before)."""
        for i, loss in zip(indices, losses.tolist(), strict=True):
            self.losses[i] = loss
        self.scored += len(indices)

    def commit(self) -> Path:
        """Project staged rows (principal directions) and move the finished store into place. If another writer
        put the same store there first (two jobs embedding one dataset at once), keep theirs: it is complete and
        may be in use."""
        if self.gram is not None and self.part:
            np.save(self.partial / GRAM_FILE, self.gram.numpy())
        elif self.gram is not None:
            self._project_staged(self.gram)
        self.rows.finish(self.offsets[-1])
        self.means.finish(len(self.ids))
        if self.factors is not None and self.uncertain is not None:
            self.factors.finish(self.offsets[-1])
            self.uncertain.finish(self.uncertain_offsets[-1])
        np.save(self.partial / OFFSETS_FILE, np.asarray(self.offsets, dtype=np.int64))
        np.save(self.partial / LENGTHS_FILE, np.asarray(self.lengths, dtype=np.int64))
        if self.scored:
            if self.scored != len(self.ids):
                raise ValueError(f"scores for {self.scored} of {len(self.ids)} examples")
            np.save(self.partial / LOSSES_FILE, np.asarray(self.losses, dtype=np.float64))
        (self.partial / IDS_FILE).write_text(json.dumps(self.ids))
        recorded = RecordedCompression(**{**self.compression.model_dump(), "dim": self.dim}, source_dim=self.source_dim)
        (self.partial / META_FILE).write_text(json.dumps({**self.meta, "compression": recorded.model_dump()}))
        try:
            os.rename(self.partial, self.directory)
        except OSError:
            if not (self.directory / FEATURES_FILE).exists():
                raise
            shutil.rmtree(self.partial, ignore_errors=True)
        return self.directory

    def append(self, part: FeatureSet, gram: torch.Tensor | None) -> None:
        """The next examples: a part written with `part=True` (its rows in this writer's staging dimension, its
        scores and uncertainty if any), and its Gram when this writer projects onto principal directions."""
        first = len(self.ids)
        self.add(part.ids, part.lengths.tolist())
        if part.losses is not None:
            self.score(range(first, len(self.ids)), part.losses)
        copies = [(self.rows, self.offsets, part.features, part.offsets)]
        if self.factors is not None and self.uncertain is not None:
            if part.uncertainty is None or part.uncertain is None:
                raise ValueError("a part without uncertainty for a store with it")
            copies.append((self.factors, self.offsets, part.uncertainty, part.offsets))
            copies.append((self.uncertain, self.uncertain_offsets, part.uncertain, part.uncertain_offsets))
        for out, out_offsets, rows, offsets in copies:
            for a, b in row_ranges(torch.from_numpy(offsets), STAGED_CHUNK_ROWS):
                out.write(out_offsets[first + a], read_rows(rows, int(offsets[a]), int(offsets[b])))
        assert part.means is not None  # a part is a compressed store: load_features read its means
        for a in range(0, len(part.ids), STAGED_CHUNK_ROWS):
            self.means.write(first + a, read_rows(part.means, a, min(len(part.ids), a + STAGED_CHUNK_ROWS)))
        if self.gram is not None:
            assert gram is not None  # a part staged for principal directions keeps its Gram
            self.gram += gram

    def _project_staged(self, gram: torch.Tensor) -> None:
        """Rows and means onto the top principal directions of the total `gram`, a chunk at a time."""
        projection = principal_projection(gram, self.dim).to(torch.float32)
        np.save(self.partial / PROJECTION_FILE, projection.numpy())
        self.rows = self._projected(self.rows, self.offsets[-1], FEATURES_FILE, projection)
        self.means = self._projected(self.means, len(self.ids), MEANS_FILE, projection)
        if self.uncertain is not None:
            self.uncertain = self._projected(self.uncertain, self.uncertain_offsets[-1], UNCERTAIN_FILE, projection)

    def _projected(self, staged: RowFile, n: int, name: str, projection: torch.Tensor) -> RowFile:
        out = RowFile(self.partial / name, self.dim)
        for start in range(0, n, STAGED_CHUNK_ROWS):
            stop = min(n, start + STAGED_CHUNK_ROWS)
            out.write(start, (torch.from_numpy(staged.read(start, stop)).float() @ projection).numpy())
        staged.finish(0)
        staged.path.unlink()
        return out

    def abort(self) -> None:
        for file in (self.rows, self.means, self.factors, self.uncertain):
            if file is None:
                continue
            with contextlib.suppress(OSError):
                os.close(file.fd)
        shutil.rmtree(self.partial, ignore_errors=True)


STAGED_CHUNK_ROWS = 1 << 16


def _check_examples(indices: Sequence[int], ok: np.ndarray, problem: str) -> None:
    """A FeaturesError naming the first of the examples `indices` whose `ok` [b] is false."""
    if not ok.all():
        raise FeaturesError(f"example {indices[int(np.argmin(ok))]}: {problem}")


def segment_means(rows: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """The mean [b x d] of each of `counts` consecutive runs of `rows` [n x d] (each run non-empty), from a
    float64 running sum: no atomic adds, so the same on every run of the same device."""
    sums = torch.cat([rows.new_zeros(1, rows.shape[1], dtype=torch.float64), rows.to(torch.float64).cumsum(0)])
    ends = torch.from_numpy(np.cumsum(counts, dtype=np.int64)).to(rows.device)
    starts = ends - torch.tensor(counts, dtype=torch.int64).to(rows.device)
    return ((sums[ends] - sums[starts]) / (ends - starts)[:, None]).to(rows.dtype)


def assemble_store(parts: Sequence[Path], directory: str | Path) -> FeatureSet:
    """The store at `directory` made of `parts` (written with `FeatureStoreWriter(part=True)` over consecutive
    examples, in order): rows and means are copied, or projected onto the principal directions of the parts'
    total Gram. Parts embedded in the same chunks as one writer would make the same files byte for byte, except
    for principal projections, whose Gram is summed in another order (equal to rounding)."""
    loaded = [load_features(p) for p in parts]
    recorded, compression = loaded[0].recorded_compression, loaded[0].compression
    if recorded is None or compression is None:
        raise ValueError(f"{parts[0]} is not a compressed store's part")
    meta = {k: v for k, v in loaded[0].meta.items() if k not in ("compression", "truncated")}
    uncertainty = loaded[0].uncertainty is not None
    writer = FeatureStoreWriter(directory, recorded.source_dim, compression, meta, uncertainty=uncertainty)
    try:
        for path, part in zip(parts, loaded, strict=True):
            gram = path / GRAM_FILE
            writer.append(part, torch.from_numpy(np.load(gram)) if gram.exists() else None)
        writer.meta["truncated"] = sum(part.meta.get("truncated", 0) for part in loaded)
        return load_features(writer.commit())
    except BaseException:
        writer.abort()
        raise


def compress_store(features: FeatureSet, directory: str | Path, compression: Compression) -> FeatureSet:
    """Write raw `features` (every loss token's row: an uploaded file) as a compressed store at `directory`, a
    chunk of examples at a time, each read, checked, compressed and written once, in that order (see
    `FeatureStoreWriter.write`): `features` may come from `files.read_features`, its rows not yet checked."""
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


def projection_matrix(features: FeatureSet) -> torch.Tensor | None:
    """The [source_dim x dim] matrix a store's rows and means were projected with; None when they were not."""
    recorded = features.recorded_compression
    if recorded is None or recorded.dim is None or recorded.dim >= recorded.source_dim:
        return None
    if recorded.projection == "gaussian":
        return gaussian_projection(recorded.source_dim, recorded.dim, recorded.seed).to(torch.float32)
    if features.principal is None:
        raise FeaturesError("this store was projected onto principal directions, but has no projection.npy")
    return torch.from_numpy(np.asarray(features.principal, dtype=np.float32))
