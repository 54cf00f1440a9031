"""Per-example feature blocks, stored padded by row count so a batch of candidates is one gather.

Gains are evaluated many times per candidate, in batches of varying composition. Every candidate is always
padded to the same row count (its *bucket*), so its gain is computed by the same kernels on the same shapes
whatever else is in the batch: the value is bitwise reproducible, and exact ties stay exact ties.
"""

from collections.abc import Callable, Iterator

import torch
from torch import Tensor


def padded_rows(n: int) -> int:
    """Smallest of 8, 16, 24, 32, 48, 64, 96, 128, ... that holds `n` rows (padding costs at most 1.5x)."""
    size = 8
    while size < n:
        size *= 2
    three_quarters = size * 3 // 4
    return three_quarters if size >= 32 and n <= three_quarters else size


class FeatureBlocks:
    """The rows X_i (n_i x d) of every example, as float32, zero-padded to their bucket's row count.

    An example with more rows than dimensions is replaced by the d x d factor R of its QR decomposition:
    R^T R = X^T X, so every quantity of the log-det objective is unchanged while the rows stay bounded by d.
    """

    def __init__(self, features: Tensor, offsets: Tensor) -> None:
        if features.ndim != 2 or offsets.ndim != 1:
            raise ValueError("features must be [tokens x d] and offsets [N+1]")
        self.dim = features.shape[1]
        offsets = offsets.to(torch.int64)
        self.counts = offsets.diff().clamp_max(self.dim)
        self.buckets = torch.tensor([padded_rows(int(n)) for n in self.counts.tolist()], dtype=torch.int64)
        self.slots = torch.zeros(len(self.counts), dtype=torch.int64)
        self.padded: dict[int, Tensor] = {}
        for size in self.buckets.unique().tolist():
            members = (self.buckets == size).nonzero().flatten()
            self.slots[members] = torch.arange(len(members))
            row = torch.arange(size)
            valid = row < self.counts[members, None]
            index = (offsets[members, None] + row).clamp_max(len(features) - 1)
            self.padded[size] = features[index].to(torch.float32).masked_fill_(~valid[..., None], 0.0)
        for i in (offsets.diff() > self.dim).nonzero().flatten().tolist():
            rows = features[offsets[i] : offsets[i + 1]].to(torch.float64)
            self.padded[int(self.buckets[i])][self.slots[i], : self.dim] = torch.linalg.qr(rows, mode="r").R

    def __len__(self) -> int:
        return len(self.counts)

    def block(self, i: int) -> Tensor:
        """The rows of example `i` as float64 [n_i x d]."""
        return self.padded[int(self.buckets[i])][self.slots[i], : self.counts[i]].to(torch.float64)

    def by_bucket(
        self, idx: Tensor, scratch: Callable[[tuple[int, ...]], Tensor], max_elements: int = 1 << 24
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (positions in `idx`, zero-padded float32 blocks [m x p x d]) for the examples `idx`, one bucket
        at a time, in chunks of at most `max_elements` floats (64 MiB). Blocks are gathered into
        `scratch(shape)`, memory reused across calls: a fresh 64 MiB tensor per call costs more in page
        faults than the gather itself."""
        buckets = self.buckets[idx]
        for size in buckets.unique().tolist():
            positions = (buckets == size).nonzero().flatten()
            per_chunk = max(1, max_elements // (size * self.dim))
            for where in positions.split(per_chunk):
                out = scratch((len(where), size, self.dim))
                yield where, torch.index_select(self.padded[size], 0, self.slots[idx[where]], out=out)
