"""ifd: instruction-following difficulty (Cherry LLM), the response's loss after its prompt over its loss
alone; its scores come from a model pass of their own, run only for this method."""

from fishersft.methods.loss import highest_score
from fishersft.methods.registry import BudgetKind, MethodSpec, register_method
from fishersft.methods.study import STUDY


def advice(weighting: str, kind: BudgetKind, limit: int, pool_tokens: int) -> list[str]:
    return [f"ifd beat random in 1 of 7 cells of {STUDY}; `loss` beat it in 6 of 7"]


IFD = register_method(
    MethodSpec(
        name="ifd",
        doc="Highest instruction-following difficulty, the response's loss after its prompt over its loss alone "
        "(Cherry LLM).",
        ranking=highest_score,
        score="ifd",
        advice=advice,
    )
)
