"""int8 CPU serving of a NetLLM-ABR body: activation smoothing, then dynamic int8 linear layers.

A decision feeds ~8 tokens through the body, so on a CPU it is bound by reading the linear layers' weights:
int8 weights are a quarter of float32's bytes (fbgemm's dynamic int8 linear is ~4x faster here).

Plain dynamic int8 (one activation scale per tensor) changed a quarter of SmolLM2's decisions: a few input
channels of some layers carry activations thousands of times their median (down_proj inputs of layers 2, 11
and 28), so one scale per tensor leaves the other channels a handful of int8 steps. Smoothing (after
SmoothQuant, Xiao et al. 2023) divides each input channel j of a linear layer by
    s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)
and multiplies the weight's column j by s_j: the product is unchanged, the outliers move into the weights,
where per-output-channel int8 scales absorb them. The division is folded into what produces the input, so the
smoothed float model computes exactly what the original did:
- q/k/v inputs: the input RMSNorm's gain; gate/up inputs: the post-attention RMSNorm's gain;
- o_proj inputs: v_proj's output rows (one scale per key/value head channel, shared by the query heads that
  read it: grouped-query attention);
- down_proj inputs (silu(gate) * up): up_proj's output rows.
`max|x_j|` comes from a calibration pass over synthetic sessions (`calibration_windows`): which channels are
outliers is a property of the model, not of the traffic.

The down-projections are the hard part: smoothed, a few of their input channels stay 100-200x their layer's
median (layers 11 and 28). The `int8` scheme keeps them in float32 (about 22 % of the body's weights). The
faster `int8-split` scheme splits them instead (after LLM.int8(), Dettmers et al. 2022): the outlier input
channels (calibrated max above `OUTLIER_RATIO` x the layer's median channel max, about 100 of SmolLM2's 46,080)
go through a small float32 matmul, the others through int8. It is less faithful than `int8` all the same:
with one activation scale for all of a decision's tokens, int8 down-projections lose precision everywhere,
not only at the outliers (even 5 % of the channels in float32 left most of the gap).

Only Llama-style bodies (input_layernorm, self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj) are smoothed;
others are quantised without smoothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from controller.netllm.abr_features import observation_features
from controller.netllm.model import NetLLMAbr
from netllm.abr_state import AbrObservation

SMOOTH_ALPHA = 0.7
"""Migration strength: 0 leaves activations as they are, 1 moves all their range into the weights."""
OUTLIER_RATIO = 3.0
"""An input channel of a split layer is an outlier when its calibrated max |x| (after smoothing) exceeds this
multiple of the median over the layer's channels."""


@dataclass(frozen=True)
class QuantScheme:
    """Which linear layers of the body (name suffixes) int8 serving treats differently."""

    keep_float: tuple[str, ...] = ()
    """Left in float32."""
    split_down_proj: bool = False
    """MLP down-projections int8 except their outlier input channels, which stay float32
    (`OutlierSplitLinear`; Llama-style bodies only)."""
    outlier_ratio: float = OUTLIER_RATIO
    """See OUTLIER_RATIO."""
    smooth_alpha: float = SMOOTH_ALPHA
    """0 turns smoothing off."""


SCHEMES = {
    "int8": QuantScheme(keep_float=("down_proj",)),
    "int8-split": QuantScheme(split_down_proj=True),
    "int8-full": QuantScheme(),
    "int8-plain": QuantScheme(smooth_alpha=0.0),
}
"""Serving schemes, most faithful first among the smoothed ones; how close each stays to float32 and what it
costs is in `quantize_int8`."""
CALIBRATION_SESSIONS = 2
LADDER_KBPS = (300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0)


def synthetic_session(chunks: int, seed: int) -> list[AbrObservation]:
    """Plausible observations of one session: log-normal throughputs, a buffer that moves, growing stalls,
    random levels. Used to calibrate quantisation and to time decisions; no trace or model needed."""
    rng = np.random.default_rng(seed)
    obs, tput, dtime, buffer_s, rebuf, last = [], [], [], 4.0, 0.0, 1
    for c in range(1, chunks + 1):
        tput.append(float(rng.lognormal(np.log(1500), 0.6)))
        dtime.append(float(4.0 * LADDER_KBPS[last] / tput[-1]))
        buffer_s = float(np.clip(buffer_s + 4.0 - dtime[-1], 0, 60))
        rebuf += float(max(0.0, dtime[-1] - buffer_s - 4.0))
        sizes = [[int(b * 500 * rng.uniform(0.85, 1.15)) for b in LADDER_KBPS]]
        obs.append(AbrObservation(c, chunks + 1, last, buffer_s, tput[-8:], dtime[-8:], sizes,
                                  list(LADDER_KBPS), rebuf))
        last = int(rng.integers(6))
    return obs


def calibration_windows(model: NetLLMAbr, sessions: int = CALIBRATION_SESSIONS,
                        seed: int = 1000) -> tuple[torch.Tensor, ...]:
    """(returns, states, actions, timesteps) of `sessions` full context windows of synthetic sessions, with
    the return-to-go of a policy asking for 1.0 QoE per chunk."""
    steps = model.cfg.window
    returns, states, actions, timesteps = [], [], [], []
    for s in range(sessions):
        session = synthetic_session(steps, seed + s)
        states.append(np.stack([observation_features(o) for o in session]))
        returns.append([o.chunks_remaining / model.cfg.return_scale for o in session])
        actions.append([session[i + 1].last_quality if i + 1 < steps else 0 for i in range(steps)])
        timesteps.append([o.chunk_index for o in session])
    device = next(model.parameters()).device
    return (torch.tensor(returns, dtype=torch.float32, device=device),
            torch.from_numpy(np.stack(states)).float().to(device),
            torch.tensor(actions, dtype=torch.long, device=device),
            torch.tensor(timesteps, dtype=torch.long, device=device).clamp_max(model.cfg.max_timestep - 1))


def input_channel_max(model: NetLLMAbr, windows: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """max |input| per input channel of every linear layer of the body, over the calibration windows."""
    stats: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().abs().float().reshape(-1, inputs[0].shape[-1]).amax(0)
            stats[name] = torch.maximum(stats[name], x) if name in stats else x
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.backbone.named_modules()
             if isinstance(m, nn.Linear)]
    try:
        with torch.inference_mode():
            model(*windows)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _scales(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    s = x_max.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1.0 - alpha)
    return s.clamp_min(1e-5)


def _is_llama_layer(layer: nn.Module) -> bool:
    return all(hasattr(layer, a) for a in ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")) \
        and all(hasattr(layer.mlp, p) for p in ("gate_proj", "up_proj", "down_proj"))


@torch.no_grad()
def smooth_activations(model: NetLLMAbr, x_max: dict[str, torch.Tensor], alpha: float = SMOOTH_ALPHA) -> int:
    """Fold smoothing scales into the body in place (same float outputs); returns the layers smoothed."""
    body = model.backbone
    layers = getattr(body, "layers", None)
    if layers is None or not all(_is_llama_layer(layer) for layer in layers):
        return 0
    cfg = body.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    group = heads // kv_heads
    for i, layer in enumerate(layers):
        prefix = f"layers.{i}."
        attn, mlp = layer.self_attn, layer.mlp
        folds = ((layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj), "self_attn.q_proj"),
                 (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj), "mlp.gate_proj"))
        for norm, linears, key in folds:
            w_max = torch.stack([lin.weight.abs().amax(0) for lin in linears]).amax(0)
            s = _scales(x_max[prefix + key], w_max, alpha)
            norm.weight.div_(s)
            for lin in linears:
                lin.weight.mul_(s)
        # o_proj's input channel (head h, d) reads v_proj's output channel (h // group, d).
        x_o = x_max[prefix + "self_attn.o_proj"].view(kv_heads, group, head_dim).amax(1)
        w_o = attn.o_proj.weight.abs().amax(0).view(kv_heads, group, head_dim).amax(1)
        s = _scales(x_o, w_o, alpha)
        attn.v_proj.weight.div_(s.reshape(-1, 1))
        attn.o_proj.weight.mul_(s.unsqueeze(1).expand(kv_heads, group, head_dim).reshape(1, -1))
        s = _scales(x_max[prefix + "mlp.down_proj"], mlp.down_proj.weight.abs().amax(0), alpha)
        mlp.up_proj.weight.div_(s.reshape(-1, 1))
        mlp.down_proj.weight.mul_(s.reshape(1, -1))
    return len(layers)


class OutlierSplitLinear(nn.Module):
    """y = inlier(x[..., :n]) + x[..., n:] @ W[:, n:]^T for a layer whose outlier input channels were moved
    last: `inlier` becomes a dynamic int8 layer whose activation scale no longer has to cover the outliers,
    which keep a small float32 matmul. (Slicing trailing channels is cheap; gathering scattered ones with
    index_select cost ~100 us per call here, as much as the int8 matmul.)"""

    def __init__(self, linear: nn.Linear, inliers: int) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.inliers = inliers
        self.inlier = nn.Linear(inliers, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            self.inlier.weight.copy_(weight[:, :inliers])
            if linear.bias is not None:
                self.inlier.bias.copy_(linear.bias)
        self.register_buffer("outlier_weight", weight[:, inliers:].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inlier(x[..., :self.inliers].contiguous())
        if self.outlier_weight.shape[1]:
            y = y + nn.functional.linear(x[..., self.inliers:], self.outlier_weight)
        return y


@torch.no_grad()
def split_down_proj_outliers(model: NetLLMAbr, x_max: dict[str, torch.Tensor],
                             ratio: float = OUTLIER_RATIO) -> int:
    """Make every Llama MLP's down_proj an `OutlierSplitLinear`; returns the outlier channels found. The MLP's
    intermediate channels are permuted (gate/up rows, down_proj columns: same outputs) so that the outliers
    come last. `x_max` holds the calibrated input maxima of the layers as they are now (smoothed)."""
    layers = getattr(model.backbone, "layers", None)
    if layers is None or not all(_is_llama_layer(layer) for layer in layers):
        return 0
    found = 0
    for i, layer in enumerate(layers):
        mlp = layer.mlp
        x = x_max[f"layers.{i}.mlp.down_proj"]
        is_outlier = x > ratio * x.median()
        order = torch.cat([torch.nonzero(~is_outlier).flatten(), torch.nonzero(is_outlier).flatten()])
        for producer in (mlp.gate_proj, mlp.up_proj):
            producer.weight.copy_(producer.weight[order])
            if producer.bias is not None:
                producer.bias.copy_(producer.bias[order])
        mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, order])
        found += int(is_outlier.sum())
        mlp.down_proj = OutlierSplitLinear(mlp.down_proj, int((~is_outlier).sum()))
    return found


class OutputSlice(nn.Module):
    """Output channels start..stop of a fused layer: keeps q/k/v (gate/up) callable by name for transformers'
    forward after `fuse_projections`, which computes the fused layer once per part there (LlamaDecoder, the
    serving path, calls the fused layer once)."""

    def __init__(self, fused: nn.Module, start: int, stop: int) -> None:
        super().__init__()
        self.fused, self.start, self.stop = fused, start, stop
        self.out_features = stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)[..., self.start:self.stop]


def _concat_dynamic_int8(parts: list[nn.Module]) -> nn.Module:
    """One dynamic int8 linear layer whose outputs are the parts' outputs concatenated. Weights are int8 per
    output channel, so stacking their integers and scales is exact; the activation scale, one per input tensor,
    is the same for parts that share an input."""
    weights = [p.weight() for p in parts]
    int_repr = torch.cat([w.int_repr() for w in weights])
    scales = torch.cat([w.q_per_channel_scales() for w in weights])
    zero_points = torch.cat([w.q_per_channel_zero_points() for w in weights])
    biases = [p.bias() for p in parts]
    bias = None if all(b is None for b in biases) else torch.cat(
        [b if b is not None else torch.zeros(p.out_features) for b, p in zip(biases, parts)])
    fused = torch.ao.nn.quantized.dynamic.Linear(int_repr.shape[1], int_repr.shape[0], dtype=torch.qint8)
    fused.set_weight_bias(torch._make_per_channel_quantized_tensor(int_repr, scales, zero_points, 0), bias)
    return fused


@torch.no_grad()
def fuse_projections(model: NetLLMAbr) -> int:
    """Give every Llama layer whose q/k/v and gate/up projections are all dynamic int8 a fused `qkv_proj` and
    `gate_up_proj`, and make the parts `OutputSlice`s of them; returns the layers fused. Same outputs (same
    activation scale, same integer weights), fewer calls: fbgemm re-quantises and re-packs the activations on
    every call, which for ~8 tokens costs about as much as the matmul (576->960: ~50 us once vs ~105 us in
    three calls here), so `LlamaDecoder` runs two calls where it ran five."""
    layers = getattr(model.backbone, "layers", None)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    if layers is None or not all(_is_llama_layer(layer) for layer in layers):
        return 0
    fused_layers = 0
    for layer in layers:
        groups = ((layer.self_attn, ("q_proj", "k_proj", "v_proj"), "qkv_proj"),
                  (layer.mlp, ("gate_proj", "up_proj"), "gate_up_proj"))
        if not all(isinstance(getattr(parent, n), dynamic) for parent, names, _ in groups for n in names):
            continue
        for parent, names, fused_name in groups:
            parts = [getattr(parent, n) for n in names]
            fused = _concat_dynamic_int8(parts)
            setattr(parent, fused_name, fused)
            start = 0
            for name, part in zip(names, parts):
                setattr(parent, name, OutputSlice(fused, start, start + part.out_features))
                start += part.out_features
        fused_layers += 1
    return fused_layers


def quantize_int8(model: NetLLMAbr, scheme: QuantScheme | str = "int8") -> NetLLMAbr:
    """CPU serving: smooth the body's activations, split the down-projections' outlier channels if asked, then
    make its linear layers dynamic int8 (weights per output channel, activations quantised on the fly), except
    `scheme.keep_float`. Encoder and head stay float32. LoRA must be merged first; the model can no longer be
    trained.

    The shipped SmolLM2 policy on the 29 validation sessions (`benchmarks/bench_netllm_quantize.py`, 1
    thread, 2026-11-28; int8-full and int8-plain are from an earlier checkpoint on a slower machine, when
    float32 scored 0.349 at 118 ms per decision):

    | scheme     | teacher-forced KL | same greedy level | closed-loop mean QoE | ms per decision |
    |------------|-------------------|-------------------|----------------------|-----------------|
    | float32    | 0                 | 100 %             | 0.543                | 65.2            |
    | int8       | 0.0043            | 96.9 %            | 0.527                | 29.4            |
    | int8-split | 0.0150            | 94.5 %            | 0.538                | 17.8            |
    | int8-full  | 0.0233            | 92.2 %            | (0.295 vs 0.349)     | (57 vs 118)     |
    | int8-plain | 0.2023            | 72.3 %            | (0.248 vs 0.349)     | (51 vs 118)     |

    (The earlier checkpoint's rows were timed before `fuse_projections`, which computes the same outputs ~7 %
    faster: int8-split 46.6 against 50.1 ms per decoder call then, interleaved in one process, 1 thread.)

    The closed-loop QoE is noisy: a changed decision changes every later observation. 1 % Gaussian noise on
    the body's weights (KL 0.0009, 98.8 % same level) dropped it to 0.211, and `int8` scored 0.207 or 0.359
    in runs that differed only in the order of float additions. The teacher-forced columns are the stable
    measure; smoothing strength (0.7) and outlier ratio (3) were chosen on them."""
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ValueError(f"quantize {scheme!r}: use one of {', '.join(SCHEMES)}")
        scheme = SCHEMES[scheme]
    if hasattr(model.backbone, "peft_config"):
        raise ValueError("merge the LoRA adapter (merge_lora=True) before quantising")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 dynamic quantisation is a CPU serving option")
    if not 0.0 <= scheme.smooth_alpha <= 1.0:
        raise ValueError("smooth_alpha must be in [0, 1]")
    if next(model.backbone.parameters()).dtype != torch.float32:
        model.backbone.float()
    model.eval()
    if scheme.smooth_alpha > 0 or scheme.split_down_proj:
        windows = calibration_windows(model)
        if scheme.smooth_alpha > 0:
            smooth_activations(model, input_channel_max(model, windows), scheme.smooth_alpha)
        if scheme.split_down_proj:
            split_down_proj_outliers(model, input_channel_max(model, windows), scheme.outlier_ratio)
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        spec = {name: per_channel_dynamic_qconfig for name, m in model.backbone.named_modules()
                if isinstance(m, nn.Linear) and not name.endswith(tuple(scheme.keep_float))}
        model.backbone = torch.ao.quantization.quantize_dynamic(model.backbone, spec, dtype=torch.qint8)
        fuse_projections(model)
    model._body_dtype = torch.float32
    return model
