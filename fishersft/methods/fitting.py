"""What every ranking shares: taking examples in its order while they fit the budget."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def fitting(order: Sequence[int], costs: "Tensor", limit: float) -> list[int]:
    """The examples of `order`, in order, that still fit what is left of the budget when their turn comes."""
    cost, left, taken = costs.tolist(), limit, []
    for i in order:
        if cost[i] <= left:
            taken.append(i)
            left -= cost[i]
    return taken
