"""Safetensors files of trained weights, as every checkpoint format of the project writes and reads them:
casts for storage, reads that name the file on any problem, and loads that check every name and shape.
Nothing here unpickles. torch is imported lazily (policy modules import this without loading torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STORAGE_DTYPE_NAMES = ("float32", "bfloat16", "float16")


def cast_for_storage(state: dict[str, Any], dtype_name: str) -> dict[str, Any]:
    """CPU, contiguous copies; floating-point tensors in `dtype_name` (one of STORAGE_DTYPE_NAMES)."""
    import torch

    if dtype_name not in STORAGE_DTYPE_NAMES:
        raise ValueError(f"storage dtype {dtype_name!r}: use one of {', '.join(STORAGE_DTYPE_NAMES)}")
    dtype = getattr(torch, dtype_name)
    return {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in state.items()}


def read_safetensors(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The tensors of `path`; a missing or unreadable file raises `error` naming it."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise error(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise error(f"{path}: not a readable safetensors file ({exc})") from exc


def load_checked(module: Any, state: dict[str, Any], source: Path, error: type[Exception],
                 may_lack: tuple[str, ...] = ()) -> None:
    """Load `state` into `module` (anything with state_dict/load_state_dict); every name and shape must
    match, except that the names in `may_lack` may be absent from `state` (they keep the module's initial
    values). Tensors are cast to the module's dtypes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state) - set(may_lack))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise error(f"{source}: tensors do not match the model (missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise error(f"{source}: {name} has shape {tuple(tensor.shape)}, the model wants "
                        f"{tuple(own[name].shape)}")
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    if may_lack:
        module.load_state_dict(state, strict=False)  # the absent ones keep their initial values
    else:
        module.load_state_dict(state)
