"""The bodies only the HTTP API answers: the model registry and health. Every job's request and result, a
dataset's record and a page of a list are the contract's models (fishersft.contract)."""

from typing import Literal

from pydantic import BaseModel, Field


class Model(BaseModel):
    name: str = Field(description="Registry name, to use as `model`.")
    default: bool = Field(description="Whether selections without `model` use it.")
    dim: int = Field(description="Width of its pre-logit features (hidden size).")


class Health(BaseModel):
    status: Literal["ok", "unavailable"] = Field(description="ok when the check passed.")
    redis: bool | None = Field(None, description="Redis answered a ping (readyz).")
    workers: int | None = Field(None, description="Workers registered with Redis (readyz).")
