"""The embedded PostgreSQL of `dev` and the tests: a real server from the `pgserver` wheel. Never used by `serve`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "assetpay"


class EmbeddedPostgres:
    """A real PostgreSQL started from the `pgserver` wheel, its data kept under `data_dir`."""

    def __init__(self, data_dir: Path, *, database: str = EMBEDDED_DATABASE, keep_running: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.database = database
        self.keep_running = keep_running
        self._server: Any = None

    def start(self) -> str:
        """Start (or reuse) the server, make sure the database exists, and return its URL."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers; harmless here
            # Heavy, so imported only when the embedded database is really wanted.
            from pgserver import get_server  # type: ignore[attr-defined]

        self.data_dir.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL in %s", self.data_dir)
        self._server = get_server(self.data_dir, cleanup_mode=None if self.keep_running else "stop")
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}';")  # noqa: S608
        if "(1 row)" not in exists:
            self._server.psql(f'CREATE DATABASE "{self.database}";')
        url = make_url(self._server.get_uri(self.database))
        return url.render_as_string(hide_password=False)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
