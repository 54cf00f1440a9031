"""Per-example feature blocks, gathered into fixed-shape padded batches.

Gains are evaluated many times per candidate, in batches of varying composition. Every candidate is always
padded to the same row count (its *bucket*), so its gain is computed by the same kernels on the same shapes
whatever else is in the batch: the value is bitwise reproducible, and exact ties stay exact ties.
"""

from collections.abc import Iterator

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
    """The rows X_i (n_i x d) of every example, held as float32.

    An example with more rows than dimensions is replaced by the d x d factor R of its QR decomposition:
    R^T R = X^T X, so every quantity of the log-det objective is unchanged while the rows stay bounded by d.
    """

    def __init__(self, features: Tensor, offsets: Tensor) -> None:
        if features.ndim != 2 or offsets.ndim != 1:
            raise ValueError("features must be [tokens x d] and offsets [N+1]")
        self.dim = features.shape[1]
        offsets = offsets.to(torch.int64)
        counts = offsets.diff()
        starts = offsets[:-1].clone()
        rows = [features.to(torch.float32)]
        extra = len(features)
        for i in (counts > self.dim).nonzero().flatten().tolist():
            block = features[offsets[i] : offsets[i + 1]].to(torch.float64)
            rows.append(torch.linalg.qr(block, mode="r").R.to(torch.float32))
            starts[i], counts[i] = extra, self.dim
            extra += self.dim
        self.rows = torch.cat(rows) if len(rows) > 1 else rows[0]
        self.starts = starts
        self.counts = counts
        self.buckets = torch.tensor([padded_rows(int(n)) for n in counts.tolist()], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.counts)

    def block(self, i: int) -> Tensor:
        """The rows of example `i` as float64 [n_i x d]."""
        start = int(self.starts[i])
        return self.rows[start : start + int(self.counts[i])].to(torch.float64)

    def by_bucket(self, idx: Tensor, max_elements: int = 1 << 24) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (positions in `idx`, zero-padded float32 blocks [m x p x d]) for the examples `idx`, one bucket
        at a time, in chunks of at most `max_elements` floats (64 MiB) so that memory stays bounded."""
        buckets = self.buckets[idx]
        for size in buckets.unique().tolist():
            positions = (buckets == size).nonzero().flatten()
            per_chunk = max(1, max_elements // (size * self.dim))
            for where in positions.split(per_chunk):
                chosen = idx[where]
                row = torch.arange(size)
                index = self.starts[chosen, None] + row
                valid = row < self.counts[chosen, None]
                yield where, self.rows[index.clamp_max(len(self.rows) - 1)] * valid[..., None]
