"""Simulated VP backend: replays viewers' head traces and scores a policy's predictions.

Two paths, same windows (`traces.headmove.make_windows`, NetLLM's protocol), same scores
(`controller.vp.metrics.score_windows`), rows in the same order (trace by trace, each in playback order):

- `evaluate_policy(policy, windows)`: in process, vectorised through `predict_batch` (fast; for sweeps);
  a stateful policy gets the windows one at a time, viewer by viewer, as through the controller.
- `replay_via_controller(url, policy, traces)`: every viewer walks its trace in playback time; when playback
  reaches the end of a window's history it sends that history to the controller (`POST /v1/vp/predict`),
  keeps the answer, and scores it once the window's last future sample has been played (the samples 1..F
  after the history). Viewers run concurrently (`concurrency` at a time). `realtime_speed` > 0 paces the
  playback (1 = real time, 10 = ten times faster); 0 replays as fast as the controller answers.
  Each request carries the server's `latency_ms` back; the client's round trip is recorded as `rtt_ms`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np

from controller.vp.metrics import score_windows
from controller.vp.policies import VpContext, VpPolicy
from traces.headmove import HeadTrace, WindowBatch, WindowSpec, make_windows


class VpReplayError(RuntimeError):
    """The controller refused or failed a request, or answered something that is not a prediction."""


@dataclass
class VpScores:
    """One policy's predictions and errors on a window batch (row i = window i)."""
    policy: str
    windows: WindowBatch
    predictions_deg: np.ndarray  # (N, F, 3)
    mae_deg: np.ndarray          # (N,)
    great_circle_deg: np.ndarray  # (N, F)
    latency_ms: np.ndarray       # (N,) server-side; NaN in process
    rtt_ms: np.ndarray           # (N,) client round trip; NaN in process
    elapsed_s: float


def _contexts(windows: WindowBatch, rows: slice) -> list[VpContext]:
    return [VpContext(f"{d}/{v}/{u}", str(d), str(v), str(u), t) for d, v, u, t in
            zip(windows.dataset[rows], windows.video_id[rows], windows.user_id[rows],
                windows.history_time_s[rows])]


def _predict_stateful(policy: VpPolicy, windows: WindowBatch, horizon: int) -> np.ndarray:
    """Viewer by viewer, windows in playback order, a reset between viewers: what a stateful policy sees
    through the controller."""
    out = np.empty((len(windows), horizon, 3))
    viewer = None
    for row in range(len(windows)):
        key = (windows.dataset[row], windows.video_id[row], windows.user_id[row])
        if key != viewer:
            policy.reset()
            viewer = key
        context = _contexts(windows, slice(row, row + 1))[0]
        out[row] = policy.predict(windows.history_deg[row], horizon, context)
    return out


def evaluate_policy(policy: VpPolicy, windows: WindowBatch, batch_size: int = 4096,
                    name: str | None = None, with_context: bool = False) -> VpScores:
    """Predict every window and score it against its future. Stateless policies get batches of
    `batch_size` windows (`with_context` also passes `VpContext`s, for content-aware models); stateful ones
    (`policy.stateful`) get one window at a time, viewer by viewer, reset between viewers."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    horizon = windows.future_deg.shape[1]
    started = time.perf_counter()
    policy.reset()
    if policy.stateful:
        predictions = _predict_stateful(policy, windows, horizon)
    else:
        parts = [np.zeros((0, horizon, 3))]
        for begin in range(0, len(windows), batch_size):
            rows = slice(begin, begin + batch_size)
            contexts = _contexts(windows, rows) if with_context else None
            parts.append(np.asarray(policy.predict_batch(windows.history_deg[rows], horizon, contexts),
                                    dtype=np.float64))
        predictions = np.concatenate(parts)
    elapsed_s = time.perf_counter() - started
    mae, great_circle = score_windows(predictions, windows.future_deg)
    nan = np.full(len(windows), np.nan)
    return VpScores(name or policy.name, windows, predictions, mae, great_circle, nan, nan.copy(), elapsed_s)


# -- through the controller ----------------------------------------------------------------------------------

def request_body(windows: WindowBatch, row: int, policy: str, session_id: str, session_start: bool) -> dict:
    return {"session_id": session_id, "dataset": str(windows.dataset[row]),
            "video_id": str(windows.video_id[row]), "user_id": str(windows.user_id[row]),
            "history_time_s": windows.history_time_s[row].tolist(),
            "history_roll_deg": windows.history_deg[row, :, 0].tolist(),
            "history_pitch_deg": windows.history_deg[row, :, 1].tolist(),
            "history_yaw_deg": windows.history_deg[row, :, 2].tolist(),
            "horizon": int(windows.future_deg.shape[1]), "policy": policy, "session_start": session_start}


async def _ask(http: aiohttp.ClientSession, url: str, body: dict) -> tuple[np.ndarray, float, float]:
    """(poses (F, 3), server latency_ms, round trip ms)."""
    started = time.perf_counter()
    async with http.post(f"{url.rstrip('/')}/v1/vp/predict", json=body) as response:
        try:
            doc = await response.json(content_type=None)
        except ValueError:
            doc = None
        rtt_ms = (time.perf_counter() - started) * 1000.0
        if response.status != 200 or not isinstance(doc, dict):
            detail = doc if isinstance(doc, dict) else {}
            raise VpReplayError(f"controller answered {response.status} for session {body['session_id']}: "
                                f"{detail.get('error', 'no JSON body')} (field {detail.get('field')})")
    try:
        poses = np.array([doc["roll_deg"], doc["pitch_deg"], doc["yaw_deg"]], dtype=np.float64).T
        latency_ms = float(doc["latency_ms"])
    except (KeyError, TypeError, ValueError) as exc:
        raise VpReplayError(f"controller answer is not a VP prediction: {exc}") from None
    if poses.shape != (body["horizon"], 3) or not np.isfinite(poses).all():
        raise VpReplayError(f"controller answered poses of shape {poses.shape}, not ({body['horizon']}, 3)")
    return poses, latency_ms, rtt_ms


@dataclass
class _Viewer:
    """One viewer's windows (rows `offset` .. `offset + len(windows) - 1` of the whole batch)."""
    trace: HeadTrace
    windows: WindowBatch
    offset: int


async def _play_viewer(http: aiohttp.ClientSession, url: str, policy: str, viewer: _Viewer, spec: WindowSpec,
                       realtime_speed: float, out: dict[str, np.ndarray]) -> None:
    windows = viewer.windows
    session_id = f"vp-replay/{viewer.trace.dataset}/{viewer.trace.video_id}/{viewer.trace.user_id}/{policy}"
    pending: deque[tuple[int, np.ndarray]] = deque()
    loop = asyncio.get_running_loop()
    wall_start, play_start = loop.time(), float(windows.history_time_s[0, -1]) if len(windows) else 0.0

    def score_due(played_index: int) -> None:
        # A window is scored once its last future sample (start + H + F - 1) has been played.
        while pending and windows.start[pending[0][0]] + spec.history + spec.horizon - 1 <= played_index:
            row, poses = pending.popleft()
            mae, great_circle = score_windows(poses[None], windows.future_deg[row][None])
            out["mae"][viewer.offset + row], out["gc"][viewer.offset + row] = mae[0], great_circle[0]

    for row in range(len(windows)):
        if realtime_speed > 0:  # wait until playback reaches the end of this window's history
            due = wall_start + (float(windows.history_time_s[row, -1]) - play_start) / realtime_speed
            await asyncio.sleep(max(0.0, due - loop.time()))
        score_due(int(windows.start[row]) + spec.history - 1)
        body = request_body(windows, row, policy, session_id, session_start=row == 0)
        poses, latency_ms, rtt_ms = await _ask(http, url, body)
        index = viewer.offset + row
        out["pred"][index], out["latency"][index], out["rtt"][index] = poses, latency_ms, rtt_ms
        pending.append((row, poses))
    score_due(len(viewer.trace))  # the rest of the trace plays out


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def replay_via_controller(url: str, policy: str, traces: Sequence[HeadTrace],
                                spec: WindowSpec = WindowSpec(), concurrency: int = 8,
                                realtime_speed: float = 0.0, timeout_s: float = 30.0) -> VpScores:
    """Replay `traces` against the controller at `url` with `policy`; rows as `make_windows(traces, spec)`."""
    viewers, offset = [], 0
    for trace in traces:
        windows = make_windows([trace], spec)
        if len(windows):
            viewers.append(_Viewer(trace, windows, offset))
            offset += len(windows)
    batch = make_windows(traces, spec)
    out = {"pred": np.full((offset, spec.horizon, 3), np.nan), "mae": np.full(offset, np.nan),
           "gc": np.full((offset, spec.horizon), np.nan), "latency": np.full(offset, np.nan),
           "rtt": np.full(offset, np.nan)}
    gate = asyncio.Semaphore(max(1, concurrency))

    async def run_one(viewer: _Viewer) -> None:
        async with gate:
            await _play_viewer(http, url, policy, viewer, spec, realtime_speed, out)

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=max(1, concurrency))
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels the other viewers
                for viewer in viewers:
                    group.create_task(run_one(viewer))
        except ExceptionGroup as failures:
            first = _first_leaf(failures)
            if isinstance(first, (aiohttp.ClientError, TimeoutError)):
                raise VpReplayError(f"cannot reach the controller at {url}: "
                                    f"{type(first).__name__}: {first}") from None
            raise first from None
    elapsed_s = time.perf_counter() - started
    return VpScores(policy, batch, out["pred"], out["mae"], out["gc"], out["latency"], out["rtt"], elapsed_s)
