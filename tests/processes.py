"""Real `assetpay-merchant serve` processes for tests that need more than one process, or the command itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import ADMIN_KEY, JWT_SECRET, WEBHOOK_SECRET

CLI = Path(sys.executable).with_name("assetpay-merchant")
SECRETS = {
    "AUTH_JWT_SECRET": JWT_SECRET,
    "ADMIN_API_KEY": ADMIN_KEY,
    "ASSETPAY_API_KEY": "ap_test_key",
    "ASSETPAY_API_SECRET": WEBHOOK_SECRET.decode(),
}


def clean_env(**values: str) -> dict[str, str]:
    """The machine's environment without any of our settings, plus `values`."""
    ours = ("DATABASE_URL", "ASSETPAY_", "AUTH_JWT_", "ADMIN_API_KEY", "ENVIRONMENT", "DATA_DIR", "RECONCILE_")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)} | values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_ready(process: subprocess.Popen[bytes], url: str, log_path: Path, *, timeout: float = 60.0) -> None:
    """Block until `url` answers 200; fails with the log's tail if the process dies or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"{log_path.name}: the process exited\n{_tail(log_path)}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{log_path.name}: not ready in {timeout:g} s\n{_tail(log_path)}"
        time.sleep(0.1)


@contextmanager
def running(
    command: list[str], *, env: dict[str, str], log_path: Path, ready_url: str, timeout: float = 60.0
) -> Iterator[None]:
    """`command` as a child process logging to `log_path`, once `ready_url` answers 200; stopped on the way out
    (SIGTERM, then SIGKILL after 30 s)."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=log_path.parent, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        try:
            wait_until_ready(process, ready_url, log_path, timeout=timeout)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            finally:
                process.kill()


def _tail(log_path: Path, size: int = 3000) -> str:
    try:
        return log_path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


@contextmanager
def serve_process(database_url: str, workdir: Path, *, workers: int = 1, **env: str) -> Iterator[str]:
    """`assetpay-merchant serve` on the database with real (test) secrets, until it answers /readyz; yields
    `host:port`, and stops it on the way out."""
    port = free_port()
    with running(
        [str(CLI), "serve", "--port", str(port), "--workers", str(workers)],
        env=clean_env(DATABASE_URL=database_url, LOG_LEVEL="WARNING", **SECRETS) | env,
        log_path=workdir / f"serve-{port}.log",
        ready_url=f"http://127.0.0.1:{port}/readyz",
    ):
        yield f"127.0.0.1:{port}"


class ServeProcess:
    """One `assetpay-merchant serve` on a port of its own that a test may SIGKILL, SIGTERM and start again on the
    same port (every run logs to the same file, each run headed by a line of its own).

        server = ServeProcess(database_url, tmp_path, RECONCILE_INTERVAL_SECONDS="0")
        with server:
            server.start(); server.wait_ready()
            server.kill(); server.start()           # crash, restart, same URL
    """

    def __init__(self, database_url: str, workdir: Path, *, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.log_path = workdir / f"serve-{self.port}.log"
        self.environment = clean_env(DATABASE_URL=database_url, LOG_LEVEL="WARNING", **SECRETS) | env
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Spawn the process (without waiting for it to listen: see `wait_ready`)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.runs += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- run {self.runs} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(  # noqa: S603
                [str(CLI), "serve", "--port", str(self.port), "--workers", "1"],
                env=self.environment,
                cwd=self.log_path.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until /readyz answers 200; fails with the log's tail if the process dies or the deadline passes."""
        assert self.process is not None
        wait_until_ready(self.process, f"{self.base_url}/readyz", self.log_path, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: the process ends at once, mid-request, without any clean-up of its own."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def terminate(self) -> None:
        """SIGTERM: ask for a graceful shutdown (returns at once; `wait` for the exit)."""
        assert self.process is not None
        self.process.terminate()

    def wait(self, timeout: float) -> int:
        """The exit code, once the process has ended (subprocess.TimeoutExpired after `timeout` seconds)."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Terminate whatever still runs (killed if it does not end within 30 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def log_tail(self, size: int = 3000) -> str:
        return _tail(self.log_path, size)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
