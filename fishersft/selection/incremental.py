"""Exact greedy for examples of one feature row: the incremental algorithm of fast greedy MAP inference, primal.

With one row x_i per example the gain of adding i is log(1 + q_i), q_i = x_i^T Sigma^-1 x_i. Adding example j
changes Sigma^-1 by Sherman-Morrison,

    Sigma'^-1 = Sigma^-1 - g g^T,   g = Sigma^-1 x_j / sqrt(1 + q_j),

so every q_i loses e_i^2, e = X g: one [N x d] @ [d] product a pick, O(N d). Fast greedy MAP inference (Chen,
Zhang and Zhou 2018) runs the same recurrence on Cholesky rows of the N x N kernel I + X X^T / lambda, O(N (d +
k)) at pick k; in the primal form the cost of a pick does not grow with the picks, and nothing N x N or N x K is
ever held: the rows (float32, on the device) and three float64 numbers per candidate.

Exactness. The product runs in float32, q in float64, and each q_i carries a bound on the rounding error it has
gathered (a dot product of d float32 terms is off by at most (d + 3) 2^-24 |x_i| |g|, the rounding of x and g
included). Before a pick, every candidate whose upper bound reaches the best lower bound (in gain per unit cost)
is recomputed from Sigma's Cholesky factor in float64, one at a time: the same arithmetic whatever else is in
the window, so exact copies of an example stay exact ties. The best of the window is the pick, ties to the
lowest index: exact greedy's pick, up to float64 rounding (exact greedy's own gains are float32, so two
candidates within its rounding of each other may come out in either order there). Once a window holds more
than WINDOW_LIMIT candidates, every q is recomputed from Sigma and the error bounds start again from zero (a
window that is still that large holds exact copies or true near-ties, and is recomputed as it is).
"""

import math

import torch
from torch import Tensor

from fishersft.selection.greedy import GreedyResult, StepCallback, better_than_best_single
from fishersft.selection.logdet import LogDetObjective

WINDOW_LIMIT = 64
"""Candidates recomputed one at a time before a pick, at most; past it, every q is recomputed from Sigma."""
FLOAT32_ROUNDING = 2.0**-24
FLOAT64_MARGIN = 2.0**-30
"""Relative error allowed in a q recomputed in float64 (rounding there is below 1e-12 but for a Sigma of
condition number past 1e6): far below float32's, far above what float64 arithmetic makes."""
CHUNK_ELEMENTS = 1 << 22
"""Rows x dimensions recomputed in float64 at a time (32 MiB)."""


class _Residuals:
    """q_i = x_i^T Sigma^-1 x_i of every candidate, its error bound and Sigma's Cholesky factor, on the device."""

    def __init__(self, objective: LogDetObjective, idx: Tensor, costs: Tensor) -> None:
        self.blocks, self.device, self.index = objective.blocks, objective.device, idx
        self.sigma = objective.sigma.clone()
        self.costs = costs.to(self.device, torch.float64)
        self.alive = torch.ones(len(idx), dtype=torch.bool, device=self.device)
        self.chunk = max(1, CHUNK_ELEMENTS // self.blocks.dim)
        self.rows = torch.empty(len(idx), self.blocks.dim, dtype=torch.float32, device=self.device)
        self.norms = torch.empty(len(idx), dtype=torch.float64, device=self.device)
        for part, x in self._exact_rows():
            self.rows[part] = x.to(torch.float32)
            self.norms[part] = x.norm(dim=1)
        self.evaluations = 0
        self.refresh()

    def _exact_rows(self, positions: Tensor | None = None) -> list[tuple[slice, Tensor]]:
        """(where, float64 rows on the device) of the candidates at `positions` (default: all), a chunk at a
        time: the stored rows times the example's scale, in float64 as the objective adds them."""
        idx = self.index if positions is None else self.index[positions.cpu()]
        parts = []
        for first in range(0, len(idx), self.chunk):
            part = slice(first, first + self.chunk)
            x = self.blocks.stored_rows(idx[part], 1)[:, 0].to(torch.float64)
            if self.blocks.scale is not None:
                x *= self.blocks.scale[idx[part], None].to(torch.float64)
            parts.append((part, x.to(self.device)))
        return parts

    def refresh(self) -> None:
        """Every q from Sigma, in float64; the error bounds start again."""
        self.chol = torch.linalg.cholesky(self.sigma)
        self.q = torch.empty(len(self.index), dtype=torch.float64, device=self.device)
        for part, x in self._exact_rows():
            self.q[part] = torch.linalg.solve_triangular(self.chol, x.T, upper=False).square().sum(0)
        self.error = FLOAT64_MARGIN * self.q
        self.evaluations += len(self.index)

    def exact(self, position: int) -> tuple[Tensor, Tensor, Tensor]:
        """(q, L^-1 x, x) of the candidate at `position`, from Sigma = L L^T in float64, alone."""
        x = self._exact_rows(torch.tensor([position]))[0][1].T
        solved = torch.linalg.solve_triangular(self.chol, x, upper=False)
        return solved.square().sum(), solved, x[:, 0]

    def pick(self, left: float) -> int | None:
        """The position of exact greedy's pick among the live candidates that cost at most `left` (None if
        none fits)."""
        window = self._window(left)
        if window is not None and len(window) > WINDOW_LIMIT:
            self.refresh()  # past this, a window is exact copies or true near-ties: taken as it is
            window = self._window(left)
        if window is None:
            return None
        exact = torch.stack([self.exact(p)[0] for p in window.tolist()])
        self.q[window], self.error[window] = exact, FLOAT64_MARGIN * exact
        self.evaluations += len(window)
        ratio = torch.log1p(exact) / self.costs[window]
        return int(window[torch.argmax(ratio)])  # the first maximum: the lowest index

    def _window(self, left: float) -> Tensor | None:
        """The positions of the live candidates that fit and whose upper bound reaches every lower bound (the
        best is among them); None if none fits."""
        fits = self.alive & (self.costs <= left)
        if not bool(fits.any()):
            return None
        upper = torch.where(fits, torch.log1p(self.q + self.error) / self.costs, -math.inf)
        lower = torch.where(fits, torch.log1p((self.q - self.error).clamp_min(0)) / self.costs, -math.inf)
        return (upper >= lower.max()).nonzero().flatten()

    def add(self, position: int) -> float:
        """Add the candidate at `position` to Sigma, downdate every q by Sherman-Morrison; its gain."""
        q, solved, x = self.exact(position)
        g = torch.linalg.solve_triangular(self.chol.T, solved, upper=True)[:, 0] / torch.sqrt(1 + q)
        e = (self.rows @ g.to(torch.float32)).to(torch.float64)
        bound = (self.blocks.dim + 3) * FLOAT32_ROUNDING * self.norms * g.norm()
        self.q -= e.square()
        self.error += bound * (2 * e.abs() + bound)
        self.alive[position] = False
        self.evaluations += int(self.alive.sum())
        self.sigma += torch.outer(x, x)
        self.chol = torch.linalg.cholesky(self.sigma)
        return float(torch.log1p(q))


def incremental_greedy(
    objective: LogDetObjective,
    costs: Tensor,
    limit: float,
    candidates: Tensor,
    on_step: StepCallback | None = None,
) -> GreedyResult:
    """Exact greedy's picks of `candidates` (sorted ascending, each of at most one row) under costs and a limit,
    starting from the objective's Sigma; see the module."""
    if len(candidates) and int(objective.blocks.counts[candidates].max()) > 1:
        raise ValueError("incremental greedy needs examples of at most one feature row")
    idx = candidates[costs[candidates] <= limit]
    if len(idx) == 0:
        return GreedyResult([], [])
    state = _Residuals(objective, idx, costs[idx])
    first = torch.log1p(state.q).cpu()
    order: list[int] = []
    gains: list[float] = []
    left = limit
    while (position := state.pick(left)) is not None:
        gains.append(state.add(position))
        order.append(int(idx[position]))
        left -= float(costs[order[-1]])
        if on_step:
            on_step(limit - left)
    objective.evaluations += state.evaluations
    return better_than_best_single(GreedyResult(order, gains), (idx, first))
