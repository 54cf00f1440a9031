"""A dataset's record: what an upload stored, as the API answers it and the workers read it."""

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, Field

MAX_LABEL_VALUES = 10_000
"""Distinct values counted per label field at upload; beyond that a field is reported as having this many."""
TextFormat = Literal["jsonl", "jsonl.gz", "parquet"]
"""Examples, in the file formats an upload may take (stored as JSONL: see fishersft.data.formats)."""
FeaturesFormat = Literal["npz", "safetensors"]
DatasetFormat = TextFormat | FeaturesFormat


class DatasetRecord(BaseModel):
    id: str = Field(description="Dataset id, derived from the content hash: the same file always gets the same id.")
    name: str | None = Field(description="Name given at upload, else the file name (the caller's own upload).")
    format: DatasetFormat = Field(
        description="The uploaded file's format. jsonl, jsonl.gz, parquet: examples (stored as JSONL); "
        "npz/safetensors: features."
    )
    n_examples: int = Field(description="Number of examples.")
    n_loss_tokens: int | None = Field(
        description="Loss tokens, known for features files; for JSONL it depends on the model's tokenizer: null."
    )
    dim: int | None = Field(None, description="Features files: the width of their rows; JSONL: null (the model's).")
    sha256: str = Field(description="SHA-256 of the uploaded bytes.")
    bytes: int = Field(description="Size of the upload in bytes.")
    labels: dict[str, int] = Field(
        default_factory=dict,
        description="JSONL: the string fields the rows carry besides their text (`category`, `source`, ...), with "
        f"their distinct values (counted up to {MAX_LABEL_VALUES:,}); what `group_by` and `stratify_by` can name.",
    )
    created_at: datetime = Field(description="When it was first uploaded (UTC; by the caller's key).")

    @property
    def is_text(self) -> bool:
        """Examples (embedded by a model; stored as JSONL whatever the upload's format), not a features file."""
        return self.format in get_args(TextFormat)


class DatasetClaim(BaseModel):
    """One API key's upload of a dataset: what that key sees as the dataset's name and time. Keys that upload the
    same bytes share the dataset, never each other's names or times."""

    name: str | None
    created_at: datetime
