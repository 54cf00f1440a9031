"""What every request model shares: strict JSON types, client strings, example ids, "exactly one of"."""

from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

REQUEST = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True)
"""Request bodies take JSON as it is: no "10" or true for a number, no Infinity or NaN, no unknown field."""

NULL = {"type": "null"}
TEXT_SCHEMA = {"type": "string", "maxLength": 1000}
POSITIVE = {"type": "integer", "exclusiveMinimum": 0}
MAX_ID = 2**53


def no_surrogates(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"contains a lone UTF-16 surrogate at character {e.start}: not valid Unicode text") from None
    return value


def integral(value: Any) -> Any:
    """JSON Schema counts 10.0 as an integer: take it as 10 (strings and booleans stay refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**64 else value


class RequestModel(BaseModel):
    """A request body (see REQUEST). Integer fields take a JSON integer or, as JSON Schema counts them, a number
    with no fraction (10.0); never "10" or true."""

    model_config = REQUEST

    @field_validator("*", mode="before")
    @classmethod
    def _integral_numbers(cls, value: Any) -> Any:
        return integral(value)


Text = Annotated[str, StringConstraints(max_length=1000), AfterValidator(no_surrogates)]
"""A string a client sends: valid Unicode, at most 1,000 characters."""

ExampleId = str | int
"""An example's id: its `id` field, else its line number (JSONL) or position (features files)."""


def _example_id(value: Any) -> ExampleId:
    value = integral(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_ID:
        return value
    if isinstance(value, str) and len(value) <= 1000:
        return no_surrogates(value)
    raise ValueError("an id is a string of at most 1,000 characters or an integer within 2^53 (larger: as a string)")


RequestExampleId = Annotated[
    ExampleId,
    PlainValidator(_example_id),
    WithJsonSchema(
        {"anyOf": [TEXT_SCHEMA, {"type": "integer", "minimum": -MAX_ID, "maximum": MAX_ID}]}, mode="validation"
    ),
]
"""An example id as a client sends it."""

Model = TypeVar("Model", bound=BaseModel)


def one_of(*branches: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """JSON schema for "exactly one of these fields is given": each branch maps the fields that must then be
    present to their full schema (constraints included, so generators need not combine schemas), and fields
    that must then be absent or null to {"type": "null"}."""

    def branch(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
        required = [f for f, schema in fields.items() if schema != NULL]
        return {"required": required, "properties": fields}

    return {"oneOf": [branch(b) for b in branches]}


def exactly_one(model: Model, first: str, second: str) -> Model:
    """A validator's check: one of two optional fields is given, not both, not neither."""
    if (getattr(model, first) is None) == (getattr(model, second) is None):
        raise ValueError(f"give exactly one of `{first}` and `{second}`")
    return model
