"""A selection's budget: a count of examples or loss tokens, or a fraction of the pool's; and the weighting each
budget kind gets by default."""

from typing import Literal

from pydantic import ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from fishersft.contract.base import POSITIVE, REQUEST, RequestModel, one_of

Weighting = Literal["tokens", "examples", "mean", "uncertainty"]
WEIGHTINGS: tuple[Weighting, ...] = ("tokens", "examples", "mean", "uncertainty")
MODEL_WEIGHTINGS: tuple[Weighting, ...] = ("uncertainty",)
"""Weightings that need the model's softmax at each loss token: text datasets only."""
DEFAULT_WEIGHTING: dict[str, Weighting] = {"examples": "mean", "tokens": "uncertainty"}
"""The weighting a selection gets unless it names one, per budget kind, chosen by held-out loss after LoRA
fine-tuning. Under a token budget, `uncertainty`: in the selection study (docs/results.md, "Which method wins where") it
was ahead of the paper's `tokens` in most cells and turned fisher's loss to random on chatterbot English at 30%
into a win; features without a model (an uploaded file) have no uncertainty and get `tokens`. Under an example
budget every weighting lost to random, `mean` least (it does not buy length; "What the objective buys")."""
FALLBACK_WEIGHTING: Weighting = "tokens"
"""The token budget's default for features without a model."""


FRACTION = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
BUDGET_FIELDS = ("examples", "tokens", "examples_fraction", "tokens_fraction")


class Budget(RequestModel):
    """At most `examples` examples or `tokens` loss tokens, or a fraction of the pool's examples or loss tokens:
    exactly one of the four. A fraction is resolved to a count against the pool (`resolved`)."""

    model_config = ConfigDict(
        **REQUEST,
        frozen=True,
        json_schema_extra=one_of(*({f: POSITIVE if f in ("examples", "tokens") else FRACTION} for f in BUDGET_FIELDS)),
    )
    examples: int | None = Field(None, gt=0, description="Select at most this many examples.")
    tokens: int | None = Field(None, gt=0, description="Select at most this many loss tokens (cost-aware greedy).")
    examples_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Select at most this fraction of the examples selection may choose from (the dataset less the "
        "held-out set and the warm start), rounded, at least 1; the result's `resolved_budget` says how many.",
    )
    tokens_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Select at most this fraction of the loss tokens of the examples selection may choose from, "
        "rounded, at least 1 (a token budget); the result's `resolved_budget` says how many.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "Budget":
        if sum(getattr(self, f) is not None for f in BUDGET_FIELDS) != 1:
            raise ValueError("give exactly one of " + ", ".join(f"`{f}`" for f in BUDGET_FIELDS))
        return self

    @model_serializer(mode="wrap")
    def _given(self, handler: SerializerFunctionWrapHandler) -> dict[str, int | float]:
        """`{"examples": K}`, `{"tokens": T}`, `{"examples_fraction": f}`...: the fields not given are left out."""
        return {k: v for k, v in handler(self).items() if v is not None}

    @property
    def kind(self) -> Literal["examples", "tokens"]:
        return "examples" if self.examples is not None or self.examples_fraction is not None else "tokens"

    @property
    def fraction(self) -> float | None:
        return self.examples_fraction if self.examples_fraction is not None else self.tokens_fraction

    @property
    def limit(self) -> int:
        """The count: examples or loss tokens (a fraction must be `resolved` against the pool first)."""
        if self.fraction is not None:
            raise ValueError(f"budget {self.model_dump()}: a fraction, resolve it against the pool first")
        return self.examples if self.examples is not None else (self.tokens or 0)

    def resolved(self, pool_examples: int, pool_tokens: int) -> "Budget":
        """This budget as a count: itself, or its fraction of the pool's examples or loss tokens (rounded, at
        least 1)."""
        if self.fraction is None:
            return self
        count = max(1, round(self.fraction * (pool_examples if self.kind == "examples" else pool_tokens)))
        return Budget(examples=count) if self.kind == "examples" else Budget(tokens=count)

    def default_weighting(self, from_model: bool) -> Weighting:
        """This kind's default for features the model made (`from_model`) or not (an uploaded file)."""
        weighting = DEFAULT_WEIGHTING[self.kind]
        return weighting if from_model or weighting not in MODEL_WEIGHTINGS else FALLBACK_WEIGHTING
