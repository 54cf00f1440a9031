"""Near-duplicate removal: exact, blockwise, deterministic.

Rows are taken in order; a row whose cosine similarity with an earlier kept row is at or above the threshold is
removed, its survivor the first such kept row (the lowest index); every other row is kept. So no two kept rows
are near-duplicates, and each removed row is a near-duplicate of its survivor. (SemDeDup, in NeMo Curator,
compares rows within k-means clusters and removes a row near any earlier one, kept or not; distilabel's
EmbeddingDedup thresholds the scores of an approximate nearest-neighbour index. This compares every pair, exactly,
with no clustering, and only kept rows remove others, so a chain a~b~c with a and c apart keeps a and c.)

Similarities come from products of a block of rows with a chunk of earlier rows, scaled by their inverse norms:
O(block x chunk) memory beyond the rows' norms, no N x N matrix and no normalised copy of the rows (they may be a
memory-mapped store's), and O(N^2 d / 2) arithmetic."""

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

BLOCK_ROWS = 4096
"""Rows compared at once, and the width of a chunk of earlier rows: a block's similarities are 64 MiB."""
ROUNDING = 1e-6
"""Float32 rounding allowed: a similarity this far below the threshold still counts (copies are at 1 - 1e-7)."""


def near_duplicates(
    points: np.ndarray | Tensor,
    threshold: float,
    rows: Tensor | None = None,
    device: torch.device | str = "cpu",
    block: int = BLOCK_ROWS,
    on_block: Callable[[int], None] | None = None,
) -> Tensor:
    """For each of `rows` (indices of `points` [N x d], ascending; default: all), -1 if it is kept, else the
    position in `rows` of its survivor: the first earlier kept row whose cosine similarity with it is at least
    `threshold` (less ROUNDING). A zero row is similar to nothing. `on_block` is called with the rows done after
    each block (progress, cancellation)."""
    rows = torch.arange(len(points)) if rows is None else rows
    n = len(rows)

    def read(start: int, stop: int) -> Tensor:
        index = rows[start:stop]
        if isinstance(points, np.ndarray):  # a memory-mapped store's rows are read from the file, a slice at a time
            return torch.from_numpy(np.asarray(points[index.numpy()], dtype=np.float32)).to(device)
        return points[index].to(device, torch.float32)

    inverse = torch.cat([_inverse_norms(read(s, s + block)) for s in range(0, n, block)] or [torch.zeros(0)])
    survivor = torch.full((n,), -1, dtype=torch.long)
    floor = threshold - ROUNDING
    for start in range(0, n, block):
        stop = min(n, start + block)
        x = read(start, stop) * inverse[start:stop, None].to(device)
        found = torch.full((stop - start,), -1, dtype=torch.long)
        for chunk in range(0, start, block):  # earlier blocks, whose kept rows are final
            open_rows = (found < 0).nonzero().flatten()
            if len(open_rows) == 0:
                break
            y = read(chunk, chunk + block) * inverse[chunk : chunk + block, None].to(device)
            kept = (survivor[chunk : chunk + block] < 0).to(device)
            hits = ((x[open_rows.to(device)] @ y.T >= floor) & kept[None, :]).cpu()
            matched = hits.any(dim=1)
            found[open_rows[matched]] = chunk + hits[matched].to(torch.int8).argmax(dim=1)  # the first hit
        lower = torch.tril(x @ x.T >= floor, diagonal=-1).cpu()  # within the block: earlier rows only
        for r in ((found < 0) & lower.any(dim=1)).nonzero().flatten().tolist():
            hits = lower[r, :r] & (found[:r] < 0)
            if bool(hits.any()):
                found[r] = start + int(hits.to(torch.int8).argmax())
        survivor[start:stop] = found
        if on_block:
            on_block(stop)
    return survivor


def _inverse_norms(x: Tensor) -> Tensor:
    """1 / |x| per row; 0 for a zero row (similar to nothing)."""
    norms = torch.linalg.vector_norm(x, dim=1)
    return torch.where(norms > 0, 1 / norms.clamp(min=1e-30), 0.0).cpu()
