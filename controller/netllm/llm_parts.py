"""The LLM parts every NetLLM checkpoint stores (ABR, VP and CJS alike), and how the body is found again.

A checkpoint folder holds its task's config JSON, the task's trained modules (encoder, heads) in one
safetensors file, the LoRA adapter in peft's layout (`adapter_config.json` + `adapter_model.safetensors`),
and the body's own weights (`backbone.safetensors`) only when they cannot be rebuilt: a fully fine-tuned
body, or a randomly initialised one (`RANDOM_KINDS`). A pre-trained body is rebuilt from its source and
checked by its fingerprint, so no checkpoint carries LLM weights it does not need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from controller.netllm.backbone import BackboneError, BackboneSpec, load_backbone
from netllm.tensor_files import STORAGE_DTYPE_NAMES, cast_for_storage

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BACKBONE_FILE = "backbone.safetensors"
RANDOM_KINDS = ("tiny", "llama2-7b-shape", "smollm2-random")
"""Backbone kinds with random weights: a checkpoint on one of them stores its body."""
STORAGE_DTYPES = {name: getattr(torch, name) for name in STORAGE_DTYPE_NAMES}


def peft_of(backbone: nn.Module) -> Any:
    """The peft wrapper when the body has LoRA adapters, else None."""
    return backbone if hasattr(backbone, "peft_config") else None


def plain_body_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The body's own weights under their plain names (peft renames wrapped layers to `*.base_layer.*`)."""
    peft_model = peft_of(backbone)
    body = peft_model.get_base_model() if peft_model is not None else backbone
    return {k.replace(".base_layer.", "."): v for k, v in body.state_dict().items() if "lora_" not in k}


def write_llm_parts(folder: Path, backbone: nn.Module, modules: dict[str, torch.Tensor], modules_file: str,
                    finetune: str, backbone_info: dict[str, Any], storage_dtype: str) -> list[str]:
    """Write the trained modules, the adapter (if any) and the body (if it cannot be rebuilt) into
    `folder`; the names of the files written."""
    from peft import get_peft_model_state_dict

    save_file(cast_for_storage(modules, storage_dtype), str(folder / modules_file), metadata={"format": "pt"})
    files = [modules_file]
    peft_model = peft_of(backbone)
    if peft_model is not None:
        peft_model.peft_config["default"].save_pretrained(str(folder))
        adapter = cast_for_storage(get_peft_model_state_dict(peft_model), storage_dtype)
        save_file(adapter, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        files += [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    if finetune == "full" or backbone_info["kind"] in RANDOM_KINDS:
        save_file(cast_for_storage(plain_body_state(backbone), storage_dtype), str(folder / BACKBONE_FILE),
                  metadata={"format": "pt"})
        files.append(BACKBONE_FILE)
    return files


def load_body(saved: Any, source: Path, device: str, dtype: str, error: type[Exception],
              backbone_path: str | None = None, check_fingerprint: bool = True
              ) -> tuple[nn.Module, dict[str, Any]]:
    """The body a checkpoint's `backbone` entry (`saved`, read from `source`) names, and its info.

    A folder backbone is looked for at `backbone_path` when given (the checkpoint moved to another machine),
    else at the recorded path; a pre-trained body must have the recorded fingerprint. Problems raise `error`.
    """
    if not isinstance(saved, dict) or "kind" not in saved:
        raise error(f"{source}: missing the backbone it was trained on")
    kind = saved["kind"]
    try:
        spec = BackboneSpec.parse(backbone_path or saved.get("path", "")) if kind == "path" else \
            BackboneSpec(kind)
        body, info = load_backbone(spec, device=device, dtype=dtype)
    except BackboneError as exc:
        raise error(f"{source}: backbone {kind} {saved.get('path', '')}: {exc}") from exc
    if check_fingerprint and kind not in RANDOM_KINDS and info.sha256 != saved.get("sha256"):
        raise error(f"{source}: the backbone found ({info.path}) has fingerprint {info.sha256[:12]}..., the "
                    f"checkpoint was trained on {str(saved.get('sha256'))[:12]}...")
    return body, info.to_json()
