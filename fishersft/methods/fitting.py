"""What every ranking shares: taking examples in its order while they fit the budget."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from fishersft.selection.quotas import GroupLimits


def fitting(order: Sequence[int], costs: "Tensor", limit: float, quotas: "GroupLimits | None" = None) -> list[int]:
    """The examples of `order`, in order, that still fit what is left of the budget when their turn comes (and,
    with `quotas`, that their group's quota allows: fishersft.selection.quotas)."""
    if quotas is not None:
        from fishersft.selection.quotas import quota_fitting  # tensor code: imported when it runs

        return quota_fitting(order, costs, limit, quotas)
    cost, left, taken = costs.tolist(), limit, []
    for i in order:
        if cost[i] <= left:
            taken.append(i)
            left -= cost[i]
    return taken
