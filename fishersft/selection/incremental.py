"""Exact greedy for examples of one feature row: the incremental algorithm of fast greedy MAP inference, primal.

With one row x_i per example the gain of adding i is log(1 + q_i), q_i = x_i^T Sigma^-1 x_i. Adding example j
changes Sigma^-1 by Sherman-Morrison,

    Sigma'^-1 = Sigma^-1 - g g^T,   g = Sigma^-1 x_j / sqrt(1 + q_j),

so every q_i loses e_i^2, e = X g: one [N x d] @ [d] product a pick, O(N d). Fast greedy MAP inference (Chen,
Zhang and Zhou 2018) runs the same recurrence on Cholesky rows of the N x N kernel I + X X^T / lambda, O(N (d +
k)) at pick k; in the primal form the cost of a pick does not grow with the picks, and nothing N x N or N x K is
ever held: the rows (float32, on the device) and four float64 numbers per candidate.

Exactness. The product runs in float32, q in float64, and each q_i carries a bound on the rounding error it has
gathered (a dot product of d float32 terms is off by at most (d + 3) 2^-24 |x_i| |g|, the rounding of x and g
included). Before a pick, every candidate whose upper bound reaches the best lower bound (in gain per unit cost)
is recomputed from Sigma's Cholesky factor in float64, one at a time: the same arithmetic whatever else is in
the window, so exact copies of an example stay exact ties. The best of the window is the pick, ties to the
lowest index: exact greedy's pick, up to float64 rounding (exact greedy's own gains are float32, so two
candidates within its rounding of each other may come out in either order there). Once a window holds more
than WINDOW_LIMIT candidates, every q is recomputed from Sigma and the error bounds start again (a
window that is still that large holds exact copies or true near-ties, and is recomputed as it is).
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager

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
ONE_THREAD_ELEMENTS = 1 << 26
"""Rows x dimensions (256 MiB of float32) up to which a CPU runs the picks on one thread (see
`_one_thread_for_small_passes`)."""


class _Residuals:
    """q_i = x_i^T Sigma^-1 x_i of every candidate (-inf once picked or too dear), its error bound and Sigma's
    Cholesky factor, on the device. A pick costs the product and a few passes over N numbers: no more, since on
    a shared CPU every pass of torch's threads costs a synchronisation."""

    def __init__(self, objective: LogDetObjective, idx: Tensor, costs: Tensor) -> None:
        self.blocks, self.device, self.index = objective.blocks, objective.device, idx
        self.sigma = objective.sigma.clone()
        self.costs = costs.to(self.device, torch.float64)
        self.equal_cost = float(costs[0]) if bool((costs == costs[0]).all()) else None
        """The cost of every candidate when all are equal: the best gain per unit cost is then the best q."""
        self.picked = torch.zeros(len(idx), dtype=torch.bool, device=self.device)
        self.rows = torch.empty(len(idx), self.blocks.dim, dtype=torch.float32, device=self.device)
        self.norms = torch.empty(len(idx), dtype=torch.float64, device=self.device)
        for part, x in self._exact_rows():
            self.rows[part] = x.to(torch.float32)
            self.norms[part] = x.norm(dim=1)
        self.rounding = (self.blocks.dim + 3) * FLOAT32_ROUNDING
        """Error of a float32 dot product of d terms relative to |x| |g|, the rounding of x and g included."""
        self.evaluations = 0
        self.refresh()

    def _exact_rows(self) -> list[tuple[slice, Tensor]]:
        """(where, float64 rows on the device) of every candidate, a chunk at a time: the stored rows times the
        example's scale, in float64, as the objective adds them."""
        chunk = max(1, CHUNK_ELEMENTS // self.blocks.dim)
        parts = []
        for first in range(0, len(self.index), chunk):
            part = slice(first, first + chunk)
            x = self.blocks.stored_rows(self.index[part], 1)[:, 0].to(torch.float64)
            if self.blocks.scale is not None:
                x *= self.blocks.scale[self.index[part], None].to(torch.float64)
            parts.append((part, x.to(self.device)))
        return parts

    def refresh(self) -> None:
        """Every q from Sigma, in float64; the error bounds start again."""
        self.chol = torch.linalg.cholesky(self.sigma)
        self.q = torch.empty(len(self.index), dtype=torch.float64, device=self.device)
        for part, x in self._exact_rows():
            self.q[part] = torch.linalg.solve_triangular(self.chol, x.T, upper=False).square().sum(0)
        self.error = FLOAT64_MARGIN * self.q
        self.q.masked_fill_(self.picked, -math.inf)
        self.evaluations += len(self.index)

    def exact(self, position: int) -> tuple[Tensor, Tensor, Tensor]:
        """(q, L^-1 x, x) of the candidate at `position`, from Sigma = L L^T in float64, alone."""
        x = self.blocks.block(int(self.index[position]))[0].to(self.device)
        solved = torch.linalg.solve_triangular(self.chol, x[:, None], upper=False)
        return solved.square().sum(), solved, x

    def pick(self, left: float) -> int | None:
        """The position of exact greedy's pick among the live candidates that cost at most `left` (None if
        none fits)."""
        window = self._window(left)
        if len(window) > WINDOW_LIMIT:
            self.refresh()  # past this, a window is exact copies or true near-ties: taken as it is
            window = self._window(left)
        if len(window) == 0:
            return None
        exact = torch.stack([self.exact(p)[0] for p in window.tolist()])
        self.q[window], self.error[window] = exact, FLOAT64_MARGIN * exact
        self.evaluations += len(window)
        ratio = torch.log1p(exact) / self.costs[window]
        return int(window[torch.argmax(ratio)])  # the first maximum: the lowest index

    def _window(self, left: float) -> Tensor:
        """The positions of the live candidates that fit and whose upper bound reaches every lower bound (the
        best is among them)."""
        if self.equal_cost is not None and self.equal_cost > left:
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        if self.equal_cost is None:  # what no longer fits never will
            self.q.masked_fill_(self.costs > left, -math.inf)
        upper, lower = self.q + self.error, self.q - self.error
        if self.equal_cost is None:  # log1p(-inf) of the dead is nan: never reaches
            upper, lower = torch.log1p(upper).div_(self.costs), torch.log1p(lower.clamp_min_(-1)).div_(self.costs)
        best = lower.max()
        window = (upper >= best).nonzero().flatten()
        if best == -math.inf:  # every lower bound -inf: the dead reach it too
            window = window[self.q[window] > -math.inf]
        return window

    def add(self, position: int) -> float:
        """Add the candidate at `position` to Sigma, downdate every q by Sherman-Morrison; its gain."""
        q, solved, x = self.exact(position)
        g = torch.linalg.solve_triangular(self.chol.T, solved, upper=True)[:, 0] / torch.sqrt(1 + q)
        e = (self.rows @ g.to(torch.float32)).to(torch.float64)
        self.q.addcmul_(e, e, value=-1)
        # e_i is off by at most scale |x_i|, so e_i^2 by that times (2 |e_i| + scale |x_i|)
        scale = float(self.rounding * g.norm())
        self.error.addcmul_(self.norms, e.abs_().mul_(2).add_(self.norms, alpha=scale), value=scale)
        self.picked[position] = True
        self.q[position] = -math.inf
        self.sigma += torch.outer(x, x)
        self.chol = torch.linalg.cholesky(self.sigma)
        self.evaluations += len(self.index)
        return float(torch.log1p(q))


@contextmanager
def _one_thread_for_small_passes(rows: Tensor) -> Iterator[None]:
    """One torch thread while the picks run on a CPU, for rows of up to ONE_THREAD_ELEMENTS. A pick is a dozen
    passes of well under a millisecond each; split across threads, every pass waits for the slowest thread, and
    on a CPU shared with other processes that one is often descheduled. Measured on the 2-core machine at load
    4: a pass over 60,000 float64 numbers took 10 ms on 2 threads, 0.05 ms on one; the [60,000 x 128] product
    12 ms and 2.1 ms. Larger rows keep torch's threads: there the product dominates a pick (not measured)."""
    if rows.device.type != "cpu" or rows.numel() > ONE_THREAD_ELEMENTS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    with _one_thread_for_small_passes(state.rows):
        while (position := state.pick(left)) is not None:
            gains.append(state.add(position))
            order.append(int(idx[position]))
            left -= float(costs[order[-1]])
            if on_step:
                on_step(limit - left)
    objective.evaluations += state.evaluations
    return better_than_best_single(GreedyResult(order, gains), (idx, first))
