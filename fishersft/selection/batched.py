"""Greedy whose picks stay on the device: exact greedy's picks from batched matrix products.

Each *active* candidate keeps C_i = X_i Sigma^-1 X_i^T (m x m, its rows zero-padded to the largest row count m)
and its gain log det(I + C_i), one batched Cholesky. Adding example j (rows x_j) to Sigma changes Sigma^-1 by
Woodbury,

    Sigma'^-1 = Sigma^-1 - G G^T,   G = (L^-1 x_j Sigma^-1)^T,   L L^T = I + x_j Sigma^-1 x_j^T,

so every C_i loses (X_i G)(X_i G)^T: one [a*m x d] @ [d x m] product and one batched [m x m] product per pick
(lazy greedy instead pops a heap, evaluates small batches and reads every value back on the host). The pick is
an argmax on the device, masked by the budget; nothing is read back inside a window of WINDOW picks.

Which candidates are active: gains only decrease, so every candidate's last computed gain per unit cost bounds
its current one, as in lazy greedy. The candidates with the best bounds are active (8 per expected pick at
first); a pick is taken only when no inactive bound reaches it (less ROUNDING_TOLERANCE): that is exact greedy's
pick. When one does (or some C_i may have drifted, see DRIFT), that step and the rest of its window do nothing,
and the host, at the window's end, activates at least as many candidates again (the best bounds, every one that
reached the pick among them): at most log2(N) activations, and data where every candidate stays close
(isotropic features) costs the Woodbury update of all of them per pick, without changing a pick.

Precision: Sigma, Sigma^-1 and the picked example's gain in float64; the products over candidates in `dtype`
(float32 unless asked: TF32 is switched off for them, since downdates subtract nearly equal numbers). Every
REFRESH picks Sigma^-1 is recomputed from Sigma, and C_i whenever downdates may have cost it precision (DRIFT).
Ties: the lowest index among the candidates whose computed gains per unit cost are equal, as exact greedy;
gains are computed by other arithmetic than exact greedy's, so two candidates closer than float32 rounding can
come out in the other order (exact copies of one example stay exact ties).
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from fishersft.selection.blocks import FeatureBlocks
from fishersft.selection.greedy import ROUNDING_TOLERANCE, GreedyResult, StepCallback, better_than_best_single
from fishersft.selection.logdet import LogDetObjective

WINDOW = 32
"""Picks queued on the device between two looks from the host (budget, progress, cancellation, active set), at
most: a window starts at 4, doubles after a window whose every step counted and shrinks to a quarter after one
that met an inactive bound (the steps after that one are wasted)."""
REFRESH = 256
"""Picks after which Sigma^-1 is recomputed from Sigma."""
DRIFT = 4.0
"""A downdate C_i - P P^T loses to cancellation about float32's precision times trace(P P^T) / trace(C_i): once
the downdates since C_i was computed sum to DRIFT times its trace (an error of about 1e-6 of it), every C_i is
recomputed from Sigma before the next pick (early picks, which change Sigma most, need it most)."""
ACTIVE_PER_PICK = 8
"""Candidates active at first, per pick the budget allows (at least MIN_ACTIVE)."""
MIN_ACTIVE = 4096
CHUNK_ELEMENTS = {"cuda": 1 << 28, "cpu": 1 << 22}
"""Rows x dimensions converted to the compute dtype at a time (1 GiB of float32 on a GPU, 16 MiB on a CPU)."""


@dataclass
class _Active:
    """The active candidates, on the device, in any order."""

    index: Tensor
    rows: Tensor
    """[a x m x d], the stored dtype, unscaled."""
    scale: Tensor
    cost: Tensor
    gram: Tensor
    """C_i [a x m x m]."""
    gain: Tensor
    alive: Tensor
    """Not picked yet."""
    removed: Tensor
    """trace(P P^T) summed over the downdates since C_i was last computed from Sigma: its rounding error."""

    def __len__(self) -> int:
        return len(self.index)

    def keep(self, mask: Tensor) -> "_Active":
        return _Active(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))

    def join(self, other: "_Active") -> "_Active":
        return _Active(*(torch.cat([getattr(self, f), getattr(other, f)]) for f in self.__dataclass_fields__))


class _DeviceGreedy:
    """Sigma, Sigma^-1, the active candidates and the budget left, all on the objective's device."""

    def __init__(self, objective: LogDetObjective, costs: Tensor, rows: int, dtype: torch.dtype) -> None:
        self.blocks: FeatureBlocks = objective.blocks
        self.device, self.dtype, self.m = objective.device, dtype, rows
        self.costs = costs.to(torch.float64)
        self.sigma = objective.sigma.clone()
        self.chunk = max(1, CHUNK_ELEMENTS.get(self.device.type, CHUNK_ELEMENTS["cuda"]) // (rows * self.blocks.dim))
        self.evaluations = 0
        self.refactor()
        self.active = self._candidates(torch.zeros(0, dtype=torch.int64))

    def refactor(self) -> None:
        """Sigma^-1 = W^T W from Sigma = L L^T, W = L^-1; keeps W^T in the compute dtype."""
        identity = torch.eye(self.blocks.dim, dtype=torch.float64, device=self.device)
        inv_chol = torch.linalg.solve_triangular(torch.linalg.cholesky(self.sigma), identity, upper=False)
        self.inverse = inv_chol.T @ inv_chol
        self.w_t = inv_chol.T.to(self.dtype)

    def _candidates(self, idx: Tensor) -> _Active:
        """`idx` (host indices) made active: rows copied over, C_i and gains from Sigma."""
        scale = torch.ones(len(idx)) if self.blocks.scale is None else self.blocks.scale[idx]
        rows = torch.empty(len(idx), self.m, self.blocks.dim, dtype=self._stored_dtype(), device=self.device)
        for first in range(0, len(idx), self.chunk):
            part = slice(first, first + self.chunk)
            rows[part] = self.blocks.stored_rows(idx[part], self.m).to(self.device)
        on_device = idx.to(self.device)
        gram = torch.empty(len(idx), self.m, self.m, dtype=self.dtype, device=self.device)
        active = _Active(
            on_device,
            rows,
            scale.to(self.device, self.dtype),
            self.costs.to(self.device)[on_device],
            gram,
            torch.empty(len(idx), dtype=torch.float64, device=self.device),
            torch.ones(len(idx), dtype=torch.bool, device=self.device),
            torch.zeros(len(idx), dtype=self.dtype, device=self.device),
        )
        self._recompute(active)
        return active

    def _stored_dtype(self) -> torch.dtype:
        return next(iter(self.blocks.padded.values())).dtype if self.blocks.padded else torch.float32

    def _chunks(self, active: _Active) -> Iterator[tuple[slice, Tensor]]:
        """(where, scaled rows in the compute dtype) of the active candidates, a chunk at a time."""
        for first in range(0, len(active), self.chunk):
            where = slice(first, first + self.chunk)
            yield where, active.rows[where].to(self.dtype) * active.scale[where, None, None]

    def _recompute(self, active: _Active) -> None:
        """C_i = (X_i W^T)(X_i W^T)^T and gains, from Sigma."""
        for where, rows in self._chunks(active):
            a = rows @ self.w_t
            torch.bmm(a, a.transpose(1, 2), out=active.gram[where])
            active.gain[where] = _logdet_plus_identity(active.gram[where])
        active.removed.zero_()
        self.evaluations += len(active)

    def bounds(self, idx: Tensor) -> Tensor:
        """Gains of the host indices `idx` from Sigma (float64, on the host), without keeping anything."""
        out = torch.empty(len(idx), dtype=torch.float64)
        for first in range(0, len(idx), self.chunk):
            part = slice(first, first + self.chunk)
            out[part] = self._candidates(idx[part]).gain.cpu()
        return out

    def refresh(self) -> None:
        self.refactor()
        self._recompute(self.active)

    def drifted(self) -> Tensor:
        """Whether some live candidate's C_i has had DRIFT times its trace subtracted since it was computed."""
        a = self.active
        trace = a.gram.diagonal(dim1=-2, dim2=-1).sum(-1)
        return (a.alive & (a.removed > DRIFT * trace)).any()

    def activate(self, idx: Tensor) -> None:
        """Make `idx` active, their C_i from the current Sigma."""
        self.refactor()
        self.active = self.active.join(self._candidates(idx))

    def compact(self, left: float) -> None:
        """Drop the picked candidates and those that no longer fit (they never will)."""
        self.active = self.active.keep(self.active.alive & (self.active.cost <= left))

    def best(self, left: Tensor) -> Tensor:
        """The best gain per unit cost among active candidates that fit (-inf if none)."""
        a = self.active
        if not len(a):
            return torch.tensor(-math.inf, dtype=torch.float64)
        return torch.where(a.alive & (a.cost <= left), a.gain / a.cost, -math.inf).max()

    def step(self, left: Tensor, ceiling: Tensor, still: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queue one pick: (picked index or -1, its gain, whether it counted). `ceiling` is the best inactive
        bound; `still` whether every step of the window so far counted (a step after one that did not does
        nothing: its pick could follow a wrong one)."""
        a = self.active
        ratio = torch.where(a.alive & (a.cost <= left), a.gain / a.cost, -math.inf)
        best = ratio.max()
        j = torch.where(ratio == best, a.index, len(self.costs)).argmin().view(1)  # lowest index among equals
        valid = still & (best > -math.inf) & (ceiling < best - ROUNDING_TOLERANCE * best.abs()) & ~self.drifted()
        weight = valid.to(torch.float64)
        x = a.rows.index_select(0, j)[0].to(torch.float64) * a.scale.index_select(0, j).to(torch.float64)
        u = x @ self.inverse
        chol = torch.linalg.cholesky_ex(u @ x.T + torch.eye(self.m, dtype=torch.float64, device=self.device)).L
        gain = 2 * chol.diagonal().log().sum()
        g = torch.linalg.solve_triangular(chol, u, upper=False).T * weight  # zero when the step does nothing
        self.inverse -= g @ g.T
        self.sigma += weight * (x.T @ x)
        g_low = g.to(self.dtype)
        for where, rows in self._chunks(a):
            p = rows @ g_low
            a.gram[where].baddbmm_(p, p.transpose(1, 2), alpha=-1)
            a.removed[where] += p.square().sum((1, 2))
            a.gain[where] = _logdet_plus_identity(a.gram[where])
        self.evaluations += len(a)
        a.alive.index_copy_(0, j, a.alive.index_select(0, j) & ~valid)
        left.sub_(weight * a.cost.index_select(0, j)[0])
        return torch.where(valid, a.index.index_select(0, j)[0], -1), gain, valid


def _logdet_plus_identity(gram: Tensor) -> Tensor:
    """log det(I + C) of a batch [b x m x m], as float64."""
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    chol: Tensor = torch.linalg.cholesky_ex(gram + eye).L
    return chol.diagonal(dim1=-2, dim2=-1).to(torch.float64).log().sum(-1).mul(2)


@contextmanager
def _full_float32_products(device: torch.device) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def batched_greedy(
    objective: LogDetObjective,
    costs: Tensor,
    limit: float,
    candidates: Tensor,
    on_step: StepCallback | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    active_size: int | None = None,
) -> GreedyResult:
    """Exact greedy's picks (see the module) of `candidates` (sorted ascending) under costs and a limit, starting
    from the objective's Sigma; gains are float64. `active_size`: candidates active at first (default: see
    ACTIVE_PER_PICK)."""
    idx = candidates[costs[candidates] <= limit]
    if len(idx) == 0:
        return GreedyResult([], [])
    with _full_float32_products(objective.device):
        state = _DeviceGreedy(objective, costs, int(objective.blocks.counts[idx].max()), dtype)
        first = state.bounds(idx)
        ratio = first / costs[idx]
        expected = limit / float(costs[idx].mean())
        start = min(len(idx), active_size or max(MIN_ACTIVE, math.ceil(ACTIVE_PER_PICK * expected)))
        ranked = torch.argsort(ratio, descending=True, stable=True)
        state.activate(idx[ranked[:start]])
        dormant, dormant_bound = idx[ranked[start:]], ratio[ranked[start:]]  # best bound first
        result = _run(state, dormant, dormant_bound, costs, limit, on_step)
    objective.evaluations += state.evaluations
    return better_than_best_single(result, (idx, first))


def _run(
    state: _DeviceGreedy,
    dormant: Tensor,
    dormant_bound: Tensor,
    costs: Tensor,
    limit: float,
    on_step: StepCallback | None,
) -> GreedyResult:
    """The host's loop: a window of picks on the device, then one read of what they were."""
    order: list[int] = []
    gains: list[float] = []
    left = limit
    left_on_device = torch.tensor(limit, dtype=torch.float64, device=state.device)
    since_refresh, window = 0, 4
    while True:
        cheapest = min(
            float(costs[dormant].min()) if len(dormant) else math.inf,
            float(state.active.cost[state.active.alive].min()) if bool(state.active.alive.any()) else math.inf,
        )
        steps = min(window, int(left // cheapest)) if math.isfinite(cheapest) else 0
        if steps == 0:
            break
        ceiling = torch.tensor(
            float(dormant_bound[0]) if len(dormant) else -math.inf, dtype=torch.float64, device=state.device
        )
        still = torch.ones((), dtype=torch.bool, device=state.device)
        picks, picked_gains = [], []
        for _ in range(steps):
            picked, gain, still = state.step(left_on_device, ceiling, still)
            picks.append(picked)
            picked_gains.append(gain)
        counted = [i for i in torch.stack(picks).tolist() if i >= 0]  # a prefix: a step after one that did not
        for i, gain in zip(counted, torch.stack(picked_gains).tolist()[: len(counted)], strict=True):  # count is void
            order.append(i)
            gains.append(gain)
            left -= float(costs[i])
            if on_step:
                on_step(limit - left)
        since_refresh += len(counted)
        if since_refresh >= REFRESH:
            state.refactor()
            since_refresh = 0
        if len(counted) == steps:
            window = min(WINDOW, 2 * window)
            continue
        window = max(1, window // 4)
        if bool(state.drifted()):
            state.refresh()
        state.compact(left)
        fits = costs[dormant] <= left
        dormant, dormant_bound = dormant[fits], dormant_bound[fits]
        best = float(state.best(left_on_device))
        if math.isnan(best):
            raise FloatingPointError("a gain came out NaN: features with inf or nan values?")
        floor = best - ROUNDING_TOLERANCE * abs(best) if math.isfinite(best) else -math.inf
        reaching = int((dormant_bound >= floor).sum())
        if reaching == 0:
            if not len(state.active):
                break
            continue
        wake = min(len(dormant), max(reaching, len(state.active)))
        state.activate(dormant[:wake])  # gains from the current Sigma
        dormant, dormant_bound = dormant[wake:], dormant_bound[wake:]
    return GreedyResult(order, gains)
