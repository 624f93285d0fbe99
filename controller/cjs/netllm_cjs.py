"""`netllm-cjs`: the LLM-adapted cluster job scheduler as a CjsPolicy (simulator and POST /v1/cjs/schedule).

Each decision encodes the event's graph once, appends its [R, G, F] tokens to the cached tokens of the last
`window - 1` decisions (their [R, G, F, A] tokens do not change, so they are kept, not recomputed) and runs
the LLM body over at most 4 x window - 1 tokens (15 by default). The heads mask non-runnable stages and invalid
limits, so the answer is always accepted.

Return conditioning: the episode starts at R_0 = target_return_per_job_s x episode_jobs (both from the
checkpoint's `serving` section unless given: the pool's episode length and the `target_quantile` of its
per-episode returns per job) and R_{t+1} = R_t - r_t, where r_t is the reward the simulator reports through
`observe_outcome` (minus the job-seconds since the previous round). Behind the HTTP service nobody reports
rewards, so the policy estimates them from the events themselves: minus (jobs in the previous event) x (time
elapsed).
"""

from __future__ import annotations

from collections import deque
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from controller.cjs.decima import collate, decision_for, featurize
from controller.cjs.observation import DECLINE, Decision, SchedulingEvent
from controller.cjs.policies import CjsPolicy
from controller.model_cache import load_once
from netllm.paths import REPO_ROOT


def default_checkpoint() -> Path:
    """models/netllm-cjs-smollm2, or the folder named by $NETLLM_CJS_CHECKPOINT (the service builds policies without options)."""
    value = os.environ.get("NETLLM_CJS_CHECKPOINT")
    return Path(value).expanduser() if value else REPO_ROOT / "models" / "netllm-cjs-smollm2"


class NetLLMCjsPolicy(CjsPolicy):
    name: ClassVar[str] = "netllm-cjs"
    blocking: ClassVar[bool] = True

    def __init__(self, checkpoint: str | Path | None = None, target_return_per_job_s: float | None = None,
                 episode_jobs: int | None = None, model: Any = None, doc: dict[str, Any] | None = None,
                 threads: int = 0) -> None:
        from controller.cjs.netllm_cjs_model import load_netllm_cjs

        if threads > 0:
            torch.set_num_threads(threads)
        if model is None:
            # Shared by every session: the service builds one instance per session id.
            path = Path(checkpoint) if checkpoint else default_checkpoint()
            model, doc = load_once(("netllm-cjs", str(path.resolve())), lambda: load_netllm_cjs(path))
        self.model = model
        serving = (doc or {}).get("serving", {})
        per_job = target_return_per_job_s if target_return_per_job_s is not None \
            else serving.get("target_return_per_job_s", -50.0)
        jobs = episode_jobs if episode_jobs is not None else serving.get("episode_jobs", 50)
        self.target_return_s = float(per_job) * int(jobs)
        self.reset()

    def reset(self) -> None:
        self.return_s = self.target_return_s
        self.history: deque[torch.Tensor] = deque(maxlen=self.model.cfg.window - 1)
        self._reported = False
        self._last: tuple[float, int] | None = None

    def observe_outcome(self, reward: float) -> None:
        self._reported = True
        self.return_s -= reward

    def _estimate_reward(self, event: SchedulingEvent) -> None:
        if self._last is not None and not self._reported:
            time_s, jobs = self._last
            self.return_s += jobs * max(0.0, event.time_s - time_s)  # reward is minus the job-seconds
        self._last = (event.time_s, len(event.jobs))

    @torch.no_grad()
    def schedule(self, event: SchedulingEvent) -> Decision:
        self._estimate_reward(event)
        if event.free_executors < 1:
            return DECLINE
        cfg = self.model.cfg
        feats = featurize(event)
        if feats is None:
            return DECLINE
        arrays, runnable, refs = feats
        model = self.model
        enc = model.encode(collate([arrays]))
        ret = torch.tensor([self.return_s / cfg.return_scale_s])
        state = model.state_tokens(enc, ret)[0]
        tokens = torch.cat([*self.history, state]).unsqueeze(0)
        hidden = model.body(tokens)[:, -1]
        node = int(torch.argmax(model.stage_log_probs(hidden, enc)[0]))
        node_t = torch.tensor([node])
        limit = int(torch.argmax(model.limit_log_probs(hidden, enc, node_t)[0])) + 1
        action = model.action_tokens(enc, node_t, torch.tensor([limit]))[0]
        self.history.append(torch.cat([state, action]))
        return decision_for(node, limit, runnable, refs)
