"""The one error shape every API error answers (shared CONVENTIONS), read by the client as the API writes it."""

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    field: str | None = Field(None, description="The request field, e.g. `body.budget.examples`.")
    line: int | None = Field(None, description="The dataset line (1-based), for upload errors.")
    row: int | None = Field(None, description="The Parquet row (1-based), for errors in a `.parquet` upload.")
    message: str = Field(description="What is wrong there.")


class ErrorInfo(BaseModel):
    code: str = Field(description="Machine-readable reason, snake_case.")
    message: str = Field(description="What went wrong, for people.")
    details: list[ErrorDetail] = Field(description="Per field or line, when the error has parts.")


class ErrorBody(BaseModel):
    error: ErrorInfo = Field(description="Every error answers this shape.")
