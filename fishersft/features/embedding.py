"""Pre-logit embeddings: the final hidden state (after the model's final norm, the input of the LM head) at the
positions that predict loss tokens.

Only the model's body runs (`model.base_model`): the LM head, a d x vocabulary product at every position, is not
needed for the features and would dominate the cost for large vocabularies; the scores (fishersft.features.scores)
apply it at the loss positions alone. Examples are batched in order of length so padding stays small, and rows go
to the features store's writer (which compresses them) as soon as a batch is done.
"""

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel

from fishersft.data.encoding import Encoded
from fishersft.features.scores import LossHead, ifd, per_example_means
from fishersft.features.store import FeatureStoreWriter
from fishersft.models.forward import length_sorted_batches, pre_logits


@torch.inference_mode()
def embed(
    model: PreTrainedModel,
    encoded: Sequence[Encoded],
    writer: FeatureStoreWriter,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
    dtype: torch.dtype | None = None,
    first: int = 0,
    alone: Sequence[Encoded | None] | None = None,
) -> None:
    """Give `writer` the pre-logit vectors of every example's targets, `encoded[k]` being example `first + k`;
    `on_batch(examples done)`. The forward pass runs under `autocast(dtype)`. With `alone` (each example's
    response alone, `data.encoding.response_alone`), also each loss token's uncertainty and each example's loss
    and IFD."""
    head = None if alone is None else LossHead(model)
    losses = torch.zeros(len(encoded), dtype=torch.float64)
    done = 0
    for batch in length_sorted_batches(encoded, batch_size):
        vectors, labels = pre_logits(model, encoded, batch, dtype)
        counts = [len(encoded[i].targets) for i in batch]
        factors = None
        if head is not None:
            token_losses, token_factors = head.token_scores(vectors, labels)
            losses[batch] = per_example_means(token_losses, counts)
            factors = token_factors.split(counts)
        writer.write([first + i for i in batch], vectors.split(counts), factors)
        done += len(batch)
        if on_batch:
            on_batch(done)
    if head is not None and alone is not None:
        difficulty = ifd(model, head, losses, alone, batch_size, dtype)
        writer.score(range(first, first + len(encoded)), losses.numpy(), difficulty.numpy())
