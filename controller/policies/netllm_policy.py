"""`netllm`: an LLM adapted to ABR with NetLLM (multimodal encoder + LoRA + networking head) as a policy.

Options (constructor keywords, e.g. `--policy-options '{"checkpoint": "runs/abr/best"}'`):
- `checkpoint`: a checkpoint folder (`controller.netllm.checkpoint`); default `models/netllm-abr-smollm2` in
  the repository, or $NETLLM_ABR_CHECKPOINT.
- `device`: auto (CUDA when present, else CPU), cpu, cuda.
- `sample`: False = greedy (highest-scoring level), True = draw from softmax(logits / temperature) with a
  generator seeded by `seed` (reproducible).
- `target_return`: the mean per-chunk QoE to ask for. At a session's first decision the return-to-go is
  target_return x chunks remaining; default: the checkpoint's `serving.target_return_per_chunk` (chosen on
  validation traces by `netllm train`).
- `inference`: kv (incremental decoding with a KV cache, default) or recompute
  (see controller.netllm.inference).
- `window`: steps of context served (2 .. the trained window); default: the checkpoint's
  `serving.context_steps` (chosen on validation traces), else the trained window. In kv mode the context
  then runs from window // 2 + 1 to `window` steps. The shipped model serves 3 of its 20 (higher QoE on the
  validation and the training traces: models/README.md).
- `temperature`, `seed`: sampling only.
- `backbone_path`: where a checkpoint trained on a local model folder finds it on this machine (default: the
  path recorded at training; its fingerprint must match).
- `quantize`: auto (default, or $NETLLM_ABR_QUANTIZE), none, or a CPU serving scheme of
  controller.netllm.quantize: int8 (smoothed dynamic int8 linear layers, the MLP down-projections in float32),
  int8-split (down-projections int8 too except their outlier input channels), int8-full, int8-plain (no
  smoothing). `auto` is int8-split on a CPU with an int8 engine (x86 fbgemm or ARM qnnpack) and none on a GPU:
  on the 2-core CPU it cut the shipped model's decision from ~54 to ~15 ms (p50; p99 ~74 to ~30 ms) and moved
  its mean QoE on the 29 validation traces from 0.543 to 0.538 (int8: 0.527); see README "CPU serving".
  Checkpoint selection in `netllm train` simulates the float32 model.

Return-to-go bookkeeping: after each chunk the return-to-go drops by that chunk's QoE term (netllm.qoe). The
policy computes it from two consecutive observations: the chunk's level is the new `last_quality`, the
previous level the old one, the stall the growth of the cumulative `rebuffer_s` (the simulator's chunk QoE
exactly; live players report the same fields). A client may instead send it as `extra["last_chunk_qoe"]`.

Following a session (same session_id): the next chunk (chunk_index one above the last decided) continues it,
and the level the player reports as `last_quality` replaces the answer as that step's action (they differ
when a live player fell back). A repeat of the chunk just decided (a client's retry) gets the same answer and
changes nothing. Anything else (a lower index, or a gap: the skipped chunks' QoE is unknown and the context
would hold steps never played in a row) starts over, as at a session's first decision. Timesteps are clamped
to the range the checkpoint was trained on (`serving.min_trained_timestep`, default 1: pools skip chunk 0,
which the simulator plays at a fixed level; `serving.max_trained_timestep`).

Loaded models are shared by all instances (the controller builds one instance per session); each instance
keeps only its session's context window. `blocking = True`: the controller runs it on its worker thread.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from controller.policies.base import AbrPolicy
from netllm.abr_state import MAX_CHUNK_QOE_ABS, AbrObservation
from controller.model_cache import load_once
from netllm.paths import REPO_ROOT

DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "netllm-abr-smollm2"
DEFAULT_TARGET_RETURN_PER_CHUNK = 1.0



def default_quantize() -> str:
    """$NETLLM_ABR_QUANTIZE (for harnesses that name policies without options: `netllm sim`), else auto."""
    return os.environ.get("NETLLM_ABR_QUANTIZE", "").strip() or "auto"


def default_checkpoint() -> Path:
    env = os.environ.get("NETLLM_ABR_CHECKPOINT")
    return Path(env).expanduser() if env else DEFAULT_CHECKPOINT


AUTO_CPU_SCHEME = "int8-split"
"""What quantize=auto serves on a CPU (chosen on the validation split; see the module docstring)."""


def resolve_quantize(quantize: str, device: str) -> str:
    """The scheme `quantize` names on `device`: auto is AUTO_CPU_SCHEME on a CPU with an int8 engine, else
    none."""
    import torch

    from controller.netllm.backbone import pick_device
    from controller.netllm.quantize import SCHEMES

    if quantize == "auto":
        engines = set(torch.backends.quantized.supported_engines) & {"fbgemm", "x86", "qnnpack"}
        return AUTO_CPU_SCHEME if pick_device(device).type == "cpu" and engines else "none"
    if quantize != "none" and quantize not in SCHEMES:
        raise ValueError(f"quantize {quantize!r}: use auto, none, {', '.join(SCHEMES)}")
    return quantize


def shared_model(checkpoint: Path, device: str = "auto", quantize: str = "auto",
                 backbone_path: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint once per process (LoRA merged into the body for serving, quantised as `quantize`
    resolves on `device`) and share it."""
    from controller.netllm.checkpoint import load_checkpoint
    from controller.netllm.quantize import quantize_int8

    quantize = resolve_quantize(quantize, device)

    def load() -> tuple[Any, dict[str, Any]]:
        model, doc = load_checkpoint(Path(checkpoint), device=device, merge_lora=True,
                                     backbone_path=backbone_path)
        return (quantize_int8(model, quantize) if quantize != "none" else model), doc

    return load_once(("netllm-abr", str(Path(checkpoint).resolve()), device, quantize, backbone_path or ""),
                     load)


def served_window(model: Any, serving: dict[str, Any], window: int | None) -> int:
    """The context length to serve: `window`, else the checkpoint's serving.context_steps, else the trained
    window; 2 .. trained window (a 1-step window would leave the KV cache nothing to keep between decisions,
    and longer ones than trained were never seen)."""
    trained = int(model.cfg.window)
    chosen = window if window is not None else serving.get("context_steps", trained)
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not 2 <= chosen <= trained:
        raise ValueError(f"window {chosen!r}: use an integer from 2 to the trained window ({trained})")
    return chosen


class NetLLMPolicy(AbrPolicy):
    name: ClassVar[str] = "netllm"
    blocking: ClassVar[bool] = True

    def __init__(self, checkpoint: str | Path | None = None, device: str = "auto", sample: bool = False,
                 target_return: float | None = None, seed: int = 0, temperature: float = 1.0,
                 inference: str = "kv", quantize: str | None = None,
                 backbone_path: str | None = None, window: int | None = None) -> None:
        path = Path(checkpoint) if checkpoint else default_checkpoint()
        if not (path / "netllm_config.json").is_file():
            raise FileNotFoundError(f"{path}: no NetLLM checkpoint here (netllm_config.json); train one with "
                                    "`netllm train` or pass checkpoint=DIR")
        model, meta = shared_model(path, device, quantize or default_quantize(), backbone_path)
        self._setup(model, meta.get("serving", {}), sample, target_return, seed, temperature, inference,
                    window=window)

    @classmethod
    def from_model(cls, model: Any, serving: dict[str, Any] | None = None, target_return: float | None = None,
                   sample: bool = False, seed: int = 0, temperature: float = 1.0,
                   inference: str = "kv", lean: bool = True, window: int | None = None) -> "NetLLMPolicy":
        """A policy around an in-memory model (validation during training, tests, benchmarks; `lean`: see
        controller.netllm.inference.DecisionWindow)."""
        policy = cls.__new__(cls)
        policy._setup(model, serving or {}, sample, target_return, seed, temperature, inference, lean, window)
        return policy

    def _setup(self, model: Any, serving: dict[str, Any], sample: bool, target_return: float | None,
               seed: int, temperature: float, inference: str, lean: bool = True,
               window: int | None = None) -> None:
        import torch

        from controller.netllm.inference import DecisionWindow

        if not temperature > 0:
            raise ValueError("temperature must be > 0")
        self.model = model
        self.target_return = float(target_return if target_return is not None else
                                   serving.get("target_return_per_chunk", DEFAULT_TARGET_RETURN_PER_CHUNK))
        if not math.isfinite(self.target_return):
            raise ValueError("target_return must be finite")
        self.max_timestep = int(serving.get("max_trained_timestep", model.cfg.max_timestep - 1))
        self.min_timestep = min(int(serving.get("min_trained_timestep", 1)), self.max_timestep)
        self.return_scale = float(model.cfg.return_scale)
        self.sample = bool(sample)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._window = DecisionWindow(model, mode=inference, lean=lean,
                                      window=served_window(model, serving, window))
        self._prev_features: np.ndarray | None = None
        self._prev_chunk = -1
        self._prev_answer = 0
        self._session = ""
        self._return = 0.0

    def reset(self) -> None:
        self._window.reset()
        self._prev_features = None
        self._prev_chunk = -1
        self._return = 0.0
        self._generator.manual_seed(self.seed)

    def _follows(self, obs: AbrObservation, offset: int) -> bool:
        """`obs` is this session's chunk `offset` after the last one decided."""
        return (self._prev_features is not None and obs.session_id == self._session
                and obs.chunk_index == self._prev_chunk + offset)

    def _update_return(self, obs: AbrObservation, features: np.ndarray) -> None:
        from controller.netllm.abr_features import previous_chunk_qoe

        if not self._follows(obs, 1):
            self.reset()
            self._session = obs.session_id
            self._return = self.target_return * obs.chunks_remaining
            return
        self._window.record_played(obs.last_quality)
        reported = obs.extra.get("last_chunk_qoe") if obs.extra else None
        # Parsed requests are checked already; this also guards observations built in code (NaN fails here).
        if isinstance(reported, (int, float)) and not isinstance(reported, bool) \
                and abs(reported) <= MAX_CHUNK_QOE_ABS:
            qoe = float(reported)
        else:
            qoe = previous_chunk_qoe(self._prev_features, features)
        self._return -= qoe

    def select_quality(self, obs: AbrObservation) -> int:
        import torch

        from controller.netllm.abr_features import observation_features

        if self._follows(obs, 0):  # a retry of the request just answered
            return self._prev_answer
        features = observation_features(obs)
        self._update_return(obs, features)
        # Chunk indices outside the trained episodes reuse the nearest trained timestep embedding (the other
        # rows of the table were never trained).
        timestep = min(max(obs.chunk_index, self.min_timestep), self.max_timestep)
        logits = self._window.decide(self._return / self.return_scale, features, timestep)
        if self.sample:
            probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
            action = int(torch.multinomial(probs, 1, generator=self._generator))
        else:
            action = int(torch.argmax(logits))
        self._window.commit(action)
        self._prev_features = features
        self._prev_chunk = obs.chunk_index
        self._prev_answer = action
        return action

    @property
    def context_steps(self) -> int:
        return self._window.context_steps
