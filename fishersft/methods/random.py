"""random: a seeded random subset, the yardstick every other method is judged against: uniform, or balanced by
group when the request names `group_by` (fishersft.selection.balanced)."""

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

    if inputs.groups is not None:
        from fishersft.selection.balanced import balanced_random_order

        return balanced_random_order(inputs.groups, costs, limit, candidates, seed, inputs.quotas)
    generator = torch.Generator().manual_seed(seed)
    return fitting(
        candidates[torch.randperm(len(candidates), generator=generator)].tolist(), costs, limit, inputs.quotas
    )


RANDOM = register_method(
    MethodSpec(
        name="random",
        doc="A seeded random subset (`seed`): the baseline; with `group_by`, balanced: each group's share of the "
        "budget follows its share of the pool (RDS+'s yardstick).",
        ranking=random_order,
        seeded=True,
        uses_groups=True,
    )
)
