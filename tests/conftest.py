import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from fishersft.models.tiny import build_tiny_model
from fishersft.service.settings import Settings
from tests.service import Service

SAMPLE = Path(__file__).parents[1] / "fishersft" / "data" / "sample.jsonl"


def sample_texts() -> list[str]:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    return [r["prompt"] + " " + r["response"] for r in rows]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `service` every test that starts Redis (and so the API or workers on it): whatever fixture it goes
    through, so a new service test cannot land in `make test-fast` unmarked."""
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.service)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("llama"), sample_texts(), arch="llama")


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("gpt2"), sample_texts(), arch="gpt2")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server, without persistence: what must survive Redis lives in the artifact store."""
    from fishersft.service.redis_server import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis"), persist=False) as server:
        yield server


def service_settings(tmp_path: Path, redis_server, llama_dir: Path, **overrides) -> Settings:
    """A test service's settings on an emptied Redis: the tiny model as the default."""
    Redis.from_url(redis_server.url).flushall()
    defaults = {
        "redis_url": redis_server.url,
        "data_dir": tmp_path / "data",
        "models": {"tiny": str(llama_dir)},
        "default_model": "tiny",
        "alive_ttl_s": 10,  # a worker starved of CPU on a busy machine must not read as lost
        "max_upload_bytes": 8 << 20,
    }
    return Settings(**(defaults | overrides))


@pytest.fixture
def service(tmp_path, redis_server, llama_dir):
    settings = service_settings(tmp_path, redis_server, llama_dir)
    with TestClient(create_app(settings)) as client:  # the app's lifespan runs: its job monitor too
        svc = Service(settings, client)
        yield svc
        svc.stop_workers()
