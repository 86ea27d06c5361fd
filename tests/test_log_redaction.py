"""Users' tokens never reach the logs: uvicorn logs every WebSocket handshake's URL, `?token=` included."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from assetpay_merchant.observability import RedactQuerySecrets
from tests.processes import serve_process
from tests.support import user_token


def test_the_filter_blanks_tokens_in_arguments_and_messages() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", "/v1/ws?since=3&token=eyJ.abc.def"),
        None,
    )
    assert RedactQuerySecrets().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "WebSocket /v1/ws?since=3&token=[redacted]" [accepted]'
    inline = logging.LogRecord("x", logging.INFO, __file__, 1, "GET /feed?apiKey=ap_live_1&x=1", None, None)
    RedactQuerySecrets().filter(inline)
    assert inline.getMessage() == "GET /feed?apiKey=[redacted]&x=1"


def _logs(folder: Path) -> str:
    return "".join(path.read_text() for path in folder.glob("serve-*.log"))


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_served_backend_logs_websocket_handshakes_without_the_token(
    database_url: str, tmp_path: Path, workers: int
) -> None:
    token = user_token("log-reader")
    with serve_process(database_url, tmp_path, workers=workers, LOG_LEVEL="INFO") as address:
        for _ in range(workers * 2):  # reach every worker, most likely
            async with connect(f"ws://{address}/v1/ws?token={token}") as socket:
                await socket.recv()  # ready, or the close for an unknown user: either way the handshake is logged
    logs = _logs(tmp_path)
    assert "WebSocket /v1/ws?token=[redacted]" in logs
    assert token not in logs
    assert token.split(".")[1] not in logs
