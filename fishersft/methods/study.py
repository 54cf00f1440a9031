"""What the selection study (docs/results.md, "Which method wins where") found, as the methods' advice reads it.
The regimes are coarse on purpose (small or realistic token budgets, example budgets), not tuned to one
dataset."""

STUDY = "the selection study (docs/results.md, 'Which method wins where')"

SMALL_SHARE = 0.05
"""Token budgets below this share of the pool's loss tokens are small (the study's 2%); at or above it,
realistic (its 10% and 30%)."""

REALISTIC_FISHER: dict[str, str] = {
    "tokens": "behind random on chatterbot English, ahead on HumanEval, behind at 30% of English + HumanEval pooled",
    "uncertainty": (
        "ahead of random on HumanEval and on English + HumanEval pooled (of balanced random too), level with uniform "
        "random and behind balanced random on chatterbot English at 10% (ahead at 30%), level on a language shift "
        "at 10% (behind at 30%)"
    ),
}
"""What the study found for fisher at realistic token budgets, per weighting."""
