"""Compressed features: pure tensor functions, no I/O.

The objective sees an example only through X_i^T X_i (d x d), so an example never needs more rows than that
matrix's useful rank. With the SVD X_i = U S V^T, the r x d factor F_i = S_r V_r^T has F_i^T F_i = V_r S_r^2
V_r^T, the best rank-r approximation of X_i^T X_i; an example with at most r rows is kept as it is (exact).

Computing F from an eigendecomposition rather than an SVD, see `low_rank_rows`.

Where d is large, rows can also be projected to `dim` dimensions, x -> x P with P [d x dim]: either a seeded
Gaussian matrix or the principal directions of the dataset's total Gram sum_i X_i^T X_i.
"""

import math

import torch
from torch import Tensor

from fishersft.selection.blocks import padded_rows


def low_rank_rows(blocks: Tensor, rank: int) -> Tensor:
    """The rank-`rank` factors [b x rank x d] of zero-padded blocks [b x n x d]: F^T F is the best rank-r
    approximation of X^T X. Zero rows of the padding change neither.

    F = S_r V_r^T = U_r^T X, with U_r the top eigenvectors of the smaller Gram X X^T (n x n) when n <= d; else
    F = sqrt(L_r) V_r^T from the eigenpairs (L, V) of X^T X. An eigendecomposition of the Gram is several times
    faster than an SVD of X; it is done in float64, the products in float32 at least."""
    dtype = torch.promote_types(blocks.dtype, torch.float32)
    x = blocks.to(dtype)
    if x.shape[1] <= x.shape[2]:
        _, vectors = torch.linalg.eigh((x @ x.transpose(1, 2)).to(torch.float64))
        return vectors[..., -rank:].flip(-1).transpose(1, 2).to(dtype) @ x
    values, vectors = torch.linalg.eigh((x.transpose(1, 2) @ x).to(torch.float64))
    top = values[:, -rank:].flip(-1).clamp(min=0).sqrt()[..., None] * vectors[..., -rank:].flip(-1).transpose(1, 2)
    return top.to(dtype)


def gaussian_projection(source_dim: int, dim: int, seed: int) -> Tensor:
    """A seeded [source_dim x dim] matrix of N(0, 1/dim) entries: E[P P^T] = I, so E[|x P|^2] = |x|^2."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(source_dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)


def principal_projection(gram: Tensor, dim: int) -> Tensor:
    """The top-`dim` eigenvectors [d x dim] of a Gram matrix, as columns (largest eigenvalue first). Each
    column's sign is fixed (largest entry positive) so the projection does not depend on the eigensolver."""
    _, vectors = torch.linalg.eigh(gram.to(torch.float64))
    top = vectors[:, -dim:].flip(1)
    sign = torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
    return top * sign


def compress_examples(examples: list[Tensor], rank: int, projection: Tensor | None = None) -> list[Tensor]:
    """Each example's rows [n_i x d], projected by `projection` [d x dim] when given, then cut to at most `rank`
    rows. Examples with more rows are factored in batches of similar length (padded by at most 1.5x)."""
    if projection is not None:
        examples = [(x.to(projection.dtype) @ projection).to(x.dtype) for x in examples]
    out = list(examples)
    long = [i for i, x in enumerate(examples) if len(x) > rank]
    sizes = {i: padded_rows(len(examples[i])) for i in long}
    for size in sorted(set(sizes.values())):
        members = [i for i in long if sizes[i] == size]
        padded = examples[members[0]].new_zeros(len(members), size, examples[members[0]].shape[1])
        for row, i in enumerate(members):
            padded[row, : len(examples[i])] = examples[i]
        for row, factor in zip(members, low_rank_rows(padded, rank), strict=True):
            out[row] = factor.to(examples[row].dtype)
    return out
