"""The registry of selection methods: one `MethodSpec` each, registered by the method's own module.

Everything that varies by method is derived from the specs: the contract's `Method` type and its docs, the API's
and the CLI's checks and choices, the model passes the embedder runs, the inputs a ranking gets, the study's
advice, and the labels of comparison tables and plots. The registry is read by the contract, which imports
without torch: a spec holds plain data, and a ranking's tensor code is imported when it runs."""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from torch import Tensor

    from fishersft.selection.quotas import GroupLimits

TargetUse = Literal["refused", "accepted", "required"]
"""Whether a method selects for a target set: refuses one, takes one (it changes what it does), or needs one."""
Score = Literal["losses", "ifd"]
"""A per-example score a ranking orders by, named as the features store keeps it: the base model's mean loss per
loss token (recorded by the embedding pass) or the IFD (a pass of its own, run only for the methods that rank by
it)."""
SCORE_PASSES: dict[Score, str | None] = {"losses": None, "ifd": "difficulty"}
"""The model pass each score needs besides the embedding (None: the embedding pass records it)."""
BudgetKind = Literal["examples", "tokens"]


@dataclass(frozen=True)
class RankingInputs:
    """What a ranking orders examples by, beside their costs: each example's mean feature [N x d] (`points`), the
    target set's mean features [M x d] (`target`), a score per example [N] (`scores`), each example's group
    index [N] (`groups`: its value of the request's `group_by`, when it names one). Only what the method's spec
    asks for is computed. `quotas`: the request's group quotas, which every ranking keeps (the selector sets
    them)."""

    points: "Tensor | None" = None
    target: "Tensor | None" = None
    scores: "Tensor | None" = None
    groups: "Tensor | None" = None
    quotas: "GroupLimits | None" = None


class Ranking(Protocol):
    """The examples of `candidates` a method picks, in its order, whose `costs` sum to at most `limit`;
    `warm_start` examples are already chosen."""

    def __call__(
        self,
        inputs: RankingInputs,
        costs: "Tensor",
        limit: float,
        candidates: "Tensor",
        warm_start: Sequence[int],
        seed: int,
    ) -> list[int]: ...


Advice = Callable[[str, BudgetKind, int, int], list[str]]
"""Warnings from the selection study for a selection (weighting, budget kind, budget limit, the pool's loss
tokens): where the study found another method ahead in this regime."""


@dataclass(frozen=True)
class MethodSpec:
    """A selection method: its name, what it does and when to use it, what it needs, and how it picks."""

    name: str
    doc: str
    """One sentence: what it picks (API and CLI help)."""
    ranking: Ranking | None = None
    """Its order of the examples; None for the greedy objective on log det Sigma (fisher), which the selector runs
    with the request's `algorithm` and `weighting`."""
    target: TargetUse = "refused"
    score: Score | None = None
    uses_points: bool = False
    """Whether the ranking needs each example's mean feature (`RankingInputs.points`)."""
    uses_groups: bool = False
    """Whether the ranking takes each example's group (`RankingInputs.groups`) when the request names `group_by`."""
    partitions: bool = False
    """Whether GreeDi can partition it (a greedy with a submodular objective)."""
    seeded: bool = False
    """Whether its picks depend on `seed`: a comparison trains it once per seed."""
    advice: Advice | None = None

    @property
    def objective(self) -> bool:
        """Whether it is the greedy objective (its picks depend on the weighting) rather than a ranking."""
        return self.ranking is None

    @property
    def needs_model(self) -> bool:
        """Whether it needs the base model's pass: text datasets only, never a features file."""
        return self.score is not None

    def label(self, weighting: str | None = None, seed: int | None = None, balanced: bool = False) -> str:
        """What a run of it is called in tables and plots: `fisher/uncertainty`, `random/1`, `kcenter`; a run
        balanced by group (`uses_groups`): `random-balanced/1`."""
        parts = [f"{self.name}-balanced" if balanced else self.name]
        if self.objective and weighting is not None:
            parts.append(weighting)
        if self.seeded and seed is not None:
            parts.append(str(seed))
        return "/".join(parts)


_SPECS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make `spec` a selection method: a module of fishersft.methods calls this once, at import."""
    if spec.name in _SPECS:
        raise ValueError(f"selection method {spec.name!r} is registered already")
    if spec.partitions and not spec.objective:
        raise ValueError(f"{spec.name!r}: only the greedy objective can be partitioned")
    _SPECS[spec.name] = spec
    return spec


def method_spec(name: str) -> MethodSpec:
    """The spec of a registered method."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown selection method {name!r}: one of {', '.join(_SPECS)}") from None


def registered() -> tuple[MethodSpec, ...]:
    """Every registered method, in registration order."""
    return tuple(_SPECS.values())


def model_passes(methods: Iterable[str]) -> set[str]:
    """The model passes besides the embedding that a job running `methods` needs (e.g. `difficulty`)."""
    passes = {SCORE_PASSES[s] for s in (method_spec(m).score for m in methods) if s is not None}
    return {p for p in passes if p is not None}
