"""The decision service: an aiohttp application that answers the player's (and other clients') decisions.

`create_app(cfg)` builds the application from task plug-ins. A task plug-in is a module with a
`register(app: web.Application) -> None` function that adds its routes (under `/v1/<task>/`), its state
(`web.AppKey`s) and its start-up/clean-up (`app.cleanup_ctx`), and may add a health callable to
`app[HEALTH_PROVIDERS]`. Each entry of `cfg.tasks` is a name in `TASK_MODULES` or a dotted module path;
ABR (`/v1/abr/decide`) is `controller.abr_service`. Viewport prediction and job scheduling add their modules
to `TASK_MODULES` (and to `DEFAULT_TASKS` when they should run by default), or are named by path
(`--tasks abr,controller.vp_service`).

What every task gets from here:
- `read_json_body(request)`: content type, size and JSON checks, raising `RequestError`;
- `RequestError(status, message, field)`: turned into `{"error": ..., "field": ...}` by the middleware;
- `run_blocking(app, fn, *args)`: one shared single-thread executor for CPU-heavy work (model inference),
  so the event loop keeps answering `/healthz` meanwhile;
- `app[DECISION_LOG]`: the shared decision log (memory + optional JSONL file);
- CORS on every response and OPTIONS preflight answered (the player page lives on another origin);
- any exception a handler raises becomes a JSON 500 and is logged; the service stays up.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from controller.decision_log import DecisionLog
from netllm.config import arg

log = logging.getLogger("controller")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TASK_MODULES: dict[str, str] = {
    "abr": "controller.abr_service",
    "cjs": "controller.cjs.service",
    "vp": "controller.vp.service",
}
"""Task name -> plug-in module (with `register(app)`)."""
DEFAULT_TASKS: list[str] = ["abr"]
MAX_BODY_BYTES: int = 256 * 1024


@dataclass
class ControllerConfig:
    policy: str = arg("robustmpc", help="default ABR policy (used when a request names none)")
    host: str = arg("127.0.0.1", help="address to listen on")
    port: int = arg(0, help="TCP port (0 picks a free one; the URL is printed once listening)")
    decision_log: Path | None = arg(None, help="append every decision to this JSON-lines file")
    policy_options: str = arg("", help="JSON object of constructor options for the default policy")
    max_sessions: int = arg(1024, help="per-session policy instances kept (least recently used evicted)")
    session_idle_s: float = arg(900.0, help="drop a session's policy instance after this many idle seconds")
    max_body_bytes: int = arg(MAX_BODY_BYTES, help="largest request body accepted (larger gets 413)")
    decisions_kept: int = arg(10_000, help="decisions kept in memory for GET /v1/decisions")
    tasks: list[str] = arg(list(DEFAULT_TASKS),
                           help="task plug-ins to serve (names in controller.app.TASK_MODULES)")
    log_level: str = arg("info", help="logging level on stderr (debug, info, warning, error)")
    torch_threads: int = arg(1, help="CPU threads of each torch-based decision (netllm policies; 0: "
                                     "torch's default, one per core). A decision is a few tokens: on the "
                                     "2-core test machine one thread decided faster than two and left a core "
                                     "to the player")

    def parsed_policy_options(self) -> dict[str, Any]:
        if not self.policy_options.strip():
            return {}
        try:
            options = json.loads(self.policy_options)
        except ValueError as exc:
            raise ValueError(f"--policy-options is not valid JSON: {exc}") from None
        if not isinstance(options, dict):
            raise ValueError("--policy-options must be a JSON object")
        return options


CONFIG = web.AppKey("config", ControllerConfig)
DECISION_LOG = web.AppKey("decision_log", DecisionLog)
BLOCKING_EXECUTOR = web.AppKey("blocking_executor", ThreadPoolExecutor)
HEALTH_PROVIDERS = web.AppKey("health_providers", list)
"""list of zero-argument callables returning a dict merged into the /healthz answer."""
STARTED_AT = web.AppKey("started_at", float)


class RequestError(Exception):
    """A client error: answered with `status` and `{"error": message, "field": field}`."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "600",
}


def error_response(status: int, message: str, field: str | None = None) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_body(request: web.Request) -> Any:
    """The decoded JSON body; RequestError (415/413/400) on a wrong content type, an oversized or an invalid
    body. NaN/Infinity literals are refused (they are not JSON)."""
    if request.content_type != "application/json":
        raise RequestError(415, f"Content-Type must be application/json, got {request.content_type}",
                           "content-type")
    limit = request.app[CONFIG].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(413, f"body of {request.content_length} bytes exceeds the limit of {limit}",
                           "body")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(413, f"body exceeds the limit of {limit} bytes", "body") from None
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"body is not UTF-8: {exc}", "body") from None
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, f"body is not valid JSON: {exc}", "body") from None


async def run_blocking(app: web.Application, fn: Callable[..., T], *args: Any) -> T:
    """Run CPU-heavy work on the service's single worker thread (calls are serialised, in order)."""
    return await asyncio.get_running_loop().run_in_executor(app[BLOCKING_EXECUTOR], fn, *args)


@web.middleware
async def _cors_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS":
        response: web.StreamResponse = web.Response(status=204)
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            response.headers["Access-Control-Allow-Private-Network"] = "true"
    else:
        try:
            response = await handler(request)
        except RequestError as exc:
            response = error_response(exc.status, exc.message, exc.field)
        except web.HTTPException as exc:  # routing errors (404, 405) and aiohttp's own limits
            if exc.status < 400:
                raise
            response = error_response(exc.status, exc.reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not take the service down: answer 500 and log it
            log.exception("%s %s failed", request.method, request.path)
            response = error_response(500, f"internal error: {type(exc).__name__}: {exc}")
    response.headers.update(CORS_HEADERS)
    return response


async def _healthz(request: web.Request) -> web.Response:
    app = request.app
    doc: dict[str, Any] = {"status": "ok", "uptime_s": round(time.monotonic() - app[STARTED_AT], 3),
                           "tasks": list(app[CONFIG].tasks), "decisions": app[DECISION_LOG].count}
    for provider in app[HEALTH_PROVIDERS]:
        doc.update(provider())
    return web.json_response(doc)


async def _decisions(request: web.Request) -> web.Response:
    session_id = request.query.get("session_id")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise RequestError(400, "limit must be an integer", "limit") from None
    return web.json_response({"decisions": request.app[DECISION_LOG].recent(session_id, limit)})


async def _shared_resources(app: web.Application) -> AsyncIterator[None]:
    """Start-up and clean-up of what every task shares: the worker thread and the decision log."""
    cfg = app[CONFIG]
    app[BLOCKING_EXECUTOR] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="controller-blocking")
    app[DECISION_LOG] = DecisionLog(cfg.decision_log, keep=cfg.decisions_kept)
    yield
    app[BLOCKING_EXECUTOR].shutdown(wait=True, cancel_futures=True)
    app[DECISION_LOG].close()


def load_task_module(name: str) -> Any:
    """A task plug-in by registered name (`TASK_MODULES`) or by dotted module path."""
    module_name = TASK_MODULES.get(name, name if "." in name else None)
    if module_name is None:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASK_MODULES))} "
                         "(or give a module path such as package.module)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"task {name!r}: cannot import {module_name} ({exc})") from None
    if not callable(getattr(module, "register", None)):
        raise ValueError(f"task module {module_name} has no register(app) function")
    return module


def create_app(cfg: ControllerConfig | None = None) -> web.Application:
    """The service with the tasks of `cfg.tasks`. Raises ValueError for a bad configuration
    (unknown task or policy, bad policy options) before anything listens."""
    cfg = cfg or ControllerConfig()
    if cfg.max_body_bytes < 1024 or cfg.max_sessions < 1 or not cfg.session_idle_s > 0:
        raise ValueError("max_body_bytes must be >= 1024, max_sessions >= 1 and session_idle_s > 0")
    modules = [load_task_module(name) for name in cfg.tasks]
    # read_json_body turns aiohttp's HTTPRequestEntityTooLarge into the JSON 413.
    app = web.Application(middlewares=[_cors_and_errors], client_max_size=cfg.max_body_bytes)
    app[CONFIG] = cfg
    app[STARTED_AT] = time.monotonic()
    app[HEALTH_PROVIDERS] = []
    app.cleanup_ctx.append(_shared_resources)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/v1/decisions", _decisions)
    for module in modules:
        module.register(app)
    return app
