"""Targeted design (transductive, V-optimal): the examples that most reduce the predictive variance on a target.

A target set's feature rows a (its loss tokens, weighted as the selection weights its own) give its second
moment A = (1/T) sum a a^T. Under Sigma(S) = lambda*I + sum_{i in S} X_i^T X_i the mean predictive variance of
a linear model's outputs on the target is

    V(S) = tr(A Sigma(S)^-1),

which selection lowers. By Woodbury, (Sigma + X^T X)^-1 = Sigma^-1 - Sigma^-1 X^T K^-1 X Sigma^-1 with
K = I + X Sigma^-1 X^T, so adding example i (rows X_i, n_i x d) lowers V by

    gain_i = tr(A Sigma^-1) - tr(A (Sigma + X_i^T X_i)^-1) = tr(K_i^-1 X_i M X_i^T),   M = Sigma^-1 A Sigma^-1,

an n_i x n_i problem per candidate once X_i Sigma^-1 and X_i M are known (one product of the rows with
[Sigma^-1, M]). V is not supermodular in general (a gain can grow as the set grows), so greedy recomputes every
gain at every pick (`exact_greedy`): the lazy bounds of log det would be wrong here.

After a pick Sigma is refactored (Cholesky, in float64) and Sigma^-1 and M recomputed from it: O(d^3) a pick,
small beside the gains, and free of the drift that a running rank-n update of Sigma^-1 gathers over many picks.
The products over candidates run in float32, each K and its solve in float64.
"""

import torch
from torch import Tensor

from fishersft.selection.blocks import FeatureBlocks


def second_moment(blocks: FeatureBlocks, total_weight: float) -> Tensor:
    """A = (sum over every example of X_i^T X_i) / `total_weight`, float64 [d x d]: the mean outer product of a
    target's (weighted) rows, `total_weight` being what they sum over (its loss tokens, or its examples)."""
    if not total_weight > 0:
        raise ValueError(f"the target's total weight must be positive, got {total_weight}")
    total = torch.zeros(blocks.dim, blocks.dim, dtype=torch.float64)
    for _, block in blocks.by_bucket(torch.arange(len(blocks)), _fresh):
        rows = block.reshape(-1, blocks.dim).to(torch.float64)
        total += rows.T @ rows
    return total / total_weight


def predictive_variance(sigma: Tensor, second_moment: Tensor) -> float:
    """V = tr(A Sigma^-1) for a design matrix `sigma` and a target's second moment A."""
    chol = torch.linalg.cholesky(sigma.to(torch.float64))
    return float(torch.cholesky_solve(second_moment.to(chol), chol).diagonal().sum())


class TargetedObjective:
    """Sigma for the examples added so far, Sigma^-1, M = Sigma^-1 A Sigma^-1, and the gains of candidates (the
    `Objective` of fishersft.selection.greedy: a gain is how much V falls)."""

    def __init__(
        self, blocks: FeatureBlocks, second_moment: Tensor, lam: float, device: torch.device | str = "cpu"
    ) -> None:
        if not lam > 0:
            raise ValueError(f"lambda must be positive, got {lam}")
        if second_moment.shape != (blocks.dim, blocks.dim):
            raise ValueError(f"the target's second moment is {tuple(second_moment.shape)}, the features {blocks.dim}-d")
        self.blocks = blocks
        self.device = torch.device(device)
        self.second_moment = second_moment.to(torch.float64).to(self.device)
        self.sigma = lam * torch.eye(blocks.dim, dtype=torch.float64, device=self.device)
        self.evaluations = 0
        self._factor()

    def _factor(self) -> None:
        self.inverse = torch.cholesky_inverse(torch.linalg.cholesky(self.sigma))
        weighted = self.inverse @ self.second_moment @ self.inverse
        self._right = torch.cat([self.inverse, weighted], dim=1).to(torch.float32)  # X [Sigma^-1, M]: one product

    def gains(self, idx: Tensor) -> Tensor:
        """tr(K_i^-1 X_i M X_i^T), K_i = I + X_i Sigma^-1 X_i^T, for each example index in `idx`, as float64.
        Zero padding rows add an identity block to K and nothing to the trace."""
        out = torch.empty(len(idx), dtype=torch.float64, device=self.device)
        d = self.blocks.dim
        for where, host_block in self.blocks.by_bucket(idx, _fresh):
            block = host_block.to(self.device)
            m, size, _ = block.shape
            products = (block.view(m * size, d) @ self._right).view(m, size, 2 * d)
            rows_t = block.transpose(1, 2)
            k = torch.bmm(products[..., :d], rows_t).to(torch.float64)
            k.diagonal(dim1=1, dim2=2).add_(1.0)
            n = torch.bmm(products[..., d:], rows_t).to(torch.float64)
            solved = torch.cholesky_solve(n, torch.linalg.cholesky(k))
            out[where.to(self.device)] = solved.diagonal(dim1=1, dim2=2).sum(-1)
        self.evaluations += len(idx)
        return out.cpu()

    def add(self, i: int) -> None:
        """Add example i to the design: Sigma += X_i^T X_i, then refactor."""
        block = self.blocks.block(i).to(self.device)
        self.sigma += block.T @ block
        self._factor()

    def value(self) -> float:
        """V(S) = tr(A Sigma(S)^-1)."""
        return float((self.second_moment * self.inverse).sum())  # both symmetric: tr(A B) = sum of A * B


def _fresh(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Scratch for `FeatureBlocks.by_bucket`: a new tensor each time (exact greedy's cost is in the products)."""
    return torch.empty(shape, dtype=dtype)
