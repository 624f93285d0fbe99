"""NetLLM checkpoint folders: safetensors + JSON only, in the layout of Hugging Face `save_pretrained`.

A checkpoint folder holds:
- `netllm_config.json`: format name/version, the model config (`NetLLMConfig`), the backbone it was trained on
  (kind, path or package file, fingerprint, width, layers), the storage dtype, and serving defaults
  (`target_return_per_chunk`), plus free-form `training` provenance;
- `adapter_config.json` + `adapter_model.safetensors`: the LoRA adapter, as PEFT writes them (loadable by
  `peft.PeftModel.from_pretrained` on the same backbone);
- `netllm_modules.safetensors`: encoder and networking head;
- `backbone.safetensors`: only when the body itself is not reproducible from its source: random backbones
  (`tiny`, `llama2-7b-shape`, `smollm2-random`) and full fine-tuning.

Loading never unpickles: every tensor comes from `safetensors.torch.load_file`, nothing calls `torch.load`.
Tensors may be stored in bf16/fp16 (`storage_dtype`) to keep a checkpoint small; they are cast back to the
model's float32 (or the backbone's dtype) on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from controller.netllm.llm_parts import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, BACKBONE_FILE, RANDOM_KINDS,
                                         STORAGE_DTYPES, load_body, peft_of, write_llm_parts)
from controller.netllm.model import NetLLMAbr, NetLLMConfig, build_model
from netllm.atomic import write_folder_atomically
from netllm.tensor_files import load_checked, read_safetensors

FORMAT = "netllm-abr"
FORMAT_VERSION = 1
CONFIG_FILE = "netllm_config.json"
MODULES_FILE = "netllm_modules.safetensors"
# ADAPTER_CONFIG, ADAPTER_WEIGHTS, BACKBONE_FILE, RANDOM_KINDS and STORAGE_DTYPES (llm_parts) are imported
# from here by callers too.


class CheckpointError(ValueError):
    """An unusable checkpoint folder; the message names the file."""


def save_checkpoint(model: NetLLMAbr, out_dir: Path, backbone_info: dict[str, Any],
                    storage_dtype: str = "float32", serving: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint folder atomically (a crash leaves the previous one in place)."""
    if storage_dtype not in STORAGE_DTYPES:
        raise CheckpointError(f"storage dtype {storage_dtype!r}: use one of {sorted(STORAGE_DTYPES)}")
    modules = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    modules.update({f"head.{k}": v for k, v in model.head.state_dict().items()})

    def write(staging: Path) -> None:
        files = write_llm_parts(staging, model.backbone, modules, MODULES_FILE, model.cfg.finetune,
                                backbone_info, storage_dtype)
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.cfg.to_json(),
               "backbone": backbone_info, "storage_dtype": storage_dtype, "files": sorted(files),
               "serving": serving or {}, "training": training or {}}
        (staging / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    return write_folder_atomically(Path(out_dir), write)


def read_checkpoint_config(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc}); is {ckpt_dir} a NetLLM checkpoint folder?"
                              ) from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint config")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {doc.get('format_version')} "
                              f"(this code reads {FORMAT_VERSION})")
    for key in ("model", "backbone", "storage_dtype", "files"):
        if key not in doc:
            raise CheckpointError(f"{path}: missing {key!r}")
    return doc


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path, CheckpointError)


def _load_into(module: nn.Module | "_Renamed", state: dict[str, torch.Tensor], source: Path,
               may_lack: tuple[str, ...] = ()) -> None:
    load_checked(module, state, source, CheckpointError, may_lack)


def load_weights(model: NetLLMAbr, ckpt_dir: Path, may_lack: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint's trained tensors into a model built with the same config (e.g. to resume).
    `may_lack`: encoder/head tensors (`encoder.return_bypass`) a fine-tune adds to a checkpoint without them."""
    from peft import set_peft_model_state_dict

    ckpt_dir = Path(ckpt_dir)
    doc = read_checkpoint_config(ckpt_dir)
    if BACKBONE_FILE in doc["files"]:
        peft_model = peft_of(model.backbone)
        body = peft_model.get_base_model() if peft_model is not None else model.backbone
        state = {k: v for k, v in _tensors(ckpt_dir / BACKBONE_FILE).items()}
        own = {k.replace(".base_layer.", "."): k for k in body.state_dict() if "lora_" not in k}
        _load_into(_Renamed(body, own), state, ckpt_dir / BACKBONE_FILE)
    _load_into(nn.ModuleDict({"encoder": model.encoder, "head": model.head}),
               _tensors(ckpt_dir / MODULES_FILE), ckpt_dir / MODULES_FILE, may_lack)
    if model.cfg.finetune == "lora":
        adapter = _tensors(ckpt_dir / ADAPTER_WEIGHTS)
        result = set_peft_model_state_dict(model.backbone, adapter)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise CheckpointError(f"{ckpt_dir / ADAPTER_WEIGHTS}: adapter does not match the model "
                                  f"(unexpected {list(result.unexpected_keys)[:5]}, missing {missing[:5]})")
    return doc


class _Renamed:
    """A module's state_dict under plain names (PEFT's `*.base_layer.*` hidden), for `_load_into`."""

    def __init__(self, module: nn.Module, plain_to_real: dict[str, str]) -> None:
        self.module, self.names = module, plain_to_real

    def state_dict(self) -> dict[str, torch.Tensor]:
        real = self.module.state_dict()
        return {plain: real[name] for plain, name in self.names.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict({self.names[k]: v for k, v in state.items()}, strict=False)


def load_checkpoint(ckpt_dir: Path, device: str = "auto", dtype: str = "auto", merge_lora: bool = False,
                    backbone_path: str | None = None, check_fingerprint: bool = True
                    ) -> tuple[NetLLMAbr, dict[str, Any]]:
    """The model (eval mode) and the checkpoint's config document. `merge_lora` folds the adapter into the
    body's weights (faster serving, no further training); `backbone_path` overrides a folder backbone's
    path."""
    ckpt_dir = Path(ckpt_dir)
    doc = read_checkpoint_config(ckpt_dir)
    try:
        cfg = NetLLMConfig.from_json(doc["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt_dir / CONFIG_FILE}: bad model config ({exc})") from exc
    body, info = load_body(doc["backbone"], ckpt_dir / CONFIG_FILE, device, dtype, CheckpointError,
                           backbone_path, check_fingerprint)
    model = build_model(cfg, body)
    load_weights(model, ckpt_dir)
    if merge_lora and cfg.finetune == "lora":
        model.backbone = model.backbone.merge_and_unload()
    model.requires_grad_(False)
    model.eval()
    doc["backbone_loaded"] = info
    return model, doc
