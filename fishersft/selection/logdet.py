"""The FisherSFT objective f(S) = log det Sigma(S), Sigma(S) = lambda*I + sum_{i in S} X_i^T X_i.

By the matrix determinant lemma the gain of adding example i is

    f(S + i) - f(S) = log det(I + X_i Sigma^-1 X_i^T) = log det(I + A_i A_i^T),   A_i = X_i L^-T,

where Sigma = L L^T. We keep W = L^-1, so A_i is one matrix product and a batch of candidates is a few batched
products plus one batched Cholesky of small n_i x n_i matrices. W^T is upper triangular: split in halves,
A = [X_1 U_11, X_1 U_12 + X_2 U_22] skips the zero quarter of the product, which is most of the cost.

Sigma and its factor are accumulated in float64; the products over candidates run in float32 (three times the
throughput on CPU; features are float16 to begin with; TF32 tensor cores on CUDA), and each gain is summed in
float64. The blocks stay in host memory; on a GPU each chunk of candidates is copied over as it is evaluated.
"""

import math

import torch
from torch import Tensor

from fishersft.selection.blocks import FeatureBlocks


class LogDetObjective:
    """Sigma for the examples added so far, its inverse Cholesky factor, and the gains of candidates."""

    def __init__(self, blocks: FeatureBlocks, lam: float, device: torch.device | str = "cpu") -> None:
        if not lam > 0:
            raise ValueError(f"lambda must be positive, got {lam}")
        self.blocks = blocks
        self.device = torch.device(device)
        if self.device.type == "cuda":  # float32 products on TF32 tensor cores; Sigma stays float64
            torch.backends.cuda.matmul.allow_tf32 = True
        self.sigma = lam * torch.eye(blocks.dim, dtype=torch.float64, device=self.device)
        self.evaluations = 0
        self._buffers: dict[str, Tensor] = {}
        self._factor()

    def _factor(self) -> None:
        self.chol = torch.linalg.cholesky(self.sigma)
        identity = torch.eye(self.blocks.dim, dtype=torch.float64, device=self.device)
        inv_chol = torch.linalg.solve_triangular(self.chol, identity, upper=False)
        w_t = inv_chol.T.to(torch.float32)
        h = self.blocks.dim // 2
        self._triangle_blocks = (w_t[:h, :h].contiguous(), w_t[:h, h:].contiguous(), w_t[h:, h:].contiguous())

    def gains(self, idx: Tensor) -> Tensor:
        """log det(I + X_i Sigma^-1 X_i^T) for each example index in `idx`, as float64."""
        out = torch.empty(len(idx), dtype=torch.float64, device=self.device)
        h = self.blocks.dim // 2
        upper_left, upper_right, lower_right = self._triangle_blocks
        for where, host_block in self.blocks.by_bucket(idx, self._host_scratch):
            block = self._on_device(host_block)
            m, size, _ = block.shape
            rows = block.view(m * size, -1)
            # A = X W^T with W^T upper triangular: [X1 U11, X1 U12 + X2 U22], a quarter of the flops skipped
            a1 = torch.mm(rows[:, :h], upper_left, out=self._scratch("a1", (m * size, h)))
            a2 = torch.mm(rows[:, h:], lower_right, out=self._scratch("a2", (m * size, lower_right.shape[1])))
            a2.addmm_(rows[:, :h], upper_right)
            a1, a2 = a1.view(m, size, -1), a2.view(m, size, -1)
            gram = torch.bmm(a1, a1.transpose(1, 2), out=self._scratch("gram", (m, size, size)))
            gram.baddbmm_(a2, a2.transpose(1, 2))
            gram.diagonal(dim1=1, dim2=2).add_(1.0)
            chol = torch.linalg.cholesky(gram, out=self._scratch("chol", (m, size, size)))
            out[where.to(self.device)] = 2 * chol.diagonal(dim1=1, dim2=2).to(torch.float64).log().sum(-1)
        self.evaluations += len(idx)
        return out.cpu()

    def _on_device(self, host_block: Tensor) -> Tensor:
        if self.device.type == "cpu":
            return host_block
        return self._scratch("device_block", host_block.shape).copy_(host_block)

    def _host_scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return self._scratch(f"host_{name}", shape, dtype, torch.device("cpu"))

    def _scratch(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ) -> Tensor:
        """A tensor of `shape` backed by a buffer kept across calls (grown when too small), on the objective's
        device unless `device` says otherwise."""
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or len(buffer) < size:
            buffer = self._buffers[name] = torch.empty(size, dtype=dtype, device=device or self.device)
        return buffer[:size].view(shape)

    def add(self, i: int) -> None:
        """Add example i to the design: Sigma += X_i^T X_i, then refactor."""
        block = self.blocks.block(i).to(self.device)
        self.sigma += block.T @ block
        self._factor()

    def value(self) -> float:
        """f(S) = log det Sigma(S)."""
        return float(2 * self.chol.diagonal().log().sum())
