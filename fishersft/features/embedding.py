"""Pre-logit embeddings: the final hidden state (after the model's final norm, the input of the LM head) at the
positions that predict loss tokens.

Only the model's body runs (`model.base_model`): the LM head, a d x vocabulary product at every position, is not
needed for the features and would dominate the cost for large vocabularies; the scores (fishersft.features.scores)
apply it at the loss positions alone. IFD, which needs another pass, is not computed here (see
`pipeline.score_difficulty`). Examples are sorted by length and cut into batches of a token budget, so
padding stays small and a batch's cost is bounded whatever the lengths; outputs keep the examples' order. Rows go
to the features store's writer (which compresses them) on a thread of its own as soon as a batch is done, so the
next batch computes while the last one is reduced, copied to the host and written.
"""

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import torch
from transformers import PreTrainedModel

from fishersft.data.encoding import Encoded
from fishersft.features.scores import LossHead, per_example_means
from fishersft.features.store import FeatureStoreWriter
from fishersft.models.batching import length_sorted_batches, padded_tokens
from fishersft.models.forward import lengths, pre_logits, to_device

WRITES_IN_FLIGHT = 2
"""Batches handed to the writer's thread and not yet written: the pass waits beyond this (memory stays bounded)."""


@dataclass
class PassCost:
    """Tokens the model computed, and how many of them were padding."""

    computed: int = 0
    tokens: int = 0

    def add(self, computed: int, tokens: int) -> None:
        self.computed += computed
        self.tokens += tokens

    @property
    def padding(self) -> float:
        """Padded tokens over tokens computed."""
        return 1 - self.tokens / self.computed if self.computed else 0.0


Rows = tuple[list[int], tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]
"""A batch for the writer: example indices, their rows, and their rows' uncertainty (when the pass scores)."""


class BackgroundWrites:
    """`writer.write` on a thread of its own, in order. Leaving the block waits for every write; a write's error
    is raised in the caller (at its next `write` or on leaving); an error in the caller stops the writes."""

    def __init__(self, writer: FeatureStoreWriter) -> None:
        self.writer = writer
        self.queue: queue.Queue[Rows | None] = queue.Queue(WRITES_IN_FLIGHT)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="features-writer", daemon=True)

    def __enter__(self) -> "BackgroundWrites":
        self.thread.start()
        return self

    def write(
        self, indices: list[int], rows: tuple[torch.Tensor, ...], factors: tuple[torch.Tensor, ...] | None = None
    ) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((indices, rows, factors))

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after an error, drain without writing: the caller never blocks
                try:
                    with torch.inference_mode():
                        self.writer.write(*item)
                except BaseException as e:
                    self.error = e

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self.error = self.error or value  # stop writing: the store is about to be aborted
        self.queue.put(None)
        self.thread.join()
        if kind is None and self.error is not None:
            raise self.error


@torch.inference_mode()
def embed(
    model: PreTrainedModel,
    encoded: Sequence[Encoded],
    writer: FeatureStoreWriter,
    batch_tokens: int,
    on_batch: Callable[[int], None] | None = None,
    dtype: torch.dtype | None = None,
    first: int = 0,
    max_examples: int | None = None,
) -> PassCost:
    """Give `writer` the pre-logit vectors of every example's targets, `encoded[k]` being example `first + k`;
    `on_batch(examples done)`. Batches hold at most `batch_tokens` padded tokens (and `max_examples` examples);
    the forward pass runs under `autocast(dtype)`; the LM head, at the loss positions alone, gives each loss
    token's uncertainty and each example's mean loss. Returns what the pass computed."""
    head = LossHead(model)
    device = next(model.parameters()).device
    losses = torch.zeros(len(encoded), dtype=torch.float64, device=device)
    sizes = lengths(encoded)
    batches = length_sorted_batches(sizes, batch_tokens, max_examples)
    cost = PassCost(padded_tokens(sizes, batches), sum(sizes))
    done = 0
    with BackgroundWrites(writer) as writes:
        for batch in batches:
            vectors, labels = pre_logits(model, encoded, batch, dtype)
            counts = [len(encoded[i].targets) for i in batch]
            token_losses, factors = head.token_scores(vectors, labels)
            losses[to_device(np.asarray(batch, dtype=np.int64), device)] = per_example_means(token_losses, counts)
            writes.write([first + i for i in batch], vectors.split(counts), factors.split(counts))
            done += len(batch)
            if on_batch:
                on_batch(done)
    writer.score(range(first, first + len(encoded)), losses.cpu().numpy())
    return cost
