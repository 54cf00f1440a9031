"""Service settings, from environment variables (see docs/service.md, "Configuration"), with pydantic-settings: a bad
value stops the process at start-up with a message naming the variable, never in the middle of a request."""

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fishersft.contract.compression import DEFAULT_SELECTION_MEMORY
from fishersft.data.dataset import ENCODE_CHUNK
from fishersft.errors import InputError
from fishersft.models.registry import BUILTIN_MODELS, DEFAULT_MODEL, ModelRegistry, home

DEFAULT_SHARD_EXAMPLES = 20 * ENCODE_CHUNK
DEFAULT_WEBHOOK_RETRY_S = (10.0, 30.0, 60.0)
"""A webhook that fails is tried again after 10, 30 and 60 s: 4 attempts over 100 s."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FISHERSFT_", frozen=True, populate_by_name=True)

    redis_url: str = Field(
        "redis://localhost:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="Redis for queue and job state.",
    )
    data_dir: Path = Field(default_factory=lambda: home() / "data", description="The artifact store.")
    models: Annotated[dict[str, Path], NoDecode] = Field(
        default_factory=dict,
        description="Model registry, JSON {name: local directory}, beside the built-in models.",
    )
    default_model: str = Field(DEFAULT_MODEL, description="Model for selections that name none.")
    max_upload_bytes: PositiveInt = Field(2 << 30, description="Upload size limit.")
    api_keys: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(), description="Comma-separated API keys; none: the API is open."
    )
    admin_api_keys: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(), description="Comma-separated API keys that see and manage every key's datasets and jobs."
    )
    metrics_token: str | None = Field(
        None,
        min_length=1,
        description="Bearer token GET /metrics requires; unset: /metrics is open, like /readyz (it holds no data).",
    )
    queue: str = Field("fishersft", min_length=1, description="RQ queue of selection jobs.")
    training_queue: str = Field(
        "fishersft-training", min_length=1, description="RQ queue of finetune and comparison jobs (GPU workers)."
    )
    job_timeout_s: PositiveInt = Field(24 * 3600, description="RQ job timeout.")
    alive_ttl_s: PositiveInt = Field(
        10, description="A running job refreshes an alive key with this TTL; when it expires, its worker is dead."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Worker log level.")
    max_length_limit: PositiveInt = Field(
        4096,
        description="Largest max_length a request may ask for (features and their cache grow with it); a model's "
        "own context caps it further.",
    )
    max_datasets: PositiveInt = Field(10_000, description="Datasets the store holds at most; then uploads get 507.")
    max_active_jobs: PositiveInt = Field(
        1_000, description="Queued or running jobs (all kinds) at most; then new jobs get 429 with Retry-After."
    )
    min_free_bytes: NonNegativeInt = Field(
        1 << 30, description="Uploads that would leave less free disk than this in the store get 507."
    )
    features_cache_bytes: PositiveInt = Field(
        100 << 30, description="Cached features beyond this size are evicted, least recently used first."
    )
    selection_memory_bytes: PositiveInt = Field(
        DEFAULT_SELECTION_MEMORY,
        description="Memory a selection's features may take; a request that leaves rank and dim out gets the most "
        "faithful compression that fits (see contract.compression.default_compression).",
    )

    shard_examples: PositiveInt = Field(
        DEFAULT_SHARD_EXAMPLES,
        description=f"A selection over a JSONL dataset of more examples than this is embedded by one job per this "
        f"many examples (a shard), so every free worker takes one. A multiple of {ENCODE_CHUNK:,} (the embedder's "
        "chunk), so shards batch examples as one worker does and the features are the same to the last bit.",
    )

    torch_threads: PositiveInt | None = Field(
        None,
        description="Threads torch's CPU kernels use in each worker; default: torch's own (the machine's cores). "
        "On a host running several CPU workers give each its share (cores / workers): two workers on 2 cores "
        "with both cores each embedded 2.2 times slower than one (docs/scale.md, Scale-out).",
    )

    webhook_secret: SecretStr | None = Field(
        None,
        description="Key of the HMAC-SHA256 signature of every webhook (docs/service.md, Webhooks); required with "
        "FISHERSFT_WEBHOOK_HOSTS.",
    )
    webhook_hosts: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(),
        description="Comma-separated host names a job's webhook_url may name (any port); none: webhooks are "
        "refused (422). Against SSRF: the service POSTs only to hosts named here.",
    )
    webhook_retry_s: Annotated[tuple[PositiveFloat, ...], NoDecode] = Field(
        DEFAULT_WEBHOOK_RETRY_S,
        min_length=1,
        description="Comma-separated seconds between a webhook's failed attempt and the next: one retry each, so "
        "the default makes 4 attempts over 100 s.",
    )

    @field_validator("shard_examples")
    @classmethod
    def _whole_chunks(cls, value: int) -> int:
        if value % ENCODE_CHUNK:
            raise ValueError(f"must be a multiple of {ENCODE_CHUNK:,} (the embedder's chunk), got {value:,}")
        return value

    @field_validator("api_keys", "admin_api_keys", "webhook_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return frozenset(k.strip() for k in value.split(",") if k.strip()) if isinstance(value, str) else value

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("webhook_hosts")
    @classmethod
    def _signed(cls, value: frozenset[str], info: ValidationInfo) -> frozenset[str]:
        if value and info.data.get("webhook_secret") is None:
            raise ValueError("webhooks are signed: set FISHERSFT_WEBHOOK_SECRET too (e.g. `openssl rand -hex 32`)")
        return frozenset(host.lower() for host in value)

    @field_validator("webhook_retry_s", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        return tuple(s.strip() for s in value.split(",")) if isinstance(value, str) else value

    @field_validator("models", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(
                f'not JSON ({e.msg} at column {e.colno}); expected {{"name": "/model/dir", ...}}'
            ) from None

    @field_validator("default_model")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        names = {*BUILTIN_MODELS, *info.data.get("models", {})}
        if value not in names:
            raise ValueError(f"{value!r} is not a model: one of {', '.join(sorted(names))}")
        return value

    @classmethod
    def from_env(cls) -> "Settings":
        """Settings from the environment; a bad value is an InputError naming the variable and the problem."""
        try:
            return cls()
        except ValidationError as e:
            details = [
                f"{cls.env_name(str(err['loc'][0])) if err['loc'] else 'settings'}: {err['msg']}" for err in e.errors()
            ]
            raise InputError("invalid configuration", details) from None

    @classmethod
    def env_name(cls, field: str) -> str:
        alias = cls.model_fields[field].validation_alias
        first = alias.choices[0] if isinstance(alias, AliasChoices) else None
        return first if isinstance(first, str) else f"FISHERSFT_{field.upper()}"

    def to_env(self) -> dict[str, str]:
        """The environment variables that give these settings to another process (a worker)."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "models":
                value = json.dumps({k: str(v) for k, v in value.items()})
            elif name in ("api_keys", "admin_api_keys", "webhook_hosts"):
                value = ",".join(sorted(value))
            elif name == "webhook_retry_s":
                value = ",".join(map(str, value))
            elif name == "webhook_secret":
                value = value.get_secret_value()
            env[self.env_name(name)] = str(value)
        return env

    @property
    def registry(self) -> ModelRegistry:
        """The models this service serves: the built-in ones and FISHERSFT_MODELS."""
        return ModelRegistry(self.models, self.max_length_limit)
