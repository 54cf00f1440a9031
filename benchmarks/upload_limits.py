"""What a hostile .jsonl.gz (and .jsonl) upload costs the API: seconds of work per MB uploaded, up to the answer.

    python benchmarks/upload_limits.py [--mb 1]

Uploads, through the real app (TestClient, a private Redis, the default 2 GiB upload limit), files of about
`--mb` MB built to cost the most work per byte: blank lines, 1 MiB lines of one letter, blank lines between
incompressible ones, the smallest valid lines the line limit lets through (ending in a bad line, so that all are
read before the answer), and, for comparison, plain .jsonl files of newlines and of the smallest valid lines
(ending in a bad line). Prints status, seconds, and seconds per
MB uploaded for each.
"""

import argparse
import gzip
import io
import json
import random
import string
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from fishersft.data.formats import GZ_BYTES_PER_LINE
from fishersft.service.redis_server import RedisServer
from fishersft.service.settings import Settings


def files(mb: float) -> dict[str, bytes]:
    """Uploads of about `mb` MB, by name (the suffix says the format)."""
    size = int(mb * 1e6)
    rng = random.Random(0)

    def letters(k: int) -> str:
        return "".join(rng.choices(string.ascii_letters, k=k))

    def gz_of(make_block, compressed: int) -> bytes:
        """Blocks from `make_block()` until the gzip holds `compressed` bytes."""
        blocks, data = [], b""
        while len(data) < compressed:
            blocks += [make_block() for _ in range(max(1, len(blocks)))]
            data = gzip.compress(b"".join(blocks), 6)
        return data

    # as many valid lines as the line limit allows: short random ids make each line cost about 4 gzip bytes
    dense = gz_of(lambda: b"".join(json.dumps({"text": letters(3)}).encode() + b"\n" for _ in range(1000)), size)

    def gz_repeat(block: bytes, compressed: int) -> bytes:
        """`block` repeated until the gzip holds about `compressed` bytes (a block of 1 MiB of one byte compresses
        to about 1 KB), without holding the inflated bytes in memory."""
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6) as f:
            while out.tell() < compressed:
                f.write(block)
        return out.getvalue()

    mib = 1 << 20
    return {
        "newlines.jsonl.gz": gz_repeat(b"\n" * mib, size),
        "one_letter_lines.jsonl.gz": gz_repeat(b'{"text": "' + b"a" * mib + b'"}\n', size),
        "padded.jsonl.gz": gz_of(lambda: json.dumps({"text": letters(200)}).encode() + b"\n" * 400, size),
        "dense_then_bad.jsonl.gz": gzip.compress(gzip.decompress(dense) + b"not json\n", 6),
        "newlines.jsonl": b"\n" * size,
        "tiny_then_bad.jsonl": b"".join(b'{"text": "%d"}\n' % k for k in range(size // 16)) + b"not json\n",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis", persist=False) as redis:
        settings = Settings(redis_url=redis.url, data_dir=Path(tmp) / "data")
        with TestClient(create_app(settings)) as client:
            print(f"line limit: one per {GZ_BYTES_PER_LINE} bytes of a .jsonl.gz")
            for name, data in files(args.mb).items():
                started = time.perf_counter()
                response = client.post("/v1/datasets", files={"file": (name, data)})
                seconds = time.perf_counter() - started
                error = response.json().get("error", {}).get("message", "")[:90]
                mb = len(data) / 1e6
                status = response.status_code
                print(f"{name:24} {mb:6.2f} MB  {status}  {seconds:6.2f} s  {seconds / mb:6.2f} s/MB  {error}")


if __name__ == "__main__":
    main()
