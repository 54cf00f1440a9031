"""kcenter: greedy k-center (farthest first) on each example's normalised mean feature, the coverage baseline
(fishersft.selection.kcenter)."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fishersft.methods.registry import MethodSpec, RankingInputs, register_method

if TYPE_CHECKING:
    from torch import Tensor


def kcenter_order(
    inputs: RankingInputs, costs: "Tensor", limit: float, candidates: "Tensor", warm_start: Sequence[int], seed: int
) -> list[int]:
    from fishersft.selection.kcenter import kcenter_greedy  # tensor code: imported when it runs

    assert inputs.points is not None, "kcenter's spec asks for points"
    return kcenter_greedy(inputs.points, costs, limit, candidates, warm_start, quotas=inputs.quotas).order


KCENTER = register_method(
    MethodSpec(
        name="kcenter",
        doc="Greedy k-center (farthest first) on each example's normalised mean feature: the coverage baseline.",
        ranking=kcenter_order,
        uses_points=True,
    )
)
