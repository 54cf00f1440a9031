"""The whole service on one machine, with no setup: a private Redis (unless REDIS_URL is set), workers in
subprocesses and the API, all stopped together, on SIGINT or SIGTERM alike. A worker that dies is started
again. Used by `fishersft serve` and `fishersft demo`."""

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

import uvicorn

from app.main import create_app
from fishersft.service.children import start_child
from fishersft.service.redis_server import RedisServer
from fishersft.service.settings import Settings

ROOT = Path(__file__).parents[2]
RESTART_BACKOFF_S = 5.0
"""A slot whose worker died is refilled at most this often (a worker that cannot start does not spin)."""


class EmbeddedService:
    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
        self.settings, self.host, self.port, self.n_workers = settings, host, port, workers
        self.workers: list[subprocess.Popen] = []
        self.stack = ExitStack()
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "EmbeddedService":
        try:
            if "REDIS_URL" not in os.environ:
                redis = self.stack.enter_context(RedisServer(self.settings.data_dir / "redis"))
                self.settings = self.settings.model_copy(update={"redis_url": redis.url})
            self.settings.registry.model_dir(self.settings.default_model)  # prepared once, before workers race for it
            self.workers = [self._start_worker() for _ in range(self.n_workers)]
            self.stack.callback(self._stop_workers)
            supervisor = threading.Thread(target=self._supervise, daemon=True)
            supervisor.start()
            self.stack.callback(supervisor.join)
            self.stack.callback(self.stopping.set)
        except BaseException:
            self.stack.close()
            raise
        return self

    def server(self) -> uvicorn.Server:
        app = create_app(self.settings)
        return uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="warning"))

    def serve_in_thread(self) -> None:
        """Start the API in a background thread (the demo); it stops with the service."""
        server = self.server()
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the API could not start on {self.url}")
            time.sleep(0.05)

        def stop() -> None:
            server.should_exit = True
            thread.join(10)

        self.stack.callback(stop)

    def _start_worker(self) -> subprocess.Popen:
        env = {**os.environ, **self.settings.to_env()}
        return start_child([sys.executable, "-m", "workers"], env=env, cwd=ROOT)

    def _supervise(self) -> None:
        """Start a worker again when one dies (killed, out of memory) while the service runs."""
        restarted = [0.0] * len(self.workers)
        while not self.stopping.wait(0.5):
            for k, worker in enumerate(self.workers):
                code = worker.poll()
                if code is None or time.monotonic() - restarted[k] < RESTART_BACKOFF_S or self.stopping.is_set():
                    continue
                print(f"fishersft: worker {worker.pid} exited ({code}); starting another", file=sys.stderr)
                self.workers[k], restarted[k] = self._start_worker(), time.monotonic()

    def _stop_workers(self) -> None:
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stack.close()


def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit, as SIGINT raises KeyboardInterrupt, so that the service unwinds (Redis and
    the workers stopped) whichever one stops it. uvicorn re-raises the signal that stopped it once it has shut
    down; SIGTERM's default action would end the process on the spot, orphaning them."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
