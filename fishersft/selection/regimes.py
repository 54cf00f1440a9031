"""Where the selection study found each method ahead or behind random (README, "Which method wins where"), as
warnings for a selection made in a regime the study says another method won. The figures are the study's; the
regimes are coarse on purpose (small or realistic token budgets, example budgets), not tuned to one dataset."""

from fishersft.contract.selection import Budget, Method, Weighting

SMALL_SHARE = 0.05
"""Token budgets below this share of the pool's loss tokens are small (the study's 2%); at or above it,
realistic (its 10% and 30%)."""

STUDY = "the selection study (docs/results.md, 'Which method wins where')"

REALISTIC_FISHER: dict[Weighting, str] = {
    "tokens": "behind random on chatterbot English, ahead on HumanEval, behind at 30% of English + HumanEval pooled",
    "uncertainty": (
        "ahead of random on HumanEval and on English + HumanEval pooled, level with it on chatterbot English at 10% "
        "(ahead at 30%) and on a language shift at 10% (behind at 30%)"
    ),
}
"""What the study found for fisher at realistic token budgets, per weighting."""


def regime_warnings(method: Method, weighting: Weighting, budget: Budget, pool_tokens: int) -> list[str]:
    """What the study found for `method` (fisher: under `weighting`) at this budget, when it found another method
    ahead; `pool_tokens`: the loss tokens of the examples the selection could choose from."""
    if method == "fisher" and budget.examples is not None:
        return [
            f"under an example budget fisher did not beat random subsets in {STUDY} (its subsets hold more tokens "
            "for the same count); a token budget (budget.tokens) compares methods at equal training cost"
        ]
    if method == "fisher" and budget.tokens is not None and budget.tokens >= SMALL_SHARE * pool_tokens:
        share = budget.tokens / max(pool_tokens, 1)
        found = REALISTIC_FISHER.get(weighting, f"not measured under weighting {weighting!r}")
        return [
            f"at {share:.0%} of the pool's loss tokens (a realistic budget) fisher/{weighting} was {found} in "
            f"{STUDY}; method `loss` was ahead of it on single-domain data, and behind random on pooled languages "
            "and on a language shift: compare them on your data (POST /v1/comparisons with methods fisher, loss, "
            "random)"
        ]
    if method == "ifd":
        return [f"ifd beat random in 1 of 7 cells of {STUDY}; `loss` beat it in 6 of 7"]
    return []
