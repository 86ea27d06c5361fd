"""A real PgBouncer in transaction mode in front of the test server, started on a free port for the session.

The binary is Debian's `pgbouncer` package (`.ci/run` installs it when it runs as root); without it these tests
skip. PgBouncer refuses to run as root, so as root it runs as an unprivileged user (the embedded server's owner,
else `postgres`, else `nobody`), as tests/faults/pgcluster.py does for PostgreSQL. Its server pool is small on
purpose: many client connections then take turns on a few server sessions, which is what breaks named prepared
statements.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

SERVER_POOL_SIZE = 5
"""Server sessions PgBouncer keeps per database and user: far fewer than the app's client connections."""
UNPRIVILEGED_USERS = ("postgres", "nobody")
START_SECONDS = 15


def find_pgbouncer() -> str | None:
    """The pgbouncer binary (Debian puts it in /usr/sbin, which is not on every user's PATH)."""
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None
    )


def pgbouncer_version(binary: str) -> tuple[int, ...]:
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout  # noqa: S603
    found = re.search(r"PgBouncer (\d+)\.(\d+)", output)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_host(server_url: str) -> str:
    """The server's host, or the directory of its unix socket (the embedded server's URL has `?host=/dir`)."""
    server = make_url(server_url)
    return server.host or str(server.query.get("host") or "127.0.0.1")


def _run_as(server_url: str) -> pwd.struct_passwd | None:
    """Who PgBouncer runs as: ourselves, unless we are root; then the owner of the server's socket directory (the
    embedded server's: only its owner may enter it), else an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    host = _server_host(server_url)
    if host.startswith("/") and os.stat(host).st_uid != 0:
        return pwd.getpwuid(os.stat(host).st_uid)
    for name in UNPRIVILEGED_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip(f"running as root and none of the users {UNPRIVILEGED_USERS} exists to run PgBouncer as")


@dataclass
class PgBouncer:
    """A running PgBouncer: `url(direct)` is the same database reached through it."""

    port: int
    root: Path
    process: subprocess.Popen[bytes]

    def url(self, direct_url: str) -> str:
        through = make_url(direct_url).difference_update_query(["host"]).set(host="127.0.0.1", port=self.port)
        return through.render_as_string(hide_password=False)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.root / "pgbouncer.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _ini(server_url: str, port: int, root: Path, version: tuple[int, ...]) -> str:
    server = make_url(server_url)
    user = server.username or "postgres"
    target = f"host={_server_host(server_url)} port={server.port or 5432} user={user}"
    if server.password:
        target += f" password={server.password}"
    settings: dict[str, Any] = {
        "listen_addr": "127.0.0.1",
        "listen_port": port,
        "unix_socket_dir": root,
        "auth_type": "trust",  # the user must still be listed in auth_file
        "auth_file": root / "users.txt",
        "pool_mode": "transaction",
        "default_pool_size": SERVER_POOL_SIZE,
        "min_pool_size": 0,
        "reserve_pool_size": 0,
        "max_client_conn": 1000,
        "server_round_robin": 0,  # the most recently used server session first (PgBouncer's default)
        "ignore_startup_parameters": "extra_float_digits",
        "logfile": "",  # stderr, which goes to pgbouncer.log
    }
    if version >= (1, 21):
        # Newer PgBouncers can track named prepared statements themselves; these tests are about doing without.
        settings["max_prepared_statements"] = 0
    lines = ["[databases]", f"* = {target}", "", "[pgbouncer]"]
    lines += [f"{name} = {value}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def _wait_until_listening(bouncer: PgBouncer) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if bouncer.process.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", bouncer.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not start on port {bouncer.port}:\n{bouncer.log_tail()}")


def _stop(bouncer: PgBouncer) -> None:
    if bouncer.process.poll() is None:
        bouncer.process.send_signal(signal.SIGTERM)  # immediate shutdown
        try:
            bouncer.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            bouncer.process.kill()
            bouncer.process.wait(timeout=10)


@pytest.fixture(scope="session")
def pgbouncer(database_url: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the session's test server (every database on it)."""
    binary = find_pgbouncer()
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run does it as root)")
    user = _run_as(database_url)
    root = Path(tempfile.mkdtemp(prefix="assetpay-pgbouncer-"))
    port = free_port()
    (root / "pgbouncer.ini").write_text(_ini(database_url, port, root, pgbouncer_version(binary)))
    (root / "users.txt").write_text(f'"{make_url(database_url).username or "postgres"}" ""\n')
    as_user: dict[str, Any] = {}
    if user is not None:
        for path in (root, root / "pgbouncer.ini", root / "users.txt"):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    with (root / "pgbouncer.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 (our binary, our arguments)
            [binary, str(root / "pgbouncer.ini")],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            **as_user,
        )
    bouncer = PgBouncer(port=port, root=root, process=process)
    try:
        _wait_until_listening(bouncer)
        yield bouncer
    finally:
        _stop(bouncer)
        shutil.rmtree(root, ignore_errors=True)
