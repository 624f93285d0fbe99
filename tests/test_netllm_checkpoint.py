"""Checkpoint folders: exact round trip, safetensors only (torch.load never called), errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from controller.netllm.checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BACKBONE_FILE,
    CONFIG_FILE,
    MODULES_FILE,
    CheckpointError,
    load_checkpoint,
    read_checkpoint_config,
)
from tests.test_netllm_support import random_batch, tiny_checkpoint, tiny_model


@pytest.fixture()
def no_torch_load(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must not be used to read checkpoints")

    monkeypatch.setattr(torch, "load", forbidden)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["returns"], batch["states"], batch["actions"], batch["timesteps"])


def test_round_trip_gives_identical_logits(tmp_path: Path, no_torch_load) -> None:
    from controller.netllm.checkpoint import save_checkpoint

    model, info = tiny_model()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    batch = random_batch(3, 6)
    expected = _logits(model, batch)
    save_checkpoint(model, tmp_path / "ckpt", info.to_json())
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == sorted([CONFIG_FILE, ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODULES_FILE, BACKBONE_FILE])
    loaded, doc = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert torch.equal(_logits(loaded, batch), expected)
    merged, _ = load_checkpoint(tmp_path / "ckpt", device="cpu", merge_lora=True)
    torch.testing.assert_close(_logits(merged, batch), expected, rtol=1e-4, atol=1e-5)
    assert doc["backbone"]["kind"] == "tiny" and doc["model"]["window"] == 6


def test_adapter_files_follow_peft_layout(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    adapter_cfg = json.loads((ckpt / ADAPTER_CONFIG).read_text())
    assert adapter_cfg["peft_type"] == "LORA" and adapter_cfg["r"] == 8
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    keys = load_file(str(ckpt / ADAPTER_WEIGHTS)).keys()
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)


def test_bf16_storage_halves_the_size_and_stays_close(tmp_path: Path) -> None:
    fp32 = tiny_checkpoint(tmp_path / "fp32")
    bf16 = tiny_checkpoint(tmp_path / "bf16", storage_dtype="bfloat16")
    assert (bf16 / MODULES_FILE).stat().st_size < 0.6 * (fp32 / MODULES_FILE).stat().st_size
    batch = random_batch(2, 6)
    a, _ = load_checkpoint(fp32, device="cpu")
    b, _ = load_checkpoint(bf16, device="cpu")
    assert next(b.encoder.parameters()).dtype == torch.float32
    torch.testing.assert_close(_logits(b, batch), _logits(a, batch), rtol=0.1, atol=0.1)


def test_missing_or_foreign_folders_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="netllm_config.json: cannot read"):
        read_checkpoint_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not a netllm-abr checkpoint"):
        read_checkpoint_config(tmp_path)


def test_corrupt_tensor_file_names_the_file(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    (ckpt / MODULES_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="netllm_modules.safetensors"):
        load_checkpoint(ckpt, device="cpu")


def test_mismatched_shapes_are_reported(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    doc = json.loads((ckpt / CONFIG_FILE).read_text())
    doc["model"]["conv_channels"] = 16
    (ckpt / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(ckpt, device="cpu")


def test_folder_backbone_fingerprint_is_checked(tmp_path: Path) -> None:
    """A checkpoint trained on a local folder refuses a different folder's weights."""
    from transformers import AutoModel

    from controller.netllm.backbone import BackboneSpec, load_backbone, tiny_config
    from controller.netllm.checkpoint import save_checkpoint
    from controller.netllm.model import NetLLMConfig, build_model

    folder = tmp_path / "hf-model"
    AutoModel.from_config(tiny_config()).save_pretrained(folder)
    body, info = load_backbone(BackboneSpec.parse(str(folder)), device="cpu")
    assert info.kind == "path" and info.path == str(folder.resolve())
    model = build_model(NetLLMConfig(hidden_size=info.hidden_size, conv_channels=8), body)
    ckpt = save_checkpoint(model, tmp_path / "ckpt", info.to_json())
    assert BACKBONE_FILE not in json.loads((ckpt / CONFIG_FILE).read_text())["files"]
    load_checkpoint(ckpt, device="cpu")  # same folder: fine
    # Other weights in the folder (different file sizes): the fingerprint no longer matches.
    bigger = tiny_config()
    bigger.intermediate_size = 256
    AutoModel.from_config(bigger).save_pretrained(folder)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_checkpoint(ckpt, device="cpu")
    load_checkpoint(ckpt, device="cpu", check_fingerprint=False)
