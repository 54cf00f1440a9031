"""Curation options any selection takes besides its method: group quotas and near-duplicate removal, and what the
result reports of them."""

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from fishersft.contract.base import ExampleId, RequestModel, Text

GroupName = Annotated[str, StringConstraints(max_length=1000)]
Picks = Annotated[int, Field(ge=0)]
MAX_QUOTA_GROUPS = 10_000
"""Groups a quota may name (the distinct values counted per label field at upload)."""


class Quotas(RequestModel):
    """At least `min[g]` and at most `max[g]` picks from each named group `g` of the rows' field `by`."""

    by: Text = Field(max_length=200, description="A string field of the rows (see the dataset's `labels`).")
    min: dict[GroupName, Picks] = Field(
        default_factory=dict,
        max_length=MAX_QUOTA_GROUPS,
        description="Examples to pick at least, per group; their sum may not pass the budget.",
    )
    max: dict[GroupName, Picks] = Field(
        default_factory=dict, max_length=MAX_QUOTA_GROUPS, description="Examples to pick at most, per group."
    )

    @field_validator("max")
    @classmethod
    def _above_min(cls, value: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        below = [g for g, n in value.items() if n < info.data.get("min", {}).get(g, 0)]
        if below:
            raise ValueError(f"group {below[0]!r}: max {value[below[0]]} is below its min")
        return value

    @model_validator(mode="after")
    def _some(self) -> "Quotas":
        if not self.min and not self.max:
            raise ValueError("name a group's `min` or `max`")
        return self


QUOTAS_DOC = (
    "Group quotas, in examples: `{by: FIELD, min: {group: n}, max: {group: n}}`, on every method. Fisher greedy "
    "runs under the partition-matroid constraint: a candidate whose group is at its max is skipped, and room is "
    "kept for every unmet min (a candidate of another group is taken only while the budget left exceeds what the "
    "unmet mins need); the methods that rank take their order, each example if its group allows. The warm start "
    "counts toward no quota. Refused (422 naming the group) when the pool cannot meet them; lazy and exact "
    "greedy only, no partitions. The result's `groups.counts` reports the picks per group."
)


class Dedup(RequestModel):
    threshold: float = Field(
        gt=0,
        le=1,
        description="Cosine similarity of normalised mean features at or above which two examples are "
        "near-duplicates (1: identical directions, up to float rounding of 1e-6).",
    )


DEDUP_DOC = (
    "Near-duplicate removal before the method runs: in pool order, an example whose normalised mean feature has "
    "cosine similarity at or above `threshold` with an earlier kept example is removed, and the first such kept "
    "example (the lowest pool index) is its survivor; so no two kept examples are near-duplicates. Exact, "
    "blockwise (no N x N matrix). No partitions. The result's `dedup.removed` lists `{id, survivor}`."
)


class RemovedDuplicate(BaseModel):
    id: ExampleId = Field(description="A removed example.")
    survivor: ExampleId = Field(description="The kept example it duplicates (the lowest pool index).")


class DedupSummary(BaseModel):
    threshold: float = Field(description="The request's threshold.")
    removed: list[RemovedDuplicate] = Field(description="Each removed example with its survivor, in pool order.")
