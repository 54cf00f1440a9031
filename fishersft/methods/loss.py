"""loss: the examples the base model finds hardest, by mean loss per loss token (recorded by the embedding
pass)."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fishersft.methods.fitting import fitting
from fishersft.methods.registry import MethodSpec, RankingInputs, register_method

if TYPE_CHECKING:
    from torch import Tensor


def highest_score(
    inputs: RankingInputs, costs: "Tensor", limit: float, candidates: "Tensor", warm_start: Sequence[int], seed: int
) -> list[int]:
    """Candidates by decreasing score (ties: lowest index), while they fit."""
    import torch  # the registry imports without torch (see fishersft.methods.registry)

    assert inputs.scores is not None, "a scored method's spec asks for its score"
    ranked = candidates[torch.argsort(inputs.scores[candidates].to(torch.float64), descending=True, stable=True)]
    return fitting(ranked.tolist(), costs, limit, inputs.quotas)


LOSS = register_method(
    MethodSpec(
        name="loss",
        doc="Highest mean loss per loss token under the base model.",
        ranking=highest_score,
        score="losses",
    )
)
