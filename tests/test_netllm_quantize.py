"""int8 CPU serving: activation smoothing keeps the float model's outputs, moves activation outliers into the
weights, and makes int8 logits closer to float32 than plain dynamic int8 when a channel is an outlier."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from controller.netllm.checkpoint import load_checkpoint
from controller.netllm.quantize import (OutlierSplitLinear, QuantScheme, calibration_windows,
                                        input_channel_max, quantize_int8, smooth_activations,
                                        split_down_proj_outliers, synthetic_session)
from tests.test_netllm_support import tiny_checkpoint


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> torch.nn.Module:
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("quant") / "tiny")
    model, _ = load_checkpoint(Path(ckpt), device="cpu", merge_lora=True)
    return model.eval()


def with_outlier(model: torch.nn.Module, channel: int = 5, factor: float = 300.0) -> torch.nn.Module:
    """A copy whose first layer feeds q/k/v and gate/up one input channel `factor` times the others, as the
    massive activations of pre-trained LLMs do."""
    out = copy.deepcopy(model)
    layer = out.backbone.layers[0]
    with torch.no_grad():
        layer.input_layernorm.weight[channel] *= factor
        layer.post_attention_layernorm.weight[channel] *= factor
    return out


def logits(model: torch.nn.Module, windows: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.inference_mode():
        return model(*windows)


def test_synthetic_sessions_are_deterministic_and_valid() -> None:
    a, b = synthetic_session(10, 3), synthetic_session(10, 3)
    assert [o.buffer_s for o in a] == [o.buffer_s for o in b]
    assert all(0 <= o.last_quality < 6 and o.chunks_remaining > 0 for o in a)
    assert [o.buffer_s for o in synthetic_session(10, 4)] != [o.buffer_s for o in a]


def test_smoothing_keeps_the_float_outputs_and_changes_the_weights(merged) -> None:
    model = with_outlier(merged)
    windows = calibration_windows(model)
    before = logits(model, windows)
    smoothed = copy.deepcopy(model)
    assert smooth_activations(smoothed, input_channel_max(smoothed, windows)) == len(model.backbone.layers)
    torch.testing.assert_close(logits(smoothed, windows), before, rtol=1e-4, atol=1e-4)
    q0, q1 = model.backbone.layers[0].self_attn.q_proj.weight, smoothed.backbone.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q0, q1)


def test_smoothing_flattens_an_outlier_channel(merged) -> None:
    model = with_outlier(merged)
    windows = calibration_windows(model)

    def outlier_ratio(m: torch.nn.Module) -> float:
        x = input_channel_max(m, windows)["layers.0.self_attn.q_proj"]
        return float(x.max() / x.median())

    before = outlier_ratio(model)
    smooth_activations(model, input_channel_max(model, windows))
    assert before > 50
    assert outlier_ratio(model) < before / 5


def test_smoothed_int8_is_closer_to_float32_than_plain_int8(merged) -> None:
    model = with_outlier(merged)
    windows = calibration_windows(model, sessions=3, seed=7)  # not the calibration sessions
    reference = logits(model, windows)
    plain = logits(quantize_int8(copy.deepcopy(model), "int8-plain"), windows)
    smoothed = logits(quantize_int8(copy.deepcopy(model), "int8-full"), windows)
    err_plain = float((plain - reference).abs().mean())
    err_smoothed = float((smoothed - reference).abs().mean())
    assert err_smoothed < 0.5 * err_plain


def with_down_proj_outlier(model: torch.nn.Module, channel: int = 7, factor: float = 300.0) -> torch.nn.Module:
    """A copy whose every layer feeds down_proj one input channel `factor` times the others."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer in out.backbone.layers:
            layer.mlp.up_proj.weight[channel] *= factor
            layer.mlp.down_proj.weight[:, channel] /= factor
    return out


def test_outlier_split_computes_the_same_float_outputs_and_finds_the_outlier(merged) -> None:
    model = with_down_proj_outlier(merged)
    windows = calibration_windows(model)
    before = logits(model, windows)
    split = copy.deepcopy(model)
    assert split_down_proj_outliers(split, input_channel_max(split, windows)) >= len(split.backbone.layers)
    mlp = split.backbone.layers[0].mlp
    assert isinstance(mlp.down_proj, OutlierSplitLinear)
    # the planted channel (its up_proj row scaled 300x) was moved among the trailing, float32 ones
    row_norms = mlp.up_proj.weight.norm(dim=1)
    assert int(row_norms.argmax()) >= mlp.down_proj.inliers
    torch.testing.assert_close(logits(split, windows), before, rtol=1e-4, atol=1e-4)


def test_outlier_split_int8_is_closer_to_float32_than_int8_everywhere(merged) -> None:
    model = with_down_proj_outlier(merged)
    windows = calibration_windows(model, sessions=3, seed=7)
    reference = logits(model, windows)
    no_smooth = QuantScheme(smooth_alpha=0.0)
    full = logits(quantize_int8(copy.deepcopy(model), no_smooth), windows)
    split = logits(quantize_int8(copy.deepcopy(model), QuantScheme(smooth_alpha=0.0, split_down_proj=True)), windows)
    err_full = float((full - reference).abs().mean())
    err_split = float((split - reference).abs().mean())
    assert err_split < 0.5 * err_full


def test_schemes_choose_which_layers_stay_float(merged) -> None:
    def float_linears(scheme: str) -> set[str]:
        model = quantize_int8(copy.deepcopy(merged), scheme)
        return {name.rsplit(".", 1)[-1] for name, m in model.backbone.named_modules()
                if type(m) is torch.nn.Linear or isinstance(m, OutlierSplitLinear)}

    assert float_linears("int8") == {"down_proj"}
    assert float_linears("int8-split") == {"down_proj"}  # its outlier channels only
    assert float_linears("int8-full") == set()
    split = quantize_int8(copy.deepcopy(merged), "int8-split").backbone.layers[0].mlp.down_proj
    assert type(split.inlier) is not torch.nn.Linear  # its inlier channels are int8


def test_quantize_refuses_what_it_cannot_serve(merged, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="smooth_alpha"):
        quantize_int8(copy.deepcopy(merged), QuantScheme(smooth_alpha=1.5))
    with pytest.raises(ValueError, match="int8-full"):
        quantize_int8(copy.deepcopy(merged), "int4")
    ckpt = tiny_checkpoint(tmp_path / "lora")
    unmerged, _ = load_checkpoint(ckpt, device="cpu", merge_lora=False)
    with pytest.raises(ValueError, match="merge the LoRA adapter"):
        quantize_int8(unmerged)


@pytest.mark.parametrize("scheme", ["int8", "int8-split", "int8-full"])
def test_fused_projections_compute_what_the_separate_int8_layers_do(merged, monkeypatch, scheme: str) -> None:
    import controller.netllm.quantize as quantize
    from controller.netllm.llama_decode import LlamaDecoder

    windows = calibration_windows(merged, sessions=2, seed=11)
    fused = quantize_int8(copy.deepcopy(merged), scheme)
    monkeypatch.setattr(quantize, "fuse_projections", lambda model: 0)
    separate = quantize_int8(copy.deepcopy(merged), scheme)
    layer = fused.backbone.layers[0]
    assert isinstance(layer.self_attn.q_proj, quantize.OutputSlice) and hasattr(layer.mlp, "gate_up_proj")
    assert not hasattr(separate.backbone.layers[0].self_attn, "qkv_proj")
    # transformers' forward (through the slices) and the lean decoder (through the fused layers)
    torch.testing.assert_close(logits(fused, windows), logits(separate, windows), rtol=1e-5, atol=1e-5)
    tokens = torch.randn(1, 9, merged.cfg.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        out = [LlamaDecoder(m.backbone, 16)(tokens, LlamaDecoder(m.backbone, 16).new_cache())
               for m in (fused, separate)]
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)
