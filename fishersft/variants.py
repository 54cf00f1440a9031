"""The names of the selection variants, shared by the selection math, the CLI and the HTTP schemas (which load
no torch)."""

from typing import Literal

Method = Literal["fisher", "random"]
Weighting = Literal["tokens", "examples", "mean"]
WEIGHTINGS: tuple[Weighting, ...] = ("tokens", "examples", "mean")
DEFAULT_WEIGHTING: dict[str, Weighting] = {"examples": "mean", "tokens": "tokens"}
"""The weighting a selection gets unless it names one, per budget kind, chosen by held-out loss after LoRA
fine-tuning (README, "What the objective buys on real data"): under a token budget the paper's `tokens` beat
seeded random subsets of the same loss tokens on chatterbot English and on English + HumanEval; under an
example budget every weighting lost to random, `mean` least (it does not buy length)."""


def default_weighting(budget_kind: str) -> Weighting:
    """`budget_kind`: "examples" or "tokens"."""
    return DEFAULT_WEIGHTING[budget_kind]


WEIGHTING_DOC = (
    "How an example's loss tokens add to Sigma. `tokens`: the paper's sum of x x^T over every loss token; "
    "`examples`: that sum divided by the example's loss tokens (its mean outer product), so that length alone "
    "buys nothing; `mean`: the outer product of the example's mean feature (one rank-1 term per example, as "
    "embedding-based reimplementations pool it). Default: `mean` under an example budget, `tokens` under a token "
    "budget (chosen by held-out loss after fine-tuning; see the README)."
)


def run_label(row: dict) -> str:
    """`fisher/tokens`, `random/1`: what a comparison run is called in tables and plots."""
    return f"fisher/{row['weighting']}" if row["method"] == "fisher" else f"random/{row['seed']}"
