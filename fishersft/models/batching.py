"""Batches cut by tokens: what a forward pass costs is its padded size (examples x longest), so batches are
filled up to a token budget rather than a count of examples. Pure functions over lengths."""

from collections.abc import Iterable, Sequence

MAX_PADDING = 0.1
"""A length-sorted batch is also cut before its padding would pass this share of its padded size: with a large
budget, one batch would otherwise span short and long examples (half of it padding on chatterbot English at
65,536 tokens)."""


def cut_by_tokens(
    order: Iterable[int],
    lengths: Sequence[int],
    batch_tokens: int,
    max_examples: int | None = None,
    max_padding: float = 1.0,
) -> list[list[int]]:
    """`order` cut, in order, into batches whose padded size (examples x the longest) stays within
    `batch_tokens`, of at most `max_examples` examples, padded at most `max_padding` of their size; an example
    longer than the budget is a batch alone."""
    batches: list[list[int]] = []
    batch: list[int] = []
    width = tokens = 0
    for i in order:
        wider = max(width, lengths[i])
        size = (len(batch) + 1) * wider
        if batch and (
            size > batch_tokens or len(batch) == max_examples or tokens + lengths[i] < (1 - max_padding) * size
        ):
            batches.append(batch)
            batch, wider, tokens = [], lengths[i], 0
        batch.append(i)
        width, tokens = wider, tokens + lengths[i]
    if batch:
        batches.append(batch)
    return batches


def length_sorted_batches(
    lengths: Sequence[int], batch_tokens: int, max_examples: int | None = None, max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Indices sorted by length (ties in index order), cut by `cut_by_tokens`: padding stays under
    `max_padding`."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return cut_by_tokens(order, lengths, batch_tokens, max_examples, max_padding)


def padded_tokens(lengths: Sequence[int], batches: Iterable[Sequence[int]]) -> int:
    """Tokens the batches compute, padding included."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
