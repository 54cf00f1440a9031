"""Per-example difficulty scores, kept by the features store: the loss and uncertainty from the embedder's pass,
IFD from a pass of its own that method ifd alone pays for (`pipeline.score_difficulty`).

- loss: the mean cross-entropy of an example's loss tokens under the model: the LM head, in float32, applied to
  the pre-logit vectors the embedder already has (its body runs at the embedder's precision), a bounded chunk of
  rows at a time.
- IFD, Instruction-Following Difficulty (Li et al. 2023, arXiv 2308.12032, Cherry LLM's `data_by_IFD.py`): the
  mean cross-entropy of the response given its prompt over that of the same tokens without the prompt
  (`data.encoding.response_alone`), one more forward pass over the responses alone. A ratio of mean losses, as
  the paper and Cherry LLM define it (Superfiltering's code divides perplexities, exp of the losses: another
  order). Below 1 the prompt helps predict the response. An example with no prompt (text, an empty prompt) has
  IFD 1 by definition and no second pass. Cherry LLM drops examples above 1 before ranking: left to the method.
- uncertainty, per loss token: u = sqrt(1 - sum_k p_k^2), p the softmax of the token's logits: u^2 is the trace
  of the softmax covariance diag(p) - p p^T, the factor of the token's Fisher information that the paper's lower
  bound drops (weighting `uncertainty`). From the same logits as the loss.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from fishersft.data.encoding import Encoded
from fishersft.models.batching import length_sorted_batches
from fishersft.models.forward import lengths, pre_logits, to_device

LOGITS_BYTES = 64 << 20
"""float32 logits computed at a time: rows x vocabulary x 4 bytes."""


class LossHead:
    """The model's LM head in float32 (a copy only where the weights are in another dtype)."""

    def __init__(self, model: PreTrainedModel) -> None:
        head = model.get_output_embeddings()
        weight, bias = head.weight, getattr(head, "bias", None)
        assert isinstance(weight, torch.Tensor) and (bias is None or isinstance(bias, torch.Tensor))
        self.weight, self.bias = weight.float(), None if bias is None else bias.float()
        self.rows = max(1, LOGITS_BYTES // (4 * self.weight.shape[0]))

    def token_scores(self, vectors: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-entropy [n] of each row of `vectors` [n x d], which predict `labels` [n], and its uncertainty
        [n] (both float32, on the rows' device)."""
        losses, factors = [], []
        for v, y in zip(vectors.split(self.rows), labels.split(self.rows), strict=True):
            log_p = F.linear(v.float(), self.weight, self.bias).log_softmax(-1)
            losses.append(F.nll_loss(log_p, y, reduction="none"))
            factors.append(uncertainty(log_p))
        return torch.cat(losses), torch.cat(factors)

    def mean_losses(self, vectors: torch.Tensor, labels: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """The mean cross-entropy [b] (float64, on the vectors' device) of each example's `counts` consecutive
        rows of `vectors` [n x d], which predict `labels` [n] (no softmax: the IFD pass needs no uncertainty)."""
        losses = [
            F.cross_entropy(F.linear(v.float(), self.weight, self.bias), y, reduction="none")
            for v, y in zip(vectors.split(self.rows), labels.split(self.rows), strict=True)
        ]
        return per_example_means(torch.cat(losses), counts)


def per_example_means(values: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """The mean [b] (float64, on the values' device) of each example's `counts` consecutive entries of `values`."""
    counts_d = to_device(np.asarray(counts, dtype=np.int64), values.device)
    owner = torch.repeat_interleave(torch.arange(len(counts), device=values.device), counts_d, output_size=len(values))
    sums = values.new_zeros(len(counts), dtype=torch.float64).index_add_(0, owner, values.double())
    return sums / counts_d


def uncertainty(log_p: torch.Tensor) -> torch.Tensor:
    """sqrt(1 - sum_k p_k^2) of each row of log-probabilities [n x V]. With m the most likely token and s = 1 - p_m
    the mass of the others, 1 - sum_k p_k^2 = s (2 - s) - sum_{k != m} p_k^2: no cancellation when the model is
    almost certain, and exactly 0 when every other probability is."""
    p = log_p.exp()
    others = p.scatter(-1, p.argmax(-1, keepdim=True), 0.0)
    s = others.sum(-1)
    return (s * (2 - s) - others.square().sum(-1)).clamp(min=0).sqrt()


def ifd(
    model: PreTrainedModel,
    head: LossHead,
    losses: torch.Tensor,
    alone: Sequence[Encoded | None],
    batch_tokens: int,
    dtype: torch.dtype | None,
    max_examples: int | None = None,
) -> torch.Tensor:
    """Each example's IFD [N] (float64, on `losses`' device): its mean loss in context `losses` [N] over that of
    `alone[k]`, its response alone, run in length-sorted batches of at most `batch_tokens` padded tokens (and
    `max_examples` examples) under `autocast(dtype)`; 1 where `alone[k]` is None."""
    scored = [k for k, a in enumerate(alone) if a is not None]
    sequences = [a for a in alone if a is not None]
    out = torch.ones_like(losses)
    for batch in length_sorted_batches(lengths(sequences), batch_tokens, max_examples):
        vectors, labels = pre_logits(model, sequences, batch, dtype)
        rows = to_device(np.asarray([scored[j] for j in batch], dtype=np.int64), losses.device)
        out[rows] = losses[rows] / head.mean_losses(vectors, labels, [len(sequences[j].targets) for j in batch])
    return out
