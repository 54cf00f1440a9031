"""A page of a list: what every list endpoint answers, and what the client reads."""

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """Every list the API answers (OpenAI's shape): resources newest first, a job's events oldest first."""

    object: Literal["list"] = Field("list", description="Always `list`: the body is a page of items.")
    data: list[T] = Field(description="The items, in the list's order.")
    next_after: str | None = Field(description="Pass as `after` to get the next page; null on the last page.")
