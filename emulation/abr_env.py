"""Gymnasium environment over the chunk-level ABR simulator (`emulation.abr_sim.AbrSession`).

- `reset(seed=..., options=...)`: picks a trace uniformly and a start sample index uniformly in
  [1, samples - 1] from `self.np_random` (Pensieve's training protocol); `options={"trace_index": i,
  "start_index": k}` fixes either. Chunk 0 is fetched at the default quality, so the first observation is
  the decision for chunk 1 (with `SimConfig(default_quality=None)` it is chunk 0's).
- observation: float32 array (6, W), W = max(history_len, levels), Pensieve's state computed from the
  `AbrObservation` (`controller.policies.pensieve.pensieve_features`: last bitrate, buffer, throughput and
  download-time histories, next chunk sizes, chunks left);
- action: `Discrete(levels)`, the quality of the next chunk;
- reward: that chunk's QoE term (`netllm.qoe`: Mbps - 4.3 * stall_s - |switch Mbps|);
- terminated after the video's last chunk; never truncated.
- `info`: `obs` (a copy of the `AbrObservation` for the next decision), `trace`, `start_index`,
  `chunk_index` (of the chunk just fetched), `bitrate_kbps`, `rebuffer_s`, `buffer_s`, `download_time_s`,
  `qoe`. Delay noise (if `config.noise`) is drawn from a generator seeded from `self.np_random`.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from controller.policies.pensieve import S_INFO, S_LEN, CONV_WIDTH, pensieve_features
from emulation.abr_sim import AbrSession, ChunkStep, PreparedTrace, PreparedVideo, SimConfig
from netllm.abr_state import AbrObservation
from netllm.video import Video
from traces.bandwidth import BandwidthTrace


class AbrEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, traces: Sequence[BandwidthTrace | PreparedTrace], video: Video | PreparedVideo,
                 config: SimConfig = SimConfig(), history_len: int = S_LEN) -> None:
        if not traces:
            raise ValueError("AbrEnv needs at least one trace")
        self.config = config
        self.traces = [t if isinstance(t, PreparedTrace) else PreparedTrace(t) for t in traces]
        self.video = video if isinstance(video, PreparedVideo) else PreparedVideo(
            video, config.horizon, config.chunk_count)
        self.history_len = history_len
        width = max(history_len, self.video.levels, CONV_WIDTH)
        self.observation_space = spaces.Box(low=0.0, high=np.finfo(np.float32).max, shape=(S_INFO, width),
                                            dtype=np.float32)
        self.action_space = spaces.Discrete(self.video.levels)
        self.session: AbrSession | None = None
        self.trace_index = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        self.trace_index = int(options.get("trace_index", self.np_random.integers(len(self.traces))))
        trace = self.traces[self.trace_index]
        start = int(options.get("start_index", self.np_random.integers(1, trace.samples)))
        noise_seed = int(self.np_random.integers(2**63 - 1))
        self.session = AbrSession(trace, self.video, self.config, start, noise_seed)
        info = self._info(self.session.first_step)
        return self._features(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.session is None or self.session.done:
            raise RuntimeError("call reset() first (the session is over)")
        step = self.session.step(int(action))
        terminated = self.session.done
        return self._features(), float(step.qoe), terminated, False, self._info(step)

    def _features(self) -> np.ndarray:
        assert self.session is not None
        return pensieve_features(self.session.obs, self.history_len)

    def _info(self, step: ChunkStep | None) -> dict[str, Any]:
        assert self.session is not None
        info: dict[str, Any] = {"obs": copy_observation(self.session.obs), "trace": self.session.trace.name,
                                "start_index": self.session.start_index}
        if step is not None:
            info.update(chunk_index=step.chunk_index, bitrate_kbps=step.bitrate_kbps,
                        rebuffer_s=step.rebuffer_s, buffer_s=step.buffer_s,
                        download_time_s=step.download_time_s, qoe=step.qoe)
        return info


def copy_observation(obs: AbrObservation) -> AbrObservation:
    """A snapshot the simulator will not change afterwards (it updates its observation in place)."""
    return AbrObservation(obs.chunk_index, obs.total_chunks, obs.last_quality, obs.buffer_s,
                          list(obs.throughput_kbps_history), list(obs.download_time_s_history),
                          [list(r) for r in obs.upcoming_chunk_sizes_bytes], list(obs.ladder_kbps),
                          obs.rebuffer_s, obs.chunk_duration_s, obs.session_id, copy.deepcopy(obs.extra))
