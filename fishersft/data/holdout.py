"""Held-out splits: examples set aside before selection and training, never selected nor trained on."""

import random
from collections import defaultdict
from collections.abc import Sequence


def holdout(groups: Sequence[str | None], fraction: float, seed: int = 0) -> list[int]:
    """Indices of a held-out set, stratified: in every group, round(fraction x its size) of its members, drawn
    with a seeded generator. `groups[i]` is example i's group (e.g. its category; None: one group for all)."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    rng = random.Random(seed)
    members: dict[str | None, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    held: list[int] = []
    for group in sorted(members, key=lambda g: (g is not None, g or "")):
        held += rng.sample(members[group], round(fraction * len(members[group])))
    return sorted(held)
