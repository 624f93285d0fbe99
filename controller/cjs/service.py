"""Cluster-job-scheduling plug-in of the decision service: `POST /v1/cjs/schedule`, `GET /v1/cjs/policies`.

Request body: a scheduling event as JSON (`controller.cjs.observation` documents the fields) plus optional
`"policy"` (default `fair`), `"session_id"` (a string: stateful policies keep one instance per session and
policy; without it every request of that policy shares one instance) and `"reset": true` (start the session
over with a fresh instance). Answer:
`{"stage": {"job_id": j, "stage_id": s} | null, "parallelism_limit": int, "policy": str, "latency_ms": float}`
where a null stage means "leave the free executors idle until the next event".

Errors: 400 with the offending field for a malformed event (unknown or duplicate ids, children that are not
unfinished stages of the job, cycles, counts out of range, sizes past the bounds of `observation`), 413/415
from `read_json_body`, 503 for a registered policy whose implementation is missing here, 500 only when the
policy itself fails or answers something the event does not allow (the service stays up).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from controller.app import (
    CONFIG,
    DECISION_LOG,
    HEALTH_PROVIDERS,
    RequestError,
    error_response,
    read_json_body,
    run_blocking,
)
from controller.cjs.observation import (
    EventError,
    InvalidDecision,
    SchedulingEvent,
    check_decision,
    decision_to_json,
    parse_event,
)
from controller.cjs.policies import (
    RESERVED,
    CjsPolicy,
    PolicyUnavailableError,
    UnknownPolicyError,
    available_policies,
    implemented_policies,
    policy_class,
)
from controller.sessions import PolicySessions

log = logging.getLogger("controller.cjs")
DEFAULT_POLICY = "fair"
MAX_SESSION_ID_CHARS = 200


def _blocking(cls: type[CjsPolicy]) -> bool:
    return bool(getattr(cls, "blocking", False))


class CjsService:
    def __init__(self, app: web.Application) -> None:
        cfg = app[CONFIG]
        self.app = app
        self.sessions = PolicySessions(cfg.max_sessions, cfg.session_idle_s)
        self.classes: dict[str, type[CjsPolicy]] = {}
        self.failures = 0
        self.decisions = 0

    def policy_class(self, name: str) -> type[CjsPolicy]:
        cls = self.classes.get(name)
        if cls is None:
            try:
                cls = policy_class(name)
            except UnknownPolicyError as exc:
                raise RequestError(400, exc.args[0], "policy") from None
            except (PolicyUnavailableError, ImportError) as exc:
                raise RequestError(503, f"policy {name!r} is not available: {exc}", "policy") from None
            self.classes[name] = cls
        return cls

    def health(self) -> dict[str, Any]:
        return {"cjs_decisions": self.decisions, "cjs_policy_failures": self.failures,
                "cjs_policies_loaded": sorted(self.classes)}

    @staticmethod
    def _request_fields(doc: Any) -> tuple[str, str, bool]:
        if not isinstance(doc, dict):
            raise RequestError(400, "body must be a JSON object", "body")
        name = doc.get("policy")
        name = DEFAULT_POLICY if name is None else name
        if not isinstance(name, str):
            raise RequestError(400, "policy must be a string", "policy")
        session_id = doc.get("session_id")
        if session_id is not None and (not isinstance(session_id, str)
                                       or len(session_id) > MAX_SESSION_ID_CHARS):
            raise RequestError(400, f"session_id must be a string of at most {MAX_SESSION_ID_CHARS} "
                               "characters", "session_id")
        reset = doc.get("reset", False)
        if not isinstance(reset, bool):
            raise RequestError(400, "reset must be true or false", "reset")
        return name, session_id or "", reset

    async def _policy(self, name: str, cls: type[CjsPolicy], session_id: str, reset: bool) -> CjsPolicy:
        key = (session_id, name)
        entry = self.sessions.lookup(key, session_start=reset)
        if entry is None:
            policy = await run_blocking(self.app, cls) if _blocking(cls) else cls()
            policy.reset()
            entry = self.sessions.store(key, policy)  # type: ignore[arg-type]
        entry.decisions += 1
        return entry.policy  # type: ignore[return-value]

    async def schedule(self, request: web.Request) -> web.Response:
        doc = await read_json_body(request)
        name, session_id, reset = self._request_fields(doc)
        cls = self.policy_class(name)
        try:
            event = parse_event(doc)
        except EventError as exc:
            raise RequestError(400, exc.message, exc.field) from None
        started = time.perf_counter()
        try:
            policy = await self._policy(name, cls, session_id, reset)
        except Exception as exc:
            log.exception("building CJS policy %r failed", name)
            return error_response(503, f"policy {name!r} could not be built: {type(exc).__name__}: {exc}",
                                  "policy")
        try:
            if _blocking(cls):
                raw = await run_blocking(self.app, policy.schedule, event)
            else:
                raw = policy.schedule(event)
            decision = check_decision(event, raw)
        except Exception as exc:
            self.failures += 1
            self.sessions.drop((session_id, name))  # never reuse a state that just broke
            kind = ("answered a decision the event does not allow" if isinstance(exc, InvalidDecision)
                    else "failed")
            log.exception("CJS policy %r %s", name, kind)
            return error_response(500, f"policy {name!r} {kind}: {type(exc).__name__}: {exc}")
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.decisions += 1
        answer = {**decision_to_json(decision), "policy": name, "latency_ms": latency_ms}
        self._log(request, event, session_id, answer)
        return web.json_response(answer)

    @staticmethod
    def _log(request: web.Request, event: SchedulingEvent, session_id: str, answer: dict[str, Any]) -> None:
        request.app[DECISION_LOG].record(task="cjs", session_id=session_id or None, policy=answer["policy"],
                                         time_s=event.time_s, stage=answer["stage"],
                                         parallelism_limit=answer["parallelism_limit"],
                                         free_executors=event.free_executors, jobs=len(event.jobs),
                                         latency_ms=round(answer["latency_ms"], 4))

    async def policies(self, request: web.Request) -> web.Response:
        return web.json_response({"default": DEFAULT_POLICY, "available": available_policies(),
                                  "implemented": implemented_policies(), "reserved": RESERVED,
                                  "loaded": sorted(self.classes)})


CJS_SERVICE = web.AppKey("cjs_service", CjsService)


def register(app: web.Application) -> None:
    service = CjsService(app)
    app[CJS_SERVICE] = service
    app[HEALTH_PROVIDERS].append(service.health)
    app.router.add_post("/v1/cjs/schedule", service.schedule)
    app.router.add_get("/v1/cjs/policies", service.policies)
