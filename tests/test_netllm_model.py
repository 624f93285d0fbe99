"""NetLLM-ABR model: token layout, causality, LoRA freezing, KV-cache decoding equal to full recompute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controller.netllm.abr_encoder import LAST_STATE_TOKEN, TOKENS_PER_STEP
from controller.netllm.abr_features import OBS_DIM
from controller.netllm.inference import DecisionWindow
from tests.test_netllm_support import random_batch, tiny_model


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    return random_batch(4, 6)


def test_logits_shape_and_levels(batch) -> None:
    model, _ = tiny_model()
    logits = model(batch["returns"], batch["states"], batch["actions"], batch["timesteps"])
    assert logits.shape == (4, 6, 6)
    assert torch.isfinite(logits).all()


def test_head_reads_before_the_action_token(batch) -> None:
    """Changing a step's action must not change that step's logits (no leak), only later steps'."""
    model, _ = tiny_model()
    model.eval()
    with torch.no_grad():
        base = model(batch["returns"], batch["states"], batch["actions"], batch["timesteps"])
        changed = batch["actions"].clone()
        changed[:, 2] = (changed[:, 2] + 3) % 6
        other = model(batch["returns"], batch["states"], changed, batch["timesteps"])
    torch.testing.assert_close(base[:, :3], other[:, :3])
    assert not torch.allclose(base[:, 3:], other[:, 3:])


def test_return_token_conditions_the_step(batch) -> None:
    model, _ = tiny_model()
    model.eval()
    with torch.no_grad():
        base = model(batch["returns"], batch["states"], batch["actions"], batch["timesteps"])
        other = model(batch["returns"] + 5.0, batch["states"], batch["actions"], batch["timesteps"])
    assert not torch.allclose(base[:, 0], other[:, 0])


def test_token_layout_constants() -> None:
    assert TOKENS_PER_STEP == 8 and LAST_STATE_TOKEN == 6


def test_tokens_start_at_the_backbones_embedding_scale(batch) -> None:
    from controller.netllm.model import embedding_rms

    model, _ = tiny_model()
    rms = embedding_rms(model.backbone)
    assert 0.005 < rms < 0.1 and model.cfg.token_rms == pytest.approx(rms)  # recorded for the checkpoint
    with torch.no_grad():
        tokens = model.encoder(batch["returns"], batch["states"], batch["actions"], batch["timesteps"])
    # LayerNorm output has unit RMS per token before the gain; the gain brings it to the embeddings' RMS.
    assert float(tokens.pow(2).mean().sqrt()) == pytest.approx(rms, rel=0.05)


def test_lora_trains_only_adapters_encoder_and_head() -> None:
    model, _ = tiny_model(finetune="lora")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name in trainable:
        assert name.startswith(("encoder.", "head.")) or "lora_" in name, name
    lora = [n for n in trainable if "lora_" in n]
    assert {n.split(".")[-4] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("backbone.") and "lora_" not in n for n in frozen)


def test_lora_step_changes_only_trainable_weights(batch) -> None:
    model, _ = tiny_model(finetune="lora")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.loss(batch).backward()
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        if not p.requires_grad:
            assert not moved, name
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if "lora_B" in n)


def test_full_and_frozen_modes() -> None:
    full, _ = tiny_model(finetune="full")
    assert all(p.requires_grad for p in full.parameters())
    frozen, _ = tiny_model(finetune="frozen")
    assert all(n.startswith(("encoder.", "head.")) for n, p in frozen.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("background,lean", [(False, True), (True, True), (False, False)])
def test_kv_cache_decisions_equal_full_recompute_of_the_same_context(background: bool, lean: bool) -> None:
    model, _ = tiny_model(window=6)
    model.eval()
    kv = DecisionWindow(model, mode="kv", background=background, lean=lean)
    assert (kv._decoder is not None) == lean  # the tiny body is a Llama: the lean decoder serves it
    rng = np.random.default_rng(0)
    steps: list[tuple[float, np.ndarray, int, int]] = []
    contexts = set()
    for t in range(30):
        features = (rng.random(OBS_DIM) * 1000).astype(np.float32)
        ret = float(rng.normal())
        logits = kv.decide(ret, features, t)
        ctx = kv.context_steps
        contexts.add(ctx)
        action = int(rng.integers(6))
        kv.commit(action)
        steps.append((ret, features, t, action))
        span = steps[-ctx:]
        with torch.no_grad():
            states = torch.from_numpy(np.stack([s[1] for s in span]))[None]
            full = model(torch.tensor([[s[0] for s in span]]), states, torch.tensor([[s[3] for s in span]]),
                         torch.tensor([[s[2] for s in span]]))[0, -1]
        torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-5)
    # the window refreshes: contexts run from refresh_steps + 1 = 4 up to the window, never above
    assert max(contexts) == 6 and min(c for c in contexts if c > 3) == 4 and all(c <= 6 for c in contexts)


def test_recompute_mode_uses_the_last_window_steps() -> None:
    model, _ = tiny_model(window=5)
    model.eval()
    win = DecisionWindow(model, mode="recompute")
    rng = np.random.default_rng(1)
    for t in range(9):
        win.decide(float(t), (rng.random(OBS_DIM) * 100).astype(np.float32), t)
        win.commit(t % 6)
        assert win.context_steps == min(t + 1, 5)
    win.reset()
    assert win.context_steps == 0


def test_return_bypass_starts_as_the_same_model_and_adds_the_return_after_the_norm(batch) -> None:
    from controller.netllm.abr_encoder import RETURN_BYPASS_GAIN
    from controller.netllm.backbone import BackboneSpec, load_backbone
    from controller.netllm.model import NetLLMConfig, build_model

    plain, _ = tiny_model()
    torch.manual_seed(0)
    body, info = load_backbone(BackboneSpec("tiny"), device="cpu")
    model = build_model(NetLLMConfig(hidden_size=info.hidden_size, window=6, conv_channels=8, lora_dropout=0.0,
                                     return_bypass=True), body)
    assert model.encoder.return_bypass is not None and model.encoder.return_bypass.requires_grad
    plain.eval(), model.eval()
    args = (batch["returns"], batch["states"], batch["actions"], batch["timesteps"])
    with torch.no_grad():
        torch.testing.assert_close(model(*args), plain(*args))  # zero bypass: the same function
        before = model.encoder(*args)
        model.encoder.return_bypass.normal_()
        after = model.encoder(*args)
    offset = after - before
    torch.testing.assert_close(offset[..., 1:, :], torch.zeros_like(offset[..., 1:, :]))
    expected = batch["returns"][..., None] * RETURN_BYPASS_GAIN * model.cfg.token_rms * model.encoder.return_bypass
    torch.testing.assert_close(offset[..., 0, :], expected)
