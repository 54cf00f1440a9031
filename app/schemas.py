"""The bodies only the HTTP API answers: pages of a list, the model registry and health. Every job's request
and result, and a dataset's record, are the contract's models (fishersft.contract)."""

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """Every list the API answers (OpenAI's shape): resources newest first, a job's events oldest first."""

    object: Literal["list"] = Field("list", description="Always `list`: the body is a page of items.")
    data: list[T] = Field(description="The items, in the list's order.")
    next_after: str | None = Field(description="Pass as `after` to get the next page; null on the last page.")


class Model(BaseModel):
    name: str = Field(description="Registry name, to use as `model`.")
    default: bool = Field(description="Whether selections without `model` use it.")
    dim: int = Field(description="Width of its pre-logit features (hidden size).")


class Health(BaseModel):
    status: Literal["ok", "unavailable"] = Field(description="ok when the check passed.")
    redis: bool | None = Field(None, description="Redis answered a ping (readyz).")
    workers: int | None = Field(None, description="Workers registered with Redis (readyz).")
