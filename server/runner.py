"""Run the DASH server from Python: inside an event loop, or in a background thread.

    async with run_server(ServerConfig(media_root=video_dir)) as server:
        mpd_url = server.media_url()              # http://127.0.0.1:PORT/media/manifest.mpd

    with BackgroundServer(ServerConfig(media_root=video_dir, request_log=log_csv)) as server:
        page = server.player_url("controller=http://127.0.0.1:9000")   # for code without an event loop

Both bind the socket themselves before serving, so `port=0` yields a free port with no race, and both
stop within `SHUTDOWN_TIMEOUT_S` even while a player is still downloading.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import threading
from dataclasses import dataclass
from typing import AsyncIterator

from aiohttp import web

from server.app import STATE_KEY, ServerConfig, check_first_byte_delay_ms, create_app

SHUTDOWN_TIMEOUT_S = 2.0
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _url_host(host: str) -> str:
    host = _WILDCARDS.get(host, host)
    return f"[{host}]" if ":" in host else host


@dataclass
class ServerHandle:
    """A running server. `url` is connectable: a wildcard bind address is replaced by loopback."""
    host: str
    """The address it listens on, as configured."""
    port: int
    """The port it actually listens on (also when the config said 0)."""
    app: web.Application

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    def media_url(self, name: str = "manifest.mpd") -> str:
        """URL of a file of the served video, by default its MPD."""
        return f"{self.url}/media/{name}"

    def player_url(self, query: str = "") -> str:
        """URL of the player page, with an optional query string (without the `?`)."""
        return f"{self.url}/player/index.html" + (f"?{query}" if query else "")

    def set_first_byte_delay_ms(self, delay_ms: float) -> None:
        """Change the emulated per-request delay for requests that arrive from now on."""
        check_first_byte_delay_ms(delay_ms)
        self.app[STATE_KEY].first_byte_delay_ms = float(delay_ms)

    def hold_next_media_response_ms(self, delay_ms: float) -> None:
        """Delay only the next /media/ request to arrive by `delay_ms` more (a one-off outage). Unlike a delay
        switched on and off, it cannot also catch the request that follows while the caller is still
        reacting to the first."""
        if not (math.isfinite(delay_ms) and delay_ms >= 0):  # an outage may be long, never NaN or endless
            raise ValueError(f"delay must be finite and >= 0, got {delay_ms}")
        self.app[STATE_KEY].held_responses_ms.append(float(delay_ms))


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 = a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def run_server(cfg: ServerConfig) -> AsyncIterator[ServerHandle]:
    """Serve `cfg` in the running event loop until the block exits."""
    app = create_app(cfg)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        sock = bind_socket(cfg.host, cfg.port)
        site = web.SockSite(runner, sock)
        await site.start()
        yield ServerHandle(host=cfg.host, port=sock.getsockname()[1], app=app)
    finally:
        await runner.cleanup()


class BackgroundServer:
    """The server on its own event loop in a daemon thread: `start()` -> ServerHandle, `stop()`.

    Also a context manager (`with BackgroundServer(cfg) as handle:`). Start-up errors (a busy port, a missing
    media root) are raised by `start()` in the calling thread.
    """

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.handle: ServerHandle | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 10.0) -> ServerHandle:
        if self._thread is not None:
            raise RuntimeError("BackgroundServer already started")
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="dash-server",
                                        daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise TimeoutError(f"DASH server did not start within {timeout_s} s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        assert self.handle is not None
        return self.handle

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with run_server(self.cfg) as handle:
                self.handle = handle
                self._started.set()
                await self._stop.wait()
        except BaseException as exc:  # handed to start(); nothing else would see it
            self._error = exc
        finally:
            self._started.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"DASH server thread did not stop within {timeout_s} s")
        self._thread = None

    def __enter__(self) -> ServerHandle:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
