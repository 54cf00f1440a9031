"""similarity: the examples closest to a target set by cosine similarity of mean features, as RDS+ does
(fishersft.selection.similarity)."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fishersft.methods.registry import MethodSpec, RankingInputs, register_method

if TYPE_CHECKING:
    from torch import Tensor


def similarity_ranking(
    inputs: RankingInputs, costs: "Tensor", limit: float, candidates: "Tensor", warm_start: Sequence[int], seed: int
) -> list[int]:
    from fishersft.selection.similarity import similarity_order  # tensor code: imported when it runs

    assert inputs.points is not None and inputs.target is not None, "similarity's spec asks for points and a target"
    return similarity_order(inputs.points, inputs.target, costs, limit, candidates, quotas=inputs.quotas).order


SIMILARITY = register_method(
    MethodSpec(
        name="similarity",
        doc="Closest to the target dataset's examples by cosine similarity of mean features (RDS+; needs "
        "`target_dataset_id`).",
        ranking=similarity_ranking,
        target="required",
        uses_points=True,
    )
)
