"""NetLLM-VP: an LLM adapted to viewport prediction (NetLLM's VP task), its config and checkpoint folder.

Model, one pass, no text: the history's samples become one token each (`history_features`: offsets from the
last pose, sin(pitch), sin/cos(roll); a 2-layer MLP to the backbone's width plus a learned position
embedding, then LayerNorm so tokens sit at the scale the LLM expects); the backbone (LoRA on its attention
projections, the rest frozen, reusing `controller.netllm.model.apply_finetune_mode`) reads them causally;
a regression head reads the LAST token's hidden state and predicts all `horizon` future offsets from the last
pose at once. The head's output layer starts at zero, so an untrained model is exactly no-motion; training
minimises the L1 error in degrees (the MAE) of the offsets.

Checkpoint folder (the project's checkpoint style, safetensors + JSON, never pickle):
- `netllm_vp_config.json`: format `netllm-vp`, the model config, the backbone (kind, path, fingerprint,
  width), storage dtype, the input encoding, training provenance;
- `adapter_config.json` + `adapter_model.safetensors`: the LoRA adapter as PEFT writes them;
- `netllm_vp_modules.safetensors`: encoder and head;
- `backbone.safetensors`: only for backbones not reproducible from their source (random kinds) or full
  fine-tuning. The SmolLM2 body itself is never copied: it is rebuilt from the embedded GGUF, and its
  fingerprint must match the one recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from controller.netllm.llm_parts import (  # noqa: F401  (ADAPTER_CONFIG: callers import it from here)
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, BACKBONE_FILE, load_body, write_llm_parts)
from controller.netllm.model import LowRankAdaptation, apply_finetune_mode
from controller.vp.track import (
    FORMAT_VERSION,
    INPUT_FEATURES,
    OFFSET_SCALE_DEG,
    VpCheckpointError,
    check_encoding,
    check_storage_dtype,
    encoding_json,
    load_state_strict,
    read_json_config,
    read_tensors,
    write_folder_atomically,
)
from traces.headmove import HISTORY_LEN, HORIZON_LEN

VP_FORMAT = "netllm-vp"
CONFIG_FILE = "netllm_vp_config.json"
MODULES_FILE = "netllm_vp_modules.safetensors"


@dataclass
class NetllmVpConfig(LowRankAdaptation):
    hidden_size: int = 576
    """LLM token width (taken from the backbone)."""
    history_len: int = HISTORY_LEN
    horizon: int = HORIZON_LEN
    encoder_channels: int = 128
    """Width of the per-sample MLP before the projection to the LLM's width."""
    head_channels: int = 256
    """Width of the regression head's hidden layer."""


class NetllmVp(nn.Module):
    def __init__(self, cfg: NetllmVpConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.ModuleDict({
            "mlp": nn.Sequential(nn.Linear(INPUT_FEATURES, cfg.encoder_channels), nn.GELU(),
                                 nn.Linear(cfg.encoder_channels, cfg.hidden_size)),
            "position": nn.Embedding(cfg.history_len, cfg.hidden_size),
            "norm": nn.LayerNorm(cfg.hidden_size)})
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.head_channels), nn.GELU(),
                                  nn.Linear(cfg.head_channels, cfg.horizon * 3))
        nn.init.zeros_(self.head[-1].weight)  # start as no-motion
        nn.init.zeros_(self.head[-1].bias)
        self._body_dtype = next(backbone.parameters()).dtype

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(B, H, INPUT_FEATURES) -> (B, H, hidden) token embeddings."""
        positions = torch.arange(features.shape[1], device=features.device)
        tokens = self.encoder["mlp"](features) + self.encoder["position"](positions)[None]
        return self.encoder["norm"](tokens)

    def forward(self, features: torch.Tensor, horizon: int | None = None) -> torch.Tensor:
        """Offsets (B, cfg.horizon, 3) in OFFSET_SCALE_DEG units (`horizon` is accepted and ignored: the head
        always predicts cfg.horizon steps; callers cut or extend)."""
        if features.shape[1] > self.cfg.history_len:
            raise ValueError(f"history of {features.shape[1]} samples; the model has "
                             f"{self.cfg.history_len} positions")
        out = self.backbone(inputs_embeds=self.tokens(features).to(self._body_dtype))
        last = out.last_hidden_state[:, -1].float()
        return self.head(last).view(features.shape[0], self.cfg.horizon, 3)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean absolute offset error in degrees over steps and axes (the MAE, unwrapped)."""
        predicted = self(batch["features"]) * OFFSET_SCALE_DEG
        targets = batch["targets"]
        return (predicted[:, :targets.shape[1]] - targets).abs().mean()

    def trainable_parameters(self) -> tuple[int, int]:
        total = sum(p.numel() for p in self.parameters())
        return sum(p.numel() for p in self.parameters() if p.requires_grad), total


def build_netllm_vp(cfg: NetllmVpConfig, backbone: nn.Module) -> NetllmVp:
    """Fine-tuning mode applied to the body; encoder and head in float32 on the body's device."""
    device = next(backbone.parameters()).device
    model = NetllmVp(cfg, apply_finetune_mode(backbone, cfg))
    model.encoder.to(device)
    model.head.to(device)
    return model


def save_netllm_vp(model: NetllmVp, out_dir: Path, backbone_info: dict[str, Any],
                   storage_dtype: str = "bfloat16", training: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint folder atomically."""
    check_storage_dtype(storage_dtype)
    modules = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    modules.update({f"head.{k}": v for k, v in model.head.state_dict().items()})

    def write(folder: Path) -> None:
        files = write_llm_parts(folder, model.backbone, modules, MODULES_FILE, model.cfg.finetune,
                                backbone_info, storage_dtype)
        doc = {"format": VP_FORMAT, "format_version": FORMAT_VERSION, "model": model.cfg.to_json(),
               "backbone": backbone_info, "storage_dtype": storage_dtype, "files": sorted(files),
               "encoding": encoding_json(), "training": training or {}}
        (folder / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    return write_folder_atomically(Path(out_dir), write)


def _load_body(doc: dict[str, Any], ckpt_dir: Path, device: str, dtype: str, backbone_path: str | None
               ) -> tuple[nn.Module, dict[str, Any]]:
    body, info = load_body(doc.get("backbone"), ckpt_dir / CONFIG_FILE, device, dtype, VpCheckpointError,
                           backbone_path)
    if BACKBONE_FILE in doc["files"]:
        load_state_strict(body, read_tensors(ckpt_dir / BACKBONE_FILE), ckpt_dir / BACKBONE_FILE)
    return body, info


def load_netllm_vp(ckpt_dir: Path, device: str = "cpu", dtype: str = "auto", merge_lora: bool = True,
                   backbone_path: str | None = None) -> tuple[NetllmVp, dict[str, Any]]:
    """The model (eval mode, no gradients) and the checkpoint's config document. `merge_lora` folds the
    adapter into the body (faster serving)."""
    from peft import set_peft_model_state_dict

    ckpt_dir = Path(ckpt_dir)
    doc = read_json_config(ckpt_dir / CONFIG_FILE, VP_FORMAT)
    check_encoding(doc, ckpt_dir / CONFIG_FILE)
    try:
        cfg = NetllmVpConfig.from_json(doc["model"])
    except (TypeError, ValueError) as exc:
        raise VpCheckpointError(f"{ckpt_dir / CONFIG_FILE}: bad model config ({exc})") from exc
    body, info = _load_body(doc, ckpt_dir, device, dtype, backbone_path)
    model = build_netllm_vp(cfg, body)
    load_state_strict(nn.ModuleDict({"encoder": model.encoder, "head": model.head}),
                      read_tensors(ckpt_dir / MODULES_FILE), ckpt_dir / MODULES_FILE)
    if cfg.finetune == "lora":
        adapter = read_tensors(ckpt_dir / ADAPTER_WEIGHTS)
        result = set_peft_model_state_dict(model.backbone, adapter)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise VpCheckpointError(f"{ckpt_dir / ADAPTER_WEIGHTS}: adapter does not match the model "
                                    f"(unexpected {list(result.unexpected_keys)[:5]}, missing {missing[:5]})")
        if merge_lora:
            model.backbone = model.backbone.merge_and_unload()
    model.requires_grad_(False)
    model.eval()
    doc["backbone_loaded"] = info
    return model, doc
