"""`assetpay-merchant serve` under cProfile, counting CPU time only, for `bench/webhooks.py --profile cprofile`.

    python bench/profiled_serve.py OUTPUT.prof serve --host 127.0.0.1 --port 8000 --workers 1

The profiler starts on SIGUSR1 and stops (and writes OUTPUT.prof, pstats format) on SIGUSR2, so that only the
measured window is profiled, not start-up or warm-up. The clock is `time.process_time`: time spent waiting for
PostgreSQL or for a CPU is not counted. cProfile slows pure-Python code more than C code (asyncpg's protocol,
json, hmac), so shares are a little biased towards Python layers; sampling (`--profile py-spy`) cross-checks that.
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from typing import Any

from assetpay_merchant.cli import main


def run(output: str, argv: list[str]) -> int:
    profiler = cProfile.Profile(time.process_time)

    def start(signum: int, frame: Any) -> None:
        profiler.enable()

    def stop(signum: int, frame: Any) -> None:
        profiler.disable()
        profiler.dump_stats(output)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return main(argv)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1], sys.argv[2:]))
