"""The embedded default (`fishersft serve`, `fishersft demo`) and the client commands, as a user runs them."""

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from fishersft.client import Client, ClientError
from fishersft.models.registry import DEFAULT_MODEL, builtin_model_dir
from fishersft.service.redis_server import free_port
from tests.conftest import SAMPLE

pytestmark = pytest.mark.service  # `fishersft serve` and the demo's embedded service

ROW = (
    r"(?P<budget>\d+ (examples|loss tokens)) +(?P<method>fisher|random) +(?P<weighting>tokens|mean|uncertainty)? +"
    r"(?P<examples>\d+) +[\d,]+ +\d+/21 +[\d.]+$"
)


def fishersft(*args: str, env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fishersft.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        **kwargs,
    )


QUIET_S = 600
"""A command that prints nothing (no progress line either) for this long is taken for stuck."""


def fishersft_with_progress(*args: str, env: dict) -> subprocess.CompletedProcess:
    """Run a long command (the demo) and wait as long as it makes progress: it is stopped only after QUIET_S
    seconds without a line on stderr, however long it takes in all (shared CI machines are slow)."""
    command = [sys.executable, "-m", "fishersft.cli", *map(str, args)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    stdout: list[str] = []
    out = threading.Thread(target=lambda: stdout.extend(process.stdout), daemon=True)
    out.start()

    def read_stderr() -> None:
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read_stderr, daemon=True).start()
    stderr: list[str] = []
    while (line := _next_line(lines, process, stderr)) is not None:
        stderr.append(line)
    process.wait()
    out.join()
    return subprocess.CompletedProcess(command, process.returncode, "".join(stdout), "".join(stderr))


def _next_line(lines: queue.Queue, process: subprocess.Popen, seen: list[str]) -> str | None:
    try:
        return lines.get(timeout=QUIET_S)
    except queue.Empty:
        process.kill()
        raise AssertionError(f"no progress for {QUIET_S} s; its last lines:\n{''.join(seen[-20:])}") from None


def isolated_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "FISHERSFT_"))}
    return {**env, "FISHERSFT_HOME": str(tmp_path / "home"), "FISHERSFT_DATA_DIR": str(tmp_path / "data")}


def start_serve(env: dict) -> tuple[subprocess.Popen, str]:
    """`fishersft serve` on a free port, its stderr piped (text); returns the process and its URL."""
    port = free_port()
    command = [sys.executable, "-m", "fishersft.cli", "serve", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return server, f"http://127.0.0.1:{port}"


@pytest.mark.slow  # the demo
def test_demo_runs_end_to_end_on_real_data_with_the_default_model(tmp_path):
    env = isolated_env(tmp_path)
    (tmp_path / "home" / "models").mkdir(parents=True)  # the converted model, not a second 20 s conversion
    (tmp_path / "home" / "models" / DEFAULT_MODEL).symlink_to(builtin_model_dir(DEFAULT_MODEL))
    done = fishersft_with_progress("demo", "--budget", 12, env=env)
    assert "progress: embedding" in done.stderr and "progress: selecting" in done.stderr
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "chatterbot-corpus English: 898 conversations in 21 categories" in out
    assert f"model {DEFAULT_MODEL} (d=576)" in out
    rows = [re.match(ROW, line) for line in out.splitlines()]
    rows = [(m["budget"], m["method"], m["weighting"], int(m["examples"])) for m in rows if m]
    tokens = rows[3][0]
    assert rows[:3] == [
        ("12 examples", "fisher", "mean", 12),  # the default under an example budget
        ("12 examples", "fisher", "tokens", 12),  # the paper's
        ("12 examples", "random", None, 12),
    ]
    assert [r[:3] for r in rows[3:]] == [(tokens, "fisher", "uncertainty"), (tokens, "random", None)]  # the default
    assert tokens.endswith("loss tokens")
    assert "warning: the selected examples hold" in out  # the paper's 12 examples are the long ones


def test_serve_and_the_client_commands(tmp_path):
    env = {**isolated_env(tmp_path), "FISHERSFT_DEFAULT_MODEL": "tiny-llama"}
    server, url = start_serve(env)
    try:
        try:
            Client(url).wait_ready(timeout=600, alive=lambda: server.poll() is None)
        except ClientError:
            raise AssertionError(server.stderr.read()) from None
        remote = fishersft("select", SAMPLE, "--server", url, "--budget", 5, "--wait", "--max-length", 64, env=env)
        assert remote.returncode == 0, remote.stderr
        local = fishersft("select", SAMPLE, "--model", "tiny-llama", "--budget", 5, "--max-length", 64, env=env)
        assert json.loads(remote.stdout)["selected"] == json.loads(local.stdout)["selected"]
        assert json.loads(remote.stdout)["model"] == json.loads(local.stdout)["model"] == "tiny-llama"
        listed = json.loads(fishersft("datasets", "list", "--server", url, env=env).stdout)
        assert [d["n_examples"] for d in listed] == [200]
        job = json.loads(fishersft("select", listed[0]["id"], "--server", url, "--budget", 3, env=env).stdout)
        assert job["status"] in ("queued", "running", "succeeded")
        got = fishersft("jobs", "get", job["id"], "--server", url, env=env)
        assert json.loads(got.stdout)["id"] == job["id"]
        missing = fishersft("jobs", "get", "sel_nope", "--server", url, env=env)
        assert missing.returncode == 2 and "no selection 'sel_nope' (selection_not_found, HTTP 404)" in missing.stderr
        quick = ["--server", url, "--wait", "--max-length", 64, "--max-steps", 2, "--target-modules", "q_proj,v_proj"]
        tuned = fishersft("finetune", SAMPLE, "--budget", 6, *quick, "--out-dir", tmp_path / "ft", env=env)
        assert tuned.returncode == 0, tuned.stderr
        assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["steps"] == 2
        assert (tmp_path / "ft" / "adapter.tar.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip
        compared = fishersft(
            "compare", SAMPLE, "--budget", 4, "--random-seeds", 1, *quick, "--out-dir", tmp_path / "cmp", env=env
        )
        assert compared.returncode == 0, compared.stderr
        runs = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["runs"]
        assert [r["balanced_by"] for r in runs if r["method"] == "random"] == [None, "category"]
        assert len(runs) == 4
        assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
        banner = next(line for line in server.stderr if line.startswith("fishersft at"))
        redis_port = int(banner.split("Redis redis://127.0.0.1:")[1].split("/")[0])
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    with socket.socket() as s:  # the private Redis went away with the service
        assert s.connect_ex(("127.0.0.1", redis_port)) != 0


def children(pid: int) -> dict[int, str]:
    """Child processes of `pid` and their command lines, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_serve_restarts_a_killed_worker_and_stops_everything_on_sigterm(tmp_path):
    env = {**isolated_env(tmp_path), "FISHERSFT_DEFAULT_MODEL": "tiny-llama"}
    server, url = start_serve(env)
    client = Client(url)
    try:
        client.wait_ready(timeout=600, alive=lambda: server.poll() is None)
        (first,) = [p for p, cmd in children(server.pid).items() if "-m workers" in cmd]
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 600
        while True:  # another worker is started and registers
            workers = [p for p, cmd in children(server.pid).items() if "-m workers" in cmd and p != first]
            if workers and httpx.get(f"{url}/readyz").status_code == 200:
                break
            assert time.monotonic() < deadline and server.poll() is None, "no worker was started again"
            time.sleep(0.2)
        spawned = children(server.pid)
        assert any("redis-server" in cmd for cmd in spawned.values())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    assert "starting another" in server.stderr.read()
    for pid in spawned:  # the private Redis and the new worker went away with the service
        assert not Path(f"/proc/{pid}").exists() or "(Z)" in Path(f"/proc/{pid}/stat").read_text()


def running(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_killed_serve_takes_its_redis_and_workers_with_it(tmp_path):
    """SIGKILL runs no cleanup in `fishersft serve`: its children end anyway (they asked for SIGTERM at its death)."""
    env = {**isolated_env(tmp_path), "FISHERSFT_DEFAULT_MODEL": "tiny-llama"}
    server, _ = start_serve(env)
    try:
        assert server.stderr is not None
        next(line for line in server.stderr if line.startswith("fishersft at"))  # up: Redis and a worker started
        children = [int(p) for p in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]
        assert any(b"redis-server" in c for c in commands) and any(b"workers" in c for c in commands), commands
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 600
    while any(running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if running(pid)]
