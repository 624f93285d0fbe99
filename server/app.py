"""The DASH HTTP server as an aiohttp application: `create_app(ServerConfig) -> web.Application`.

Routes:
- `/media/{path}`: files of the prepared video (MPD, init and media segments, video.json), streamed in
  64 KiB writes after an optional per-request first-byte delay (RTT emulation without netem); one
  request-log row for every request to /media, also those refused before a handler (404, 405, preflights);
  one `bytes` Range is honoured (206, or 416 when it selects nothing of the file), any other Range header
  (another unit, several ranges, bad syntax) is ignored as RFC 9110 allows (200, the whole file);
- `/player/{path}`: the player page (`client/static/` unless `player_root` says otherwise); `/` redirects to
  `/player/index.html` with the query string kept;
- `/dashjs/{name}`: the installed dash.js bundle (`netllm.paths.dashjs_file()` and its siblings);
- `/healthz`: JSON status.
Every response carries `Access-Control-Allow-Origin: *`; file routes refuse paths that leave their folder
(see `server.safe_paths`). Run it with `server.runner.run_server` / `BackgroundServer` or `netllm serve`.
"""

from __future__ import annotations

import asyncio
import math
import mimetypes
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from aiohttp import web

from netllm.config import arg
from netllm.paths import REPO_ROOT, dashjs_file, default_video_dir
from server.request_log import RequestLog, RequestRecord
from server.safe_paths import resolve_under

CHUNK_BYTES = 64 * 1024
CONTENT_TYPES = {
    ".mpd": "application/dash+xml", ".mp4": "video/mp4", ".m4s": "video/mp4", ".m4v": "video/mp4",
    ".json": "application/json", ".map": "application/json", ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".txt": "text/plain; charset=utf-8", ".svg": "image/svg+xml",
    ".png": "image/png", ".ico": "image/x-icon", ".csv": "text/csv; charset=utf-8",
}
CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Timing-Allow-Origin": "*",
                "Access-Control-Expose-Headers": "Content-Length, Content-Range"}


MAX_PORT = 65535
MAX_FIRST_BYTE_DELAY_MS = 10_000.0
"""Longer than any RTT worth emulating; beyond it every media request would only look hung."""


class ServerConfigError(ValueError):
    """A server configuration that cannot work (e.g. a media root that is not a folder)."""


def check_first_byte_delay_ms(delay_ms: float, error: type[Exception] = ValueError) -> None:
    """Refuse a delay that is negative, NaN, infinite or absurdly long (asyncio.sleep would take NaN as 0
    and inf as forever)."""
    if not (math.isfinite(delay_ms) and 0 <= delay_ms <= MAX_FIRST_BYTE_DELAY_MS):
        raise error(f"first_byte_delay_ms must be in 0..{MAX_FIRST_BYTE_DELAY_MS:g}, got {delay_ms}")


@dataclass
class ServerConfig:
    media_root: Path | None = arg(None, help="prepared video folder to serve under /media/; "
                                             "unset = the default video of `netllm prepare-video`")
    request_log: Path | None = arg(None, help="CSV file to append one row per /media/ request to")
    first_byte_delay_ms: float = arg(0.0, help="delay before each /media/ response starts (RTT emulation)")
    host: str = arg("127.0.0.1", help="address to listen on (0.0.0.0 = all interfaces)")
    port: int = arg(0, help="TCP port (0 = pick a free one; the chosen port is printed)")
    player_root: Path | None = arg(None, help="folder served under /player/; unset = client/static")
    notsent_lowat_bytes: int = arg(131072, help="TCP_NOTSENT_LOWAT of media responses: bounds the "
                                                "unsent bytes queued in the kernel so transfer times "
                                                "are real (0 = off)")


@dataclass
class ServerState:
    """Settings that may change while the server runs (e.g. `ServerHandle.set_first_byte_delay_ms`)."""
    media_root: Path
    player_root: Path
    first_byte_delay_ms: float
    notsent_lowat_bytes: int
    held_responses_ms: deque[float] = field(default_factory=deque)
    """One-off extra delays, each taken by the next /media/ request to arrive
    (`ServerHandle.hold_next_media_response_ms`)."""


CONFIG_KEY = web.AppKey("config", ServerConfig)
STATE_KEY = web.AppKey("state", ServerState)
LOG_KEY = web.AppKey("request_log", RequestLog)


def default_player_root() -> Path:
    return REPO_ROOT / "client" / "static"


def content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


# --- helpers -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ByteRange:
    """What a Range header asks of a file of known size (RFC 9110, section 14)."""
    span: tuple[int, int] | None
    """(first, last) byte, inclusive, to send with 206; None = send the whole file with 200."""
    satisfiable: bool = True
    """False: a valid single byte range that selects nothing of the file (answer 416)."""


WHOLE_FILE = ByteRange(None)
_BYTES_RANGE = re.compile(r"bytes[ \t]*=[ \t]*(\d*)-(\d*)[ \t]*", re.IGNORECASE)


def parse_range(header: str, size: int) -> ByteRange:
    """One `bytes=a-b` / `bytes=a-` / `bytes=-n` range of a `size`-byte file.

    RFC 9110 lets a server ignore a Range header it does not support, so anything but one well-formed bytes
    range (another unit, several ranges, bad syntax, last < first) is ignored: the whole file, status 200.
    Only a valid range that selects none of the file is unsatisfiable (416)."""
    match = _BYTES_RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return WHOLE_FILE
    first_text, last_text = match.groups()
    if first_text == "":  # a suffix: the last n bytes (all of them when the file is shorter)
        suffix_bytes = int(last_text)
        if suffix_bytes == 0:
            return ByteRange(None, satisfiable=False)
        return ByteRange((max(0, size - suffix_bytes), size - 1)) if size else WHOLE_FILE
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return WHOLE_FILE  # an invalid range-spec: ignored like any other bad syntax
    if first >= size:
        return ByteRange(None, satisfiable=False)
    return ByteRange((first, min(last, size - 1)))


def _limit_unsent(request: web.Request, lowat_bytes: int) -> None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if lowat_bytes > 0 and sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_NOTSENT_LOWAT", 25), lowat_bytes)
        except OSError:
            pass  # not Linux, or an old kernel: transfer times are then only less precise


def _not_found(reason: str, status: int = 404) -> web.Response:
    return web.Response(status=status, text=f"{status} {reason}\n")


@dataclass
class Transfer:
    """How far a response got; a client that goes away leaves `complete` False."""
    bytes_sent: int = 0
    complete: bool = False
    headers_at: float | None = None
    """time.monotonic() when the status line and headers were written."""
    status: int | None = None
    """The status sent with those headers (kept when the transfer is then cut short)."""
    first_byte_delay_ms: float = 0.0
    """The emulated delay applied before the response."""


TRANSFER_KEY = web.RequestKey("transfer", Transfer)


async def _stream_file(request: web.Request, path: Path, transfer: Transfer) -> web.StreamResponse:
    """Send `path` (honouring one byte range) in CHUNK_BYTES writes, so a slow link paces the transfer."""
    size = path.stat().st_size
    start, end, status = 0, size - 1, 200
    headers = {"Content-Type": content_type(path), "Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    wanted = parse_range(request.headers["Range"], size) if "Range" in request.headers else WHOLE_FILE
    if not wanted.satisfiable:
        transfer.complete = True
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    if wanted.span is not None:
        (start, end), status = wanted.span, 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start + 1
    try:
        await response.prepare(request)
        transfer.headers_at, transfer.status = time.monotonic(), status
        if request.method != "HEAD":
            await _write_body(response, path, start, end - start + 1, transfer)
        await response.write_eof()
        transfer.complete = True
    except ConnectionError:
        pass  # the client went away (e.g. dash.js abandoned the segment); the caller logs it as aborted
    return response


async def _write_body(response: web.StreamResponse, path: Path, start: int, length: int,
                      transfer: Transfer) -> None:
    # Blocking reads are fine here: segments are a few MB and sit in the page cache after the first read.
    with path.open("rb") as f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(CHUNK_BYTES, length))
            if not chunk:
                raise ConnectionError(f"{path} shrank while being sent")  # ends this response only
            await response.write(chunk)  # waits while the socket is full: the link sets the pace
            transfer.bytes_sent += len(chunk)
            length -= len(chunk)


# --- handlers ------------------------------------------------------------------------------------------

async def media_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    transfer = request[TRANSFER_KEY] = Transfer()
    transfer.first_byte_delay_ms = state.first_byte_delay_ms
    if state.held_responses_ms:
        try:
            transfer.first_byte_delay_ms += state.held_responses_ms.popleft()
        except IndexError:  # taken by a concurrent request since the check
            pass
    if transfer.first_byte_delay_ms > 0:
        await asyncio.sleep(transfer.first_byte_delay_ms / 1000)
    _limit_unsent(request, state.notsent_lowat_bytes)
    found = resolve_under(state.media_root, request.match_info["path"])
    if found.path is None:
        transfer.complete = True
        return _not_found(found.reason, found.status)
    return await _stream_file(request, found.path, transfer)


async def player_handler(request: web.Request) -> web.StreamResponse:
    relative = request.match_info["path"]
    if relative == "" or relative.endswith("/"):
        relative += "index.html"
    found = resolve_under(request.app[STATE_KEY].player_root, relative)
    if found.path is None:
        where = request.app[STATE_KEY].player_root
        return _not_found(f"{found.reason} (player files: {where})", found.status)
    return await _stream_file(request, found.path, Transfer())


async def dashjs_handler(request: web.Request) -> web.StreamResponse:
    bundle = dashjs_file()
    if not bundle.is_file():
        return _not_found(f"dash.js is not installed (expected {bundle}); run `make setup` (npm ci)")
    found = resolve_under(bundle.parent, request.match_info["name"])
    if found.path is None:
        return _not_found(found.reason, found.status)
    return await _stream_file(request, found.path, Transfer())


async def root_handler(request: web.Request) -> web.StreamResponse:
    query = request.rel_url.raw_query_string  # as sent: decoding would corrupt encoded values
    raise web.HTTPFound("/player/index.html" + (f"?{query}" if query else ""))


async def health_handler(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.json_response({
        "status": "ok", "media_root": str(state.media_root),
        "video": (state.media_root / "video.json").is_file(), "dashjs": dashjs_file().is_file(),
        "player": (state.player_root / "index.html").is_file(),
        "first_byte_delay_ms": state.first_byte_delay_ms})


def _is_media_path(path: str) -> bool:
    return path == "/media" or path.startswith("/media/")


@web.middleware
async def media_log_middleware(request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                               ) -> web.StreamResponse:
    """One request-log row per request to /media, whoever answers it: the media handler, the router (404 for
    `/media` itself, 405 for another method) or the preflight middleware. The outermost middleware, so the row
    is written even when the handler is cancelled at shutdown (status then as far as the response got)."""
    log = request.app.get(LOG_KEY)
    if log is None or not _is_media_path(request.path):
        return await handler(request)
    arrival_wall, arrival = time.time(), time.monotonic()
    status = 500  # no response at all (cancelled before one, or the handler failed)
    with log.request_in_flight():  # the log stays open until this row is written, even during shutdown
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            transfer = request.get(TRANSFER_KEY) or Transfer(complete=status != 500)
            if transfer.status is not None and not transfer.complete:
                status = transfer.status  # headers went out, the body was cut short (aborted=1 says so)
            log.write(RequestRecord(
                wall_time_s=arrival_wall, method=request.method, path=request.path, status=status,
                bytes_sent=transfer.bytes_sent,
                first_byte_s=(transfer.headers_at or time.monotonic()) - arrival,
                duration_s=time.monotonic() - arrival, first_byte_delay_ms=transfer.first_byte_delay_ms,
                remote=str(request.remote or ""), aborted=int(not transfer.complete)))


@web.middleware
async def preflight_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Answer CORS preflights for any path; as a middleware so unknown paths still get a plain 404."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS", "Access-Control-Allow-Headers": "*",
            "Access-Control-Max-Age": "600"})
    return await handler(request)


async def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in CORS_HEADERS.items():
        response.headers.setdefault(name, value)


# --- the application -----------------------------------------------------------------------------------

def _request_log_ctx(path: Path | None):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if path is not None:
            app[LOG_KEY] = RequestLog(path)
        yield
        if path is not None:
            app[LOG_KEY].close()

    return ctx


def create_app(cfg: ServerConfig) -> web.Application:
    """The server application for `cfg`; raises ServerConfigError when the media root is not a folder."""
    media_root = Path(cfg.media_root) if cfg.media_root is not None else default_video_dir()
    if not media_root.is_dir():
        raise ServerConfigError(f"media root {media_root} is not a folder; prepare a video first "
                                "(netllm prepare-video --out DIR) and pass --media-root DIR")
    check_first_byte_delay_ms(cfg.first_byte_delay_ms, ServerConfigError)
    if not isinstance(cfg.port, int) or not 0 <= cfg.port <= MAX_PORT:
        raise ServerConfigError(f"port must be in 0..{MAX_PORT} (0 = pick a free one), got {cfg.port}")
    app = web.Application(middlewares=[media_log_middleware, preflight_middleware])
    app[CONFIG_KEY] = cfg
    app[STATE_KEY] = ServerState(
        media_root=media_root.resolve(),
        player_root=(Path(cfg.player_root) if cfg.player_root else default_player_root()).resolve(),
        first_byte_delay_ms=float(cfg.first_byte_delay_ms), notsent_lowat_bytes=int(cfg.notsent_lowat_bytes))
    app.cleanup_ctx.append(_request_log_ctx(Path(cfg.request_log) if cfg.request_log else None))
    app.on_response_prepare.append(_add_cors)
    app.router.add_get("/", root_handler)
    app.router.add_get("/healthz", health_handler)
    app.router.add_get("/media/{path:.*}", media_handler)
    app.router.add_get("/player/{path:.*}", player_handler)
    app.router.add_get("/player", root_handler)
    app.router.add_get("/dashjs/{name:.*}", dashjs_handler)
    return app
