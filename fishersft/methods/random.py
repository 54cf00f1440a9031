"""random: a seeded uniform random subset, the yardstick every other method is judged against."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fishersft.methods.fitting import fitting
from fishersft.methods.registry import MethodSpec, RankingInputs, register_method

if TYPE_CHECKING:
    from torch import Tensor


def random_order(
    inputs: RankingInputs, costs: "Tensor", limit: float, candidates: "Tensor", warm_start: Sequence[int], seed: int
) -> list[int]:
    import torch  # the registry imports without torch (see fishersft.methods.registry)

    generator = torch.Generator().manual_seed(seed)
    return fitting(candidates[torch.randperm(len(candidates), generator=generator)].tolist(), costs, limit)


RANDOM = register_method(
    MethodSpec(
        name="random",
        doc="A seeded random subset (`seed`): the baseline.",
        ranking=random_order,
        seeded=True,
    )
)
