"""Batches cut by tokens: what a forward pass costs is its padded size (examples x longest), so batches are
filled up to a token budget rather than a count of examples. Pure functions over lengths."""

from collections.abc import Iterable, Sequence


def cut_by_tokens(
    order: Iterable[int], lengths: Sequence[int], batch_tokens: int, max_examples: int | None = None
) -> list[list[int]]:
    """`order` cut, in order, into batches whose padded size (examples x the longest) stays within
    `batch_tokens`, and of at most `max_examples` examples; an example longer than the budget is a batch alone."""
    batches: list[list[int]] = []
    batch: list[int] = []
    width = 0
    for i in order:
        wider = max(width, lengths[i])
        if batch and ((len(batch) + 1) * wider > batch_tokens or len(batch) == max_examples):
            batches.append(batch)
            batch, wider = [], lengths[i]
        batch.append(i)
        width = wider
    if batch:
        batches.append(batch)
    return batches


def length_sorted_batches(
    lengths: Sequence[int], batch_tokens: int, max_examples: int | None = None
) -> list[list[int]]:
    """Indices sorted by length (ties in index order), cut by `cut_by_tokens`: padding stays small."""
    return cut_by_tokens(sorted(range(len(lengths)), key=lengths.__getitem__), lengths, batch_tokens, max_examples)


def padded_tokens(lengths: Sequence[int], batches: Iterable[Sequence[int]]) -> int:
    """Tokens the batches compute, padding included."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
