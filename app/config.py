"""Service settings, from environment variables (see README "Configuration")."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fishersft.models import DEFAULT_MODEL, default_model_dir, home


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://localhost:6379/0"
    data_dir: Path = field(default_factory=lambda: home() / "data")
    models: dict[str, str] = field(default_factory=dict)
    """Model registry: name -> local model directory. The built-in default model is always available."""
    default_model: str = DEFAULT_MODEL
    max_upload_bytes: int = 2 << 30
    api_keys: frozenset[str] = frozenset()
    queue: str = "fishersft"
    job_timeout_s: int = 24 * 3600
    alive_ttl_s: int = 10
    """A running job refreshes an alive key with this TTL; when it expires, its worker is taken for dead."""

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        defaults = cls()
        return cls(
            redis_url=env.get("REDIS_URL", defaults.redis_url),
            data_dir=Path(env.get("FISHERSFT_DATA_DIR", defaults.data_dir)),
            models=json.loads(env.get("FISHERSFT_MODELS", "{}")),
            default_model=env.get("FISHERSFT_DEFAULT_MODEL", defaults.default_model),
            max_upload_bytes=int(env.get("FISHERSFT_MAX_UPLOAD_BYTES", defaults.max_upload_bytes)),
            api_keys=frozenset(k for k in env.get("FISHERSFT_API_KEYS", "").split(",") if k),
            queue=env.get("FISHERSFT_QUEUE", defaults.queue),
            job_timeout_s=int(env.get("FISHERSFT_JOB_TIMEOUT_S", defaults.job_timeout_s)),
            alive_ttl_s=int(env.get("FISHERSFT_ALIVE_TTL_S", defaults.alive_ttl_s)),
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that give these settings to another process (a worker)."""
        return {
            "REDIS_URL": self.redis_url,
            "FISHERSFT_DATA_DIR": str(self.data_dir),
            "FISHERSFT_MODELS": json.dumps(self.models),
            "FISHERSFT_DEFAULT_MODEL": self.default_model,
            "FISHERSFT_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
            "FISHERSFT_API_KEYS": ",".join(sorted(self.api_keys)),
            "FISHERSFT_QUEUE": self.queue,
            "FISHERSFT_JOB_TIMEOUT_S": str(self.job_timeout_s),
            "FISHERSFT_ALIVE_TTL_S": str(self.alive_ttl_s),
        }

    def model_names(self) -> list[str]:
        return sorted({DEFAULT_MODEL, *self.models})

    def model_dir(self, name: str) -> Path:
        """The directory of a registered model; the built-in default is built on first use."""
        if name in self.models:
            return Path(self.models[name])
        if name == DEFAULT_MODEL:
            return default_model_dir()
        raise KeyError(name)
