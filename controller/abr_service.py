"""ABR task plug-in of the decision service: `POST /v1/abr/decide` and `GET /v1/policies`.

Request body: an AbrObservation as JSON (see `netllm.abr_state.parse_observation`) plus an optional
`"policy": name` (the controller's default policy when absent or null). Answer:
`{"quality": int, "policy": str, "latency_ms": float}`, where latency is the server-side decision time
(policy look-up/creation and `select_quality`, the worker-thread hop included for blocking policies).
Errors are `{"error": message, "field": name or null}`: 400 for an invalid field (413/415 for the body's size
or type), 422 for a valid observation the policy cannot serve (a ladder with another number of levels than
its checkpoint's), 500 when the policy itself fails (counted in /healthz's `policy_failures`; that session's
instance is dropped) and 503 when it cannot be built. No input stops the service.

Policy instances are per (session_id, policy): a fresh instance when a session starts (chunk_index 0) or the
id is unseen. Policies whose class sets `blocking = True` (model inference) run on the service's single worker
thread; the others run inline, which is cheaper than any thread hop. Only the default policy gets the
`--policy-options`; a policy named in a request is built with its defaults.
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
    ControllerConfig,
    RequestError,
    error_response,
    read_json_body,
    run_blocking,
)
from controller.policies import UnknownPolicyError, available_policies, policy_class
from controller.policies.base import AbrPolicy
from controller.sessions import PolicySessions
from netllm.abr_state import ObservationError, UnsupportedObservation, parse_observation

log = logging.getLogger("controller.abr")


def is_blocking(cls: type[AbrPolicy]) -> bool:
    return bool(getattr(cls, "blocking", False))


class AbrService:
    def __init__(self, app: web.Application, cfg: ControllerConfig) -> None:
        self.app = app
        self.default_policy = cfg.policy
        self.default_options = cfg.parsed_policy_options()
        self.sessions = PolicySessions(cfg.max_sessions, cfg.session_idle_s)
        self.classes: dict[str, type[AbrPolicy]] = {}
        self.failures = 0
        self.policy_class(cfg.policy, startup=True)  # an unknown default policy fails before listening

    def policy_class(self, name: str, startup: bool = False) -> type[AbrPolicy]:
        cls = self.classes.get(name)
        if cls is not None:
            return cls
        try:
            cls = policy_class(name)
        except UnknownPolicyError as exc:
            if startup:
                raise ValueError(exc.args[0]) from None
            raise RequestError(400, exc.args[0], "policy") from None
        except ImportError as exc:  # registered, but its implementation cannot load here
            if startup:
                raise ValueError(f"policy {name!r} cannot be loaded: {exc}") from None
            raise RequestError(503, f"policy {name!r} is not available: {exc}", "policy") from None
        self.classes[name] = cls
        return cls

    def _build(self, name: str, cls: type[AbrPolicy]) -> AbrPolicy:
        policy = cls(**(self.default_options if name == self.default_policy else {}))
        policy.reset()
        return policy

    async def new_policy(self, name: str, cls: type[AbrPolicy]) -> AbrPolicy:
        if is_blocking(cls):
            return await run_blocking(self.app, self._build, name, cls)
        return self._build(name, cls)

    async def warm_up(self, app: web.Application) -> Any:
        """cleanup_ctx: build the default policy once, so bad options or a missing model fail at start-up
        and the first session does not pay for loading."""
        try:
            await self.new_policy(self.default_policy, self.classes[self.default_policy])
        except Exception as exc:
            raise ValueError(f"default policy {self.default_policy!r} could not be built with options "
                             f"{self.default_options}: {type(exc).__name__}: {exc}") from exc
        yield

    def health(self) -> dict[str, Any]:
        self.sessions.expire_idle()
        return {"default_policy": self.default_policy, "policies_loaded": sorted(self.classes),
                "sessions_active": len(self.sessions), "policy_failures": self.failures}

    async def decide(self, request: web.Request) -> web.Response:
        doc = await read_json_body(request)
        if not isinstance(doc, dict):
            raise RequestError(400, "body must be a JSON object", "body")
        name = doc.get("policy")
        if name is None:
            name = self.default_policy
        if not isinstance(name, str):
            raise RequestError(400, "policy must be a string", "policy")
        cls = self.policy_class(name)
        try:
            obs = parse_observation(doc)
        except ObservationError as exc:
            raise RequestError(400, exc.message, exc.field) from None

        started = time.perf_counter()
        key = (obs.session_id, name)
        entry = self.sessions.lookup(key, session_start=obs.chunk_index == 0)
        if entry is None:
            try:
                entry = self.sessions.store(key, await self.new_policy(name, cls))
            except Exception as exc:
                log.exception("building policy %r failed", name)
                return error_response(503, f"policy {name!r} could not be built: {type(exc).__name__}: {exc}",
                                      "policy")
        try:
            if is_blocking(cls):
                quality = await run_blocking(self.app, entry.policy.select_quality, obs)
            else:
                quality = entry.policy.select_quality(obs)
            if isinstance(quality, bool) or not 0 <= int(quality) < obs.levels or int(quality) != quality:
                raise ValueError(f"returned {quality!r}, not a quality index in [0, {obs.levels})")
        except UnsupportedObservation as exc:
            self.sessions.drop(key)
            raise RequestError(422, f"policy {name!r}: {exc.message}", exc.field) from None
        except Exception as exc:
            self.failures += 1
            self.sessions.drop(key)  # do not reuse a state that just broke
            log.exception("policy %r failed on session %r chunk %d", name, obs.session_id, obs.chunk_index)
            return error_response(500, f"policy {name!r} failed: {type(exc).__name__}: {exc}")
        latency_ms = (time.perf_counter() - started) * 1000.0
        entry.decisions += 1
        quality = int(quality)
        request.app[DECISION_LOG].record(session_id=obs.session_id, policy=name, chunk_index=obs.chunk_index,
                                         quality=quality, latency_ms=round(latency_ms, 4),
                                         buffer_s=obs.buffer_s)
        return web.json_response({"quality": quality, "policy": name, "latency_ms": latency_ms})

    async def policies(self, request: web.Request) -> web.Response:
        return web.json_response({"default": self.default_policy, "available": available_policies(),
                                  "loaded": sorted(self.classes)})


ABR_SERVICE = web.AppKey("abr_service", AbrService)


def register(app: web.Application) -> None:
    service = AbrService(app, app[CONFIG])
    app[ABR_SERVICE] = service
    app[HEALTH_PROVIDERS].append(service.health)
    app.cleanup_ctx.append(service.warm_up)
    app.router.add_post("/v1/abr/decide", service.decide)
    app.router.add_get("/v1/policies", service.policies)
