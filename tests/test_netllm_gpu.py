"""NetLLM on CUDA: training, checkpoints, the lean decoder and serving give what they give on the CPU.

Skipped without a CUDA device (CI has none); run on a GPU machine with `pytest -m gpu`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_netllm_support import random_batch, small_pool, synthetic_sessions, synthetic_video, tiny_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    device = next(model.parameters()).device
    b = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        return model(b["returns"], b["states"], b["actions"], b["timesteps"]).float().cpu()


def test_checkpoint_loads_on_cuda_with_the_cpu_logits(tmp_path: Path) -> None:
    from controller.netllm.checkpoint import load_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny")
    batch = random_batch(3, 6)
    cpu, _ = load_checkpoint(ckpt, device="cpu", dtype="fp32", merge_lora=True)
    gpu32, _ = load_checkpoint(ckpt, device="cuda", dtype="fp32", merge_lora=True)
    gpu16, doc = load_checkpoint(ckpt, device="cuda", merge_lora=True)  # auto: bf16 on a GPU
    assert next(gpu32.parameters()).is_cuda and doc["backbone_loaded"]["dtype"] == "bfloat16"
    want = _logits(cpu, batch)
    # cuDNN may run the encoder's convolutions in TF32: close, not bit-equal
    torch.testing.assert_close(_logits(gpu32, batch), want, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(_logits(gpu16, batch), want, rtol=0.1, atol=0.1)


def test_lean_decoder_on_cuda_matches_transformers() -> None:
    from controller.netllm.backbone import BackboneSpec, load_backbone
    from controller.netllm.llama_decode import LlamaDecoder

    body, _ = load_backbone(BackboneSpec.parse("tiny"), device="cuda", dtype="bf16")
    tokens = torch.randn(1, 23, body.config.hidden_size, device="cuda",
                        generator=torch.Generator(device="cuda").manual_seed(3))
    decoder = LlamaDecoder(body, capacity=8)  # grows past its capacity on the way
    cache = decoder.new_cache()
    with torch.inference_mode():
        got = torch.cat([decoder(tokens[:, :9], cache), decoder(tokens[:, 9:10], cache),
                         decoder(tokens[:, 10:], cache)], 1)
        want = body(inputs_embeds=tokens.bfloat16()).last_hidden_state
    assert got.is_cuda and got.dtype == torch.bfloat16 and cache.length == 23
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)


def test_serving_on_cuda_plays_sessions_and_kv_agrees_with_recompute(tmp_path: Path) -> None:
    from controller.policies.netllm_policy import NetLLMPolicy
    from emulation.abr_sim import simulate_session

    ckpt = tiny_checkpoint(tmp_path / "tiny")
    video = synthetic_video()
    trace = synthetic_sessions(1)[0].trace
    levels = {}
    for mode in ("kv", "recompute"):
        policy = NetLLMPolicy(checkpoint=ckpt, device="cuda", inference=mode)
        assert next(policy.model.parameters()).is_cuda
        levels[mode] = simulate_session(policy, trace, video, start_index=1).qualities
        assert len(levels[mode]) == video.chunk_count and all(0 <= q < 6 for q in levels[mode])
    # bf16 may flip a near-tie; within the window the two schemes see the same context
    same = np.mean(np.asarray(levels["kv"][:6]) == np.asarray(levels["recompute"][:6]))
    assert same >= 5 / 6, levels


def test_train_command_on_cuda_lowers_the_loss(tmp_path: Path) -> None:
    from netllm.cli import main

    pool = tmp_path / "pool"
    small_pool(traces=3, repeats=2).save(pool)
    out = tmp_path / "run"
    assert main(["train", "--pool", str(pool), "--out", str(out), "--backbone", "tiny", "--device", "cuda",
                 "--window", "8", "--micro-batch-size", "8", "--grad-accum", "2", "--lr", "3e-3",
                 "--warmup-steps", "3", "--select-by", "loss", "--valid-fraction", "0.34",
                 "--conv-channels", "8", "--optimizer-steps", "30", "--eval-every", "10"]) == 0
    with open(out / "loss.csv", newline="") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 30 and np.mean(losses[-6:]) < np.mean(losses[:3]) - 0.15
