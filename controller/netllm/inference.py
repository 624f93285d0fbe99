"""Per-session decision context of a NetLLM-ABR model and the two ways to run it.

- `recompute`: every decision re-encodes the whole window (the last `window` steps, the current one last) from
  scratch: simple, but its cost grows with the window (160 tokens for 20 steps).
- `kv` (default): incremental decoding with the LLM's KV cache. A decision only feeds the new step's tokens
  ([previous action, return, 6 state tokens]) through the body, on top of the cached keys/values of the
  earlier steps. Positions restart at 0 at a window's first token (as in training), so a cache cannot simply
  slide; instead, when the cache holds `window` steps, the last `refresh_steps` steps are re-encoded into a
  fresh cache in a background thread right after the decision (while the chunk downloads), and the next
  decision continues from that one. The model thus always sees between refresh_steps + 1 and `window` steps
  of context (training windows cover 1..window), and no decision pays for the re-encoding unless the next
  request comes before it finished (then that decision waits for it).

Llama-architecture bodies (SmolLM2, Llama 2) run through `LlamaDecoder` (controller.netllm.llama_decode: the
same math with a preallocated cache and less per-op overhead); others through transformers' forward with a
`DynamicCache`.

Cache invariant: the cache always ends with the last state token of the latest decided step; that step's
action token is fed at the beginning of the next decision.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from controller.netllm.abr_encoder import TOKENS_PER_STEP
from controller.netllm.llama_decode import LlamaDecoder
from controller.netllm.model import NetLLMAbr

MODES = ("kv", "recompute")

_REFRESH_EXECUTOR: ThreadPoolExecutor | None = None
_REFRESH_LOCK = threading.Lock()


def _refresh_executor() -> ThreadPoolExecutor:
    """One background thread shared by every session (a thread per session would pile up in a server)."""
    global _REFRESH_EXECUTOR
    with _REFRESH_LOCK:
        if _REFRESH_EXECUTOR is None:
            _REFRESH_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netllm-refresh")
        return _REFRESH_EXECUTOR


@dataclass
class Step:
    return_scaled: float
    features: np.ndarray
    timestep: int
    action: int = 0


class DecisionWindow:
    """The context window of one session; `decide` scores the levels, `commit` records the action taken."""

    def __init__(self, model: NetLLMAbr, mode: str = "kv", window: int | None = None,
                 refresh_steps: int | None = None, background: bool = True, lean: bool = True) -> None:
        """`lean`: decode Llama bodies with `LlamaDecoder` (False: always transformers' forward)."""
        if mode not in MODES:
            raise ValueError(f"inference mode {mode!r}: use one of {MODES}")
        self.model = model
        self.mode = mode
        self.window = window or model.cfg.window
        self.refresh_steps = refresh_steps or max(1, self.window // 2)
        if not 1 <= self.refresh_steps < self.window:
            raise ValueError("refresh_steps must be in [1, window)")
        self.background = background
        self._device = next(model.parameters()).device
        self._decoder = LlamaDecoder(model.backbone, self.window * TOKENS_PER_STEP) \
            if lean and LlamaDecoder.supports(model.backbone) else None
        self._steps: deque[Step] = deque(maxlen=self.window)
        self._cache: Any = None
        self._cache_steps = 0
        """Steps whose tokens are in the cache (the last one without its action token)."""
        self._pending: Future | None = None

    # ---- public ----
    def reset(self) -> None:
        self._wait_pending()
        self._steps.clear()
        self._cache, self._cache_steps = None, 0

    @property
    def context_steps(self) -> int:
        """Steps the latest decision saw (the decided step included)."""
        return self._cache_steps if self.mode == "kv" else len(self._steps)

    def decide(self, return_scaled: float, features: np.ndarray, timestep: int) -> torch.Tensor:
        """Level logits (levels,) for a new step; call `commit(action)` before the next `decide`."""
        step = Step(float(return_scaled), np.asarray(features, dtype=np.float32), int(timestep))
        with torch.inference_mode():
            if self.mode == "recompute":
                self._steps.append(step)
                return self._recompute()
            self._wait_pending()
            logits = self._extend(step)
            self._steps.append(step)
            return logits

    def commit(self, action: int) -> None:
        """Record the action of the latest step; in kv mode, schedule a refresh when the cache is full."""
        self._steps[-1].action = int(action)
        if self.mode == "kv" and self._cache_steps >= self.window:
            steps = list(self._steps)[-self.refresh_steps:]
            if self.background:
                self._pending = _refresh_executor().submit(self._encode_fresh, steps)
            else:
                self._cache, self._cache_steps = self._encode_fresh(steps)

    def record_played(self, level: int) -> None:
        """The level the player actually played for the latest step, when it differs from the committed
        answer (a live player falls back when the answer comes too late). Training only saw the levels
        played; this step's action token is not in the cache yet (the cache invariant), so this is free."""
        if self._steps:
            self._steps[-1].action = int(level)

    # ---- internals ----
    def _tensors(self, steps: list[Step]) -> tuple[torch.Tensor, ...]:
        dev = self._device
        returns = torch.tensor([[s.return_scaled for s in steps]], dtype=torch.float32, device=dev)
        states = torch.from_numpy(np.stack([s.features for s in steps])).unsqueeze(0).to(dev)
        actions = torch.tensor([[s.action for s in steps]], dtype=torch.long, device=dev)
        timesteps = torch.tensor([[s.timestep for s in steps]], dtype=torch.long, device=dev)
        return returns, states, actions, timesteps

    def _recompute(self) -> torch.Tensor:
        return self.model(*self._tensors(list(self._steps)))[0, -1]

    def _new_cache(self) -> Any:
        if self._decoder is not None:
            return self._decoder.new_cache()
        from transformers import DynamicCache

        return DynamicCache(config=self.model.backbone.config)

    def _body(self, tokens: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        if self._decoder is not None:
            return self._decoder(tokens, cache).float(), cache
        return self.model.body(tokens, cache=cache)

    def _encode_fresh(self, steps: list[Step]) -> tuple[Any, int]:
        """A cache holding `steps` in full, minus the last step's action token."""
        with torch.inference_mode():
            tokens = self.model.encoder(*self._tensors(steps))
            flat = tokens.reshape(1, -1, tokens.shape[-1])[:, :-1]
            _, cache = self._body(flat, self._new_cache())
        return cache, len(steps)

    def _extend(self, step: Step) -> torch.Tensor:
        dev = self._device
        prev = self._steps[-1] if self._cache is not None else None
        tokens = self.model.step_input(
            torch.tensor(step.return_scaled, device=dev), torch.from_numpy(step.features).to(dev),
            torch.tensor(step.timestep, device=dev),
            None if prev is None else torch.tensor(prev.action, device=dev),
            None if prev is None else torch.tensor(prev.timestep, device=dev))
        cache = self._new_cache() if self._cache is None else self._cache
        hidden, self._cache = self._body(tokens, cache)
        self._cache_steps += 1
        return self.model.logits_from_hidden(hidden)[0]

    def _wait_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._cache, self._cache_steps = pending.result()

