"""`netllm-vp`: the LLM adapted to viewport prediction (`controller.vp.netllm_vp_model`) as a VP policy.

Options (constructor keywords: the controller's `vp_policy_options`, `netllm vp-eval --policy-options`):
- `checkpoint`: a NetLLM-VP checkpoint folder; default `models/netllm-vp-smollm2` in the repository, or
  $NETLLM_VP_CHECKPOINT. A folder without `netllm_vp_config.json` is refused with a message saying so.
- `device`: cpu (default), cuda or auto.
- `backbone_path`: where a checkpoint trained on a local model folder finds it on this machine.
- `merge_lora`: fold the adapter into the body's weights for serving (default True; same outputs, faster).

The model predicts its trained horizon (20 steps, 4 s at 5 Hz) in one pass; a shorter horizon is cut, a
longer one holds the last predicted pose. It needs exactly the trained history length (10 samples).
Loaded models are shared by every instance in the process (keyed by folder, device, merge); the controller
runs predictions on its worker thread (`blocking = True`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from controller.vp.track import LearnedVpPolicy, fit_horizon, predict_offsets, resolve_checkpoint
from controller.model_cache import load_once
from netllm.paths import REPO_ROOT

DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "netllm-vp-smollm2"



def shared_model(path: Path, device: str, backbone_path: str | None, merge_lora: bool
                 ) -> tuple[Any, dict[str, Any]]:
    from controller.vp.netllm_vp_model import load_netllm_vp

    return load_once(("netllm-vp", str(path.resolve()), device, backbone_path or "", merge_lora),
                     lambda: load_netllm_vp(path, device=device, merge_lora=merge_lora,
                                            backbone_path=backbone_path))


class NetllmVpPolicy(LearnedVpPolicy):
    name: ClassVar[str] = "netllm-vp"

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu",
                 backbone_path: str | None = None, merge_lora: bool = True) -> None:
        from controller.vp.netllm_vp_model import CONFIG_FILE

        path = resolve_checkpoint(checkpoint, "NETLLM_VP_CHECKPOINT", DEFAULT_CHECKPOINT, CONFIG_FILE,
                                  "netllm train-vp --model netllm-vp")
        self.model, self.meta = shared_model(path, device, backbone_path, bool(merge_lora))
        self.checkpoint = path

    def offsets(self, history_deg: np.ndarray, horizon: int) -> np.ndarray:
        # One pass predicts the trained horizon; fit_horizon cuts it or holds its last pose.
        return fit_horizon(predict_offsets(self.model, history_deg, batch_size=64), horizon)
