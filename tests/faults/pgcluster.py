"""A private, throw-away PostgreSQL cluster that a fault test can stop, start and restart at will.

The binaries come from the `pgserver` wheel (else a system install under /usr/lib/postgresql). PostgreSQL refuses
to run as root, so when the tests run as root the cluster runs as the unprivileged system user `pgserver`, created
if missing: exactly what the `pgserver` package itself does (see `pgserver.postgres_server.PostgresServer`).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

ShutdownMode = Literal["smart", "fast", "immediate"]

SYSTEM_USER = "pgserver"  # the user pgserver runs its servers as when started by root
SUPERUSER = "postgres"
DATABASE = "postgres"
WAIT_SECONDS = 30  # every pg_ctl call waits for the server, at most this long


def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: pgserver's first, else the newest system install."""
    spec = importlib.util.find_spec("pgserver")  # located, not imported: importing it starts nothing but is slow
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (bundled / "pg_ctl").is_file():
            return bundled

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    installed = [path for path in Path("/usr/lib/postgresql").glob("*/bin") if (path / "pg_ctl").is_file()]
    return max(installed, key=version) if installed else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _system_user() -> pwd.struct_passwd | None:
    """Who the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run([useradd, "-s", "/bin/bash", SYSTEM_USER], check=True, capture_output=True)  # noqa: S603
        return pwd.getpwnam(SYSTEM_USER)


class PgCluster:
    """One cluster in its own temporary directory: data, unix socket and log, on 127.0.0.1 and a free port.

    Trust authentication, superuser `postgres`. Every method blocks until pg_ctl is done (run them in a thread
    from async code). `cleanup()` stops the server however it can and deletes the directory.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.user = _system_user()
        self.root = Path(tempfile.mkdtemp(prefix="assetpay-fault-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        as_user: dict[str, Any] = {}
        if self.user is not None:
            as_user = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        result = subprocess.run(  # noqa: S603 (our own binaries, our own arguments)
            [str(self.bin_dir / program), *args],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=WAIT_SECONDS + 10,
            check=False,
            **as_user,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{result.stdout}\n--- log ---\n{self.log_tail()}")
        return result

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(WAIT_SECONDS), *args)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-sync")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",  # the app's pool may open 150
            "fsync": "off",  # the OS survives every fault here: only the server process dies
            "shared_buffers": "32MB",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: ShutdownMode = "fast") -> None:
        self._pg_ctl("-m", mode, "stop")

    def restart(self, mode: ShutdownMode = "fast") -> None:
        """Stop (`fast`: disconnect clients, clean shutdown; `immediate`: kill, crash recovery on start), start,
        and return once the server accepts connections again."""
        self._pg_ctl("-m", mode, "restart")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _kill_postmaster(self) -> None:
        """SIGKILL our postmaster when pg_ctl could not stop it (its children notice and exit)."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            ours = str(self.data) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return  # gone already
        if ours:  # the pid file may be stale and its pid reused: only ever kill our own server
            os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        try:
            if self.postmaster_pid() is not None:
                self.stop("immediate")
        except (RuntimeError, subprocess.SubprocessError):
            self._kill_postmaster()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
