"""Gymnasium environment over the cluster simulator (Decima's RL formulation).

Observation: the padded arrays of `controller.cjs.encoding` (a Dict space with keys nodes, node_mask,
adjacency, jobs, job_mask, runnable, runnable_mask, limit_mask, globals; see that module for the layout).
Action: MultiDiscrete([max_runnable, num_executors]) = (k, limit - 1): give executors to the k-th runnable
stage (`obs["runnable"][k]` is its node index) with that parallelism limit for its job.
Reward: minus the job-seconds spent in the system since the previous step (the job-time integral Decima
optimises), divided by `reward_scale_s`; the sum over an episode is -(sum of JCTs) / reward_scale_s.

Actions outside the masks: with `strict_actions=True` they raise InvalidDecision; by default (so that
random exploration and gymnasium's checker can step) k is taken modulo the number of runnable stages and a
limit below the job's minimum is raised to it, and `info["action_adjusted"]` says so.
Rounds where no visible job (the first `max_jobs`) has a runnable stage are declined without asking the
agent (their time counts in the next reward).

`reset(seed=s)` plays the job stream of simulator seed s (the same stream `netllm cjs-eval` uses for seed
s); `reset()` without a seed draws a fresh simulator seed from the environment's generator.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from controller.cjs.encoding import GLOBAL_FEATURES, JOB_FEATURES, NODE_FEATURES, empty_arrays, encode_event
from controller.cjs.observation import DECLINE, InvalidDecision
from emulation.cluster_sim import ClusterSim, SimConfig
from traces.jobs import JobCatalog

FEATURE_BOUND = 1e9
"""Feature values are scaled to O(1); the bound only keeps the spaces finite."""


class ClusterSchedulingEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, sim_config: SimConfig | None = None, max_jobs: int = 64, max_stages: int = 20,
                 reward_scale_s: float = 100.0, strict_actions: bool = False,
                 catalog: JobCatalog | None = None) -> None:
        super().__init__()
        if max_jobs < 1 or max_stages < 1 or not reward_scale_s > 0:
            raise ValueError("need max_jobs >= 1, max_stages >= 1 and reward_scale_s > 0")
        self.sim = ClusterSim(sim_config, catalog)
        self.max_jobs, self.max_stages = max_jobs, max_stages
        self.reward_scale_s = reward_scale_s
        self.strict_actions = strict_actions
        n = self.sim.cfg.num_executors
        nodes = max_jobs * max_stages
        unbounded = dict(low=-FEATURE_BOUND, high=FEATURE_BOUND, dtype=np.float32)
        self.observation_space = spaces.Dict({
            "nodes": spaces.Box(shape=(nodes, len(NODE_FEATURES)), **unbounded),
            "node_mask": spaces.MultiBinary(nodes),
            "adjacency": spaces.MultiBinary((max_jobs, max_stages, max_stages)),
            "jobs": spaces.Box(shape=(max_jobs, len(JOB_FEATURES)), **unbounded),
            "job_mask": spaces.MultiBinary(max_jobs),
            "runnable": spaces.Box(low=-1, high=nodes - 1, shape=(nodes,), dtype=np.int64),
            "runnable_mask": spaces.MultiBinary(nodes),
            "limit_mask": spaces.MultiBinary((max_jobs, n)),
            "globals": spaces.Box(shape=(len(GLOBAL_FEATURES),), **unbounded),
        })
        self.action_space = spaces.MultiDiscrete([nodes, n])
        self._encoded = None
        self._seconds = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        sim_seed = seed if seed is not None else int(self.np_random.integers(2**62))
        self.sim.reset(sim_seed)
        self._seconds = 0.0
        self._skip_invisible_rounds()
        return self._observation(), self._info(adjusted=False)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        if self._encoded is None:
            raise RuntimeError("episode is over: call reset()")
        k, limit = int(action[0]), int(action[1]) + 1
        enc = self._encoded
        adjusted = False
        if not 0 <= k < enc.num_runnable:
            if self.strict_actions:
                raise InvalidDecision(f"action {k} names no runnable stage (there are {enc.num_runnable})")
            k, adjusted = k % enc.num_runnable, True
        low = enc.min_limits[k]
        if limit < low:
            if self.strict_actions:
                raise InvalidDecision(f"limit {limit} below the job's minimum {low}")
            limit, adjusted = low, True
        self.sim.step(enc.decision(k, limit))
        self._skip_invisible_rounds()
        reward = -(self.sim.job_seconds - self._seconds) / self.reward_scale_s
        self._seconds = self.sim.job_seconds
        terminated = self._encoded is None
        return self._observation(), float(reward), terminated, False, self._info(adjusted)

    def _skip_invisible_rounds(self) -> None:
        event = self.sim.event
        while event is not None:
            self._encoded = encode_event(event, self.max_jobs, self.max_stages)
            if self._encoded.num_runnable:
                return
            event = self.sim.step(DECLINE)
        self._encoded = None

    def _observation(self) -> dict[str, np.ndarray]:
        if self._encoded is None:
            return empty_arrays(self.max_jobs, self.max_stages, self.sim.cfg.num_executors)
        return self._encoded.arrays()

    def _info(self, adjusted: bool) -> dict[str, Any]:
        info: dict[str, Any] = {"time_s": self.sim.now, "decisions": self.sim.decisions,
                                "action_adjusted": adjusted, "jobs_done": len(self.sim.finished_jobs)}
        if self._encoded is None and self.sim.done:
            info["mean_jct_s"] = self.sim.result().mean_jct_s
        return info

    def action_masks(self) -> np.ndarray:
        """Valid k values (first action component), for masked-action agents."""
        return self._observation()["runnable_mask"].astype(bool)
