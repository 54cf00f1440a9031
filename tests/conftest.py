import json
from pathlib import Path

import pytest

from fishersft.tiny_model import build_tiny_model

SAMPLE = Path(__file__).parents[1] / "fishersft" / "data" / "sample.jsonl"


def sample_texts() -> list[str]:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    return [r["prompt"] + " " + r["response"] for r in rows]


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
    from fishersft.redis_server import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis"), persist=False) as server:
        yield server
