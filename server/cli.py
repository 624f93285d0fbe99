"""`netllm serve`: run the DASH server in the foreground until SIGINT or SIGTERM.

Once listening it prints exactly one line, `serving http://HOST:PORT`, and flushes it, so that a parent
process (a session runner, a Mininet host) can read the port chosen with `--port 0`. Also runnable as
`python -m server.cli --media-root DIR --port P --host 0.0.0.0 --request-log F --first-byte-delay-ms D`.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from netllm.cli import CommandError
from server.app import ServerConfig, ServerConfigError
from server.runner import run_server

Config = ServerConfig


async def _serve(cfg: ServerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_server(cfg) as server:
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        print(f"serving http://{host}:{server.port}", flush=True)
        await stop.wait()


def run(cfg: ServerConfig) -> int:
    try:
        asyncio.run(_serve(cfg))
    except ServerConfigError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:  # e.g. the port is taken, or the address is not local
        raise CommandError(f"cannot listen on {cfg.host}:{cfg.port}: {exc}") from None
    return 0


if __name__ == "__main__":
    from netllm.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
