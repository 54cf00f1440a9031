"""Per-example feature blocks, stored padded by row count so a batch of candidates is one gather.

Gains are evaluated many times per candidate, in batches of varying composition. Every candidate is always
padded to the same row count (its *bucket*), so its gain is computed by the same kernels on the same shapes
whatever else is in the batch: the value is bitwise reproducible, and exact ties stay exact ties.

Blocks keep the rows' own dtype (float16 for a features store: half the memory of float32) and are converted to
float32 a chunk at a time as gains are computed. They are filled from row chunks, so a store on disk is read a
piece at a time and never held twice.
"""

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

CHUNK_BYTES = 32 << 20
"""Rows read per chunk when blocks are filled: filling holds a chunk and its gathered copy beside the blocks."""


def chunk_rows(dim: int, itemsize: int) -> int:
    """Rows of `dim` values of `itemsize` bytes in CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (dim * itemsize))


def padded_rows(n: int) -> int:
    """Smallest of 8, 16, 24, 32, 48, 64, 96, 128, ... that holds `n` rows (padding costs at most 1.5x)."""
    size = 8
    while size < n:
        size *= 2
    three_quarters = size * 3 // 4
    return three_quarters if size >= 32 and n <= three_quarters else size


def row_ranges(offsets: Tensor, max_rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive (first, last + 1) example ranges of at most `max_rows` rows each (at least one example)."""
    n = len(offsets) - 1
    first = 0
    while first < n:
        last = int(torch.searchsorted(offsets, int(offsets[first]) + max_rows, right=True)) - 1
        last = min(max(last, first + 1), n)
        yield first, last
        first = last


class FeatureBlocks:
    """The rows X_i (n_i x d) of every example, zero-padded to their bucket's row count, times an optional
    per-example `scale` (applied as gains are computed, so the stored rows stay as given).

    An example with more rows than dimensions is replaced by the d x d factor R of its QR decomposition:
    R^T R = X^T X, so every quantity of the log-det objective is unchanged while the rows stay bounded by d.
    """

    def __init__(
        self,
        offsets: Tensor,
        dim: int,
        chunks: Iterable[Tensor],
        dtype: torch.dtype = torch.float16,
        scale: Tensor | None = None,
    ) -> None:
        """`chunks`: the rows of consecutive whole examples, in order (see `row_ranges`); `dtype`: storage."""
        self.dim = dim
        offsets = offsets.to(torch.int64)
        self.counts = offsets.diff().clamp_max(dim)
        self.scale = None if scale is None else scale.to(torch.float32)
        self.buckets = torch.tensor([padded_rows(int(n)) for n in self.counts.tolist()], dtype=torch.int64)
        self.slots = torch.zeros(len(self.counts), dtype=torch.int64)
        self.padded: dict[int, Tensor] = {}
        for size in torch.unique(self.buckets).tolist():
            members = (self.buckets == size).nonzero().flatten()
            self.slots[members] = torch.arange(len(members))
            self.padded[size] = torch.zeros(len(members), size, dim, dtype=dtype)
        first = 0
        for rows in chunks:
            last = int(torch.searchsorted(offsets, int(offsets[first]) + len(rows)))
            self._fill(rows, offsets[first : last + 1] - offsets[first], first)
            first = last
        if first != len(self.counts):
            raise ValueError(f"chunks held {first} of {len(self.counts)} examples")

    @classmethod
    def of(cls, features: Tensor, offsets: Tensor, scale: Tensor | None = None) -> "FeatureBlocks":
        """Blocks of in-memory rows [tokens x d], example i owning rows offsets[i]:offsets[i+1]."""
        if features.ndim != 2 or offsets.ndim != 1:
            raise ValueError("features must be [tokens x d] and offsets [N+1]")
        max_rows = chunk_rows(features.shape[1], features.element_size())
        chunks = (features[offsets[a] : offsets[b]] for a, b in row_ranges(offsets, max_rows))
        return cls(offsets, features.shape[1], chunks, features.dtype, scale)

    def _fill(self, rows: Tensor, offsets: Tensor, first: int) -> None:
        """Place the rows of examples first, first + 1, ... (local `offsets`) in their buckets."""
        examples = torch.arange(first, first + len(offsets) - 1)
        counts, buckets = self.counts[examples], self.buckets[examples]
        for size in torch.unique(buckets).tolist():
            local = (buckets == size).nonzero().flatten()
            row = torch.arange(size)
            valid = row < counts[local, None]
            index = (offsets[local, None] + row).clamp_max(len(rows) - 1)
            gathered = rows[index].to(self.padded[size].dtype).masked_fill_(~valid[..., None], 0.0)
            self.padded[size][self.slots[examples[local]]] = gathered
        for i in ((offsets.diff() > self.dim).nonzero().flatten()).tolist():
            factor = torch.linalg.qr(rows[offsets[i] : offsets[i + 1]].to(torch.float64), mode="r").R
            self.padded[int(self.buckets[first + i])][self.slots[first + i], : self.dim] = factor

    def __len__(self) -> int:
        return len(self.counts)

    def block(self, i: int) -> Tensor:
        """The (scaled) rows of example `i` as float64 [n_i x d]."""
        rows = self.padded[int(self.buckets[i])][self.slots[i], : self.counts[i]].to(torch.float64)
        return rows if self.scale is None else rows * float(self.scale[i])

    def stored_rows(self, idx: Tensor, rows: int) -> Tensor:
        """The stored rows of the examples `idx`, unscaled and in the stored dtype, zero-padded to `rows` (at
        least each one's row count): [len(idx) x rows x d], in one tensor whatever their buckets."""
        dtype = next(iter(self.padded.values())).dtype if self.padded else torch.float32
        out = torch.zeros(len(idx), rows, self.dim, dtype=dtype)
        buckets = self.buckets[idx]
        for size in torch.unique(buckets).tolist():
            positions = (buckets == size).nonzero().flatten()
            kept = min(size, rows)
            out[positions, :kept] = self.padded[size][self.slots[idx[positions]], :kept]
        return out

    def by_bucket(
        self, idx: Tensor, scratch: Callable[[str, tuple[int, ...], torch.dtype], Tensor], max_elements: int = 1 << 24
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (positions in `idx`, zero-padded float32 blocks [m x p x d]) for the examples `idx`, one bucket
        at a time, in chunks of at most `max_elements` floats (64 MiB). Blocks are gathered into
        `scratch(name, shape, dtype)`, memory reused across calls: a fresh 64 MiB tensor per call costs more in
        page faults than the gather itself."""
        buckets = self.buckets[idx]
        for size in torch.unique(buckets).tolist():
            positions = (buckets == size).nonzero().flatten()
            per_chunk = max(1, max_elements // (size * self.dim))
            for where in positions.split(per_chunk):
                stored, slots = self.padded[size], self.slots[idx[where]]
                shape = (len(where), size, self.dim)
                out = scratch("block", shape, torch.float32)
                if stored.dtype == torch.float32:
                    torch.index_select(stored, 0, slots, out=out)
                else:  # gathered in the stored dtype, then converted: no float32 copy of the whole store
                    out.copy_(torch.index_select(stored, 0, slots, out=scratch("stored", shape, stored.dtype)))
                if self.scale is not None:
                    out.mul_(self.scale[idx[where]][:, None, None])
                yield where, out
