"""VP task plug-in of the decision service: `POST /v1/vp/predict` and `GET /v1/vp/policies`.

Request (JSON object):

    {"session_id": "viewer-7",                       required, 1..256 characters
     "video_id": "4", "user_id": "83", "dataset": "Jin2022",   optional context (strings or integers)
     "history_time_s":    [t0, ..., t9],             playback times (s), finite, >= 0
     "history_roll_deg":  [...], "history_pitch_deg": [...], "history_yaw_deg": [...],
                                                     same length as the times (1..MAX_HISTORY_SAMPLES);
                                                     roll and yaw in [-180, 180], pitch in [-90, 90]
     "horizon": 20,                                  optional, 1..MAX_HORIZON (default 20)
     "policy": "velocity",                           optional (the controller's VP default when absent/null)
     "session_start": false}                         optional: true gives a stateful policy a fresh instance

Answer: `{"roll_deg": [...], "pitch_deg": [...], "yaw_deg": [...], "horizon": n, "policy": name,
"latency_ms": float}`; step k is the k-th sample after the last history sample, at the history's rate.
latency_ms is the server-side time (policy look-up, creation, prediction, the worker-thread hop for
blocking policies).

Bad input gets 4xx `{"error", "field"}` naming the field: 400 (shape, type, range, unknown policy),
413 (body over the limit), 415 (content type), 503 (a policy registered but not installed). A failing policy
gets 500 and the service stays up.

The default policy is `ControllerConfig.vp_policy` when the controller config has that field (and its options
`vp_policy_options`, a JSON object), else `DEFAULT_VP_POLICY`. Stateless policies share one instance per
name; stateful ones get one per (session_id, policy), like the ABR task.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import numpy as np
from aiohttp import web

from controller.app import CONFIG, DECISION_LOG, HEALTH_PROVIDERS, RequestError, read_json_body, run_blocking
from controller.sessions import PolicySessions
from controller.vp.policies import (
    UnknownVpPolicyError,
    VpContext,
    VpPolicy,
    VpPolicyUnavailableError,
    available_vp_policies,
    normalize_poses,
    vp_policy_class,
)
from traces.headmove import HORIZON_LEN

log = logging.getLogger("controller.vp")

DEFAULT_VP_POLICY = "no-motion"
"""The best classic baseline on the reference validation splits (see benchmarks/bench_vp_baselines.py)."""
MAX_HISTORY_SAMPLES = 600
MAX_HORIZON = 100
MAX_ID_CHARS = 256
ANGLE_FIELDS: tuple[tuple[str, float], ...] = (("history_roll_deg", 180.0), ("history_pitch_deg", 90.0),
                                               ("history_yaw_deg", 180.0))


def _number_list(doc: dict[str, Any], field: str, bound: float | None) -> list[float]:
    values = doc.get(field)
    if values is None:
        raise RequestError(400, f"{field} is required (a list of numbers)", field)
    if not isinstance(values, list):
        raise RequestError(400, f"{field} must be a list of numbers", field)
    if not 1 <= len(values) <= MAX_HISTORY_SAMPLES:
        raise RequestError(400, f"{field} must hold 1 to {MAX_HISTORY_SAMPLES} samples, got {len(values)}",
                           field)
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(400, f"{field}[{index}] must be a number, got {type(value).__name__}", field)
        if not math.isfinite(_as_float(value)):  # JSON integers are unbounded: 10**400 is not a float
            raise RequestError(400, f"{field}[{index}] is not finite (or too large for a float)", field)
        if bound is not None and abs(value) > bound:
            raise RequestError(400, f"{field}[{index}] = {value} is outside [-{bound:g}, {bound:g}]", field)
    return [float(v) for v in values]


def _as_float(value: int | float) -> float:
    """`value` as a float; infinity for an integer too large for one."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _identifier(doc: dict[str, Any], field: str, required: bool) -> str:
    value = doc.get(field)
    if value is None and not required:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise RequestError(400, f"{field} must be a string of 1 to {MAX_ID_CHARS} characters", field)
    return value


def _horizon(doc: dict[str, Any]) -> int:
    value = doc.get("horizon", HORIZON_LEN)
    if value is None:
        return HORIZON_LEN
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HORIZON:
        raise RequestError(400, f"horizon must be an integer in [1, {MAX_HORIZON}]", "horizon")
    return value


def parse_vp_request(doc: Any) -> tuple[VpContext, np.ndarray, int, bool]:
    """(context, history (H, 3), horizon, session_start) of a request body; RequestError naming the field."""
    if not isinstance(doc, dict):
        raise RequestError(400, "body must be a JSON object", "body")
    context_ids = {f: _identifier(doc, f, required=(f == "session_id"))
                   for f in ("session_id", "dataset", "video_id", "user_id")}
    times = _number_list(doc, "history_time_s", None)
    if min(times) < 0:
        raise RequestError(400, "history_time_s must not be negative", "history_time_s")
    columns = []
    for field, bound in ANGLE_FIELDS:
        values = _number_list(doc, field, bound)
        if len(values) != len(times):
            raise RequestError(400, f"{field} has {len(values)} samples but history_time_s has {len(times)}",
                               field)
        columns.append(values)
    session_start = doc.get("session_start", False)
    if not isinstance(session_start, bool):
        raise RequestError(400, "session_start must be true or false", "session_start")
    context = VpContext(history_time_s=np.asarray(times), **context_ids)
    return context, np.asarray(columns, dtype=np.float64).T, _horizon(doc), session_start


class VpService:
    def __init__(self, app: web.Application) -> None:
        cfg = app[CONFIG]
        self.app = app
        self.default_policy: str = getattr(cfg, "vp_policy", None) or DEFAULT_VP_POLICY
        self.default_options = self._options(getattr(cfg, "vp_policy_options", "") or "")
        self.classes: dict[str, type[VpPolicy]] = {}
        self.shared: dict[str, VpPolicy] = {}
        self.sessions = PolicySessions(cfg.max_sessions, cfg.session_idle_s)
        self.predictions = 0
        self.failures = 0
        self.policy_class(self.default_policy, startup=True)  # a bad default fails before listening

    @staticmethod
    def _options(text: str) -> dict[str, Any]:
        if not text.strip():
            return {}
        try:
            options = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"vp_policy_options is not valid JSON: {exc}") from None
        if not isinstance(options, dict):
            raise ValueError("vp_policy_options must be a JSON object")
        return options

    def policy_class(self, name: str, startup: bool = False) -> type[VpPolicy]:
        cls = self.classes.get(name)
        if cls is not None:
            return cls
        try:
            cls = vp_policy_class(name)
        except UnknownVpPolicyError as exc:
            if startup:
                raise ValueError(str(exc)) from None
            raise RequestError(400, str(exc), "policy") from None
        except VpPolicyUnavailableError as exc:
            if startup:
                raise ValueError(str(exc)) from None
            raise RequestError(503, str(exc), "policy") from None
        self.classes[name] = cls
        return cls

    def _build(self, name: str, cls: type[VpPolicy]) -> VpPolicy:
        policy = cls(**(self.default_options if name == self.default_policy else {}))
        policy.reset()
        return policy

    async def _new_policy(self, name: str, cls: type[VpPolicy]) -> VpPolicy:
        if cls.blocking:
            return await run_blocking(self.app, self._build, name, cls)
        return self._build(name, cls)

    async def _instance(self, name: str, cls: type[VpPolicy], context: VpContext,
                        session_start: bool) -> VpPolicy:
        if not cls.stateful:
            if name not in self.shared:
                self.shared[name] = await self._new_policy(name, cls)
            return self.shared[name]
        key = (context.session_id, name)
        entry = self.sessions.lookup(key, session_start=session_start)
        if entry is None:
            entry = self.sessions.store(key, await self._new_policy(name, cls))  # type: ignore[arg-type]
        return entry.policy  # type: ignore[return-value]

    async def warm_up(self, app: web.Application) -> Any:
        """cleanup_ctx: build the default policy once, so bad options or a missing model fail at start-up."""
        cls = self.classes[self.default_policy]
        try:
            policy = await self._new_policy(self.default_policy, cls)
        except Exception as exc:
            raise ValueError(f"default VP policy {self.default_policy!r} could not be built with options "
                             f"{self.default_options}: {type(exc).__name__}: {exc}") from exc
        if not cls.stateful:
            self.shared[self.default_policy] = policy
        yield

    def health(self) -> dict[str, Any]:
        return {"vp_default_policy": self.default_policy, "vp_policies_loaded": sorted(self.classes),
                "vp_predictions": self.predictions, "vp_policy_failures": self.failures}

    def _check_history_length(self, cls: type[VpPolicy], length: int) -> None:
        if cls.history_len is not None and length != cls.history_len:
            raise RequestError(400, f"policy {cls.name!r} needs exactly {cls.history_len} history samples, "
                               f"got {length}", "history_time_s")
        if length < cls.min_history:
            raise RequestError(400, f"policy {cls.name!r} needs at least {cls.min_history} history samples, "
                               f"got {length}", "history_time_s")

    async def _run(self, policy: VpPolicy, cls: type[VpPolicy], history: np.ndarray, horizon: int,
                   context: VpContext) -> np.ndarray:
        if cls.blocking:
            out = await run_blocking(self.app, policy.predict, history, horizon, context)
        else:
            out = policy.predict(history, horizon, context)
        out = np.asarray(out, dtype=np.float64)
        if out.shape != (horizon, 3) or not np.isfinite(out).all():
            raise ValueError(f"returned shape {out.shape} (finite: {bool(np.isfinite(out).all())}), "
                             f"not {horizon} finite poses")
        return normalize_poses(out)

    async def predict(self, request: web.Request) -> web.Response:
        doc = await read_json_body(request)
        name = doc.get("policy") if isinstance(doc, dict) else None
        name = self.default_policy if name is None else name
        if not isinstance(name, str):
            raise RequestError(400, "policy must be a string", "policy")
        context, history, horizon, session_start = parse_vp_request(doc)
        cls = self.policy_class(name)
        self._check_history_length(cls, history.shape[0])
        started = time.perf_counter()
        try:
            policy = await self._instance(name, cls, context, session_start)
            poses = await self._run(policy, cls, history, horizon, context)
        except Exception as exc:
            self.failures += 1
            self.shared.pop(name, None)
            self.sessions.drop((context.session_id, name))  # do not reuse a state that just broke
            log.exception("VP policy %r failed on session %r", name, context.session_id)
            raise RequestError(500, f"policy {name!r} failed: {type(exc).__name__}: {exc}") from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.predictions += 1
        request.app[DECISION_LOG].record(task="vp", session_id=context.session_id, policy=name,
                                         video_id=context.video_id, user_id=context.user_id,
                                         history_end_s=float(context.history_time_s[-1]), horizon=horizon,
                                         latency_ms=round(latency_ms, 4))
        return web.json_response({"roll_deg": poses[:, 0].tolist(), "pitch_deg": poses[:, 1].tolist(),
                                  "yaw_deg": poses[:, 2].tolist(), "horizon": horizon, "policy": name,
                                  "latency_ms": latency_ms})

    async def policies(self, request: web.Request) -> web.Response:
        return web.json_response({"default": self.default_policy, "available": available_vp_policies(),
                                  "loaded": sorted(self.classes)})


VP_SERVICE = web.AppKey("vp_service", VpService)


def register(app: web.Application) -> None:
    service = VpService(app)
    app[VP_SERVICE] = service
    app[HEALTH_PROVIDERS].append(service.health)
    app.cleanup_ctx.append(service.warm_up)
    app.router.add_post("/v1/vp/predict", service.predict)
    app.router.add_get("/v1/vp/policies", service.policies)
