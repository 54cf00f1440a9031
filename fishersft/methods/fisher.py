"""fisher: FisherSFT, greedy on log det Sigma (the selector runs it: `algorithm`, `weighting` and a target
apply); with a target set, targeted (V-optimal) design."""

from fishersft.methods.registry import BudgetKind, MethodSpec, register_method
from fishersft.methods.study import REALISTIC_FISHER, SMALL_SHARE, STUDY


def advice(weighting: str, kind: BudgetKind, limit: int, pool_tokens: int) -> list[str]:
    """What the study found for fisher under an example budget and at realistic token budgets."""
    if kind == "examples":
        return [
            f"under an example budget fisher did not beat random subsets in {STUDY} (its subsets hold more tokens "
            "for the same count); a token budget (budget.tokens) compares methods at equal training cost"
        ]
    if limit < SMALL_SHARE * pool_tokens:
        return []
    found = REALISTIC_FISHER.get(weighting, f"not measured under weighting {weighting!r}")
    return [
        f"at {limit / max(pool_tokens, 1):.0%} of the pool's loss tokens (a realistic budget) fisher/{weighting} was "
        f"{found} in {STUDY}; method `loss` was ahead of it on single-domain data, and behind random on pooled "
        "languages and on a language shift: compare them on your data (POST /v1/comparisons with methods fisher, "
        "loss, random)"
    ]


FISHER = register_method(
    MethodSpec(
        name="fisher",
        doc="FisherSFT greedy on log det Sigma; with `target_dataset_id`, targeted (V-optimal) design instead: exact "
        "greedy on the target's predictive variance tr(A Sigma^-1), A the mean outer product of the target's feature "
        "rows, so the examples that most inform the target's features are picked.",
        target="accepted",
        partitions=True,
        advice=advice,
    )
)
