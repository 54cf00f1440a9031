"""Synthetic pre-logit features shaped like SmolLM2-135M's on instruction data (d = 576).

Measured on chatterbot English: rows have norm about 48 around a shared mean of norm about 27; one example's
tokens are strongly correlated (its best rank-4, 8 and 16 factors keep about 83%, 90% and 94% of the energy of
its X^T X); loss tokens per example spread widely. Here: a shared mean, 50 topics each with a centre and a
32-dimensional subspace, each example drawing 6 directions from its topic's subspace (weights decaying tenfold)
that its tokens vary along, plus a little per-dimension noise whose spread decays as the real spectrum does;
loss tokens per example log-normal with median 40 (rank-4/8/16 energies 0.86/0.90/0.93).
"""

from dataclasses import dataclass

import torch


def lengths(n: int, g: torch.Generator, median: float = 40.0, cap: int = 512) -> torch.Tensor:
    return (median * torch.exp(0.9 * torch.randn(n, generator=g))).round().clamp(1, cap).to(torch.int64)


@dataclass
class Topics:
    mean: torch.Tensor
    centres: torch.Tensor
    """[topics x d]"""
    bases: torch.Tensor
    """[topics x d x 32] orthonormal columns"""
    spread: torch.Tensor

    @classmethod
    def draw(cls, d: int, g: torch.Generator, topics: int = 50, subspace: int = 32) -> "Topics":
        mean = 27 * torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
        centres = 8 * torch.nn.functional.normalize(torch.randn(topics, d, generator=g), dim=1)
        bases = torch.linalg.qr(torch.randn(topics, d, subspace, generator=g)).Q
        return cls(mean, centres, bases, torch.logspace(0.5, -1.0, d) / 1.6)


def rows(counts: torch.Tensor, topics: Topics, g: torch.Generator, directions: int = 6) -> torch.Tensor:
    """[sum(counts) x d] float32 rows of len(counts) examples, example i owning counts[i] consecutive rows."""
    n, (n_topics, d, subspace) = len(counts), topics.bases.shape
    topic = torch.randint(0, n_topics, (n,), generator=g)
    weights = torch.randn(n, subspace, directions, generator=g) / subspace**0.5
    owner = torch.arange(n).repeat_interleave(counts)
    z = torch.randn(len(owner), directions, generator=g) * torch.logspace(0, -1, directions)
    along = torch.einsum("rsk,rk->rs", weights[owner], z)  # coordinates in the topic's subspace
    varied = torch.empty(len(owner), d)
    row_topic = topic[owner]
    for t in range(n_topics):  # topic by topic: one [rows x 32] @ [32 x d] product each
        members = (row_topic == t).nonzero().flatten()
        varied[members] = along[members] @ topics.bases[t].T
    noise = 0.8 * 1.2 * topics.spread * torch.randn(len(owner), d, generator=g)
    return topics.mean + topics.centres[topic[owner]] + 25 * varied + noise


def dataset(n: int, d: int = 576, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(float16 features [tokens x d], offsets [N+1])."""
    g = torch.Generator().manual_seed(seed)
    counts = lengths(n, g)
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    return rows(counts, Topics.draw(d, g), g).to(torch.float16), offsets
