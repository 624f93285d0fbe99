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

Only Llama-style bodies (input_layernorm, self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj) are smoothed;
others are quantised without smoothing.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from controller.netllm.abr_features import observation_features
from controller.netllm.model import NetLLMAbr
from netllm.abr_state import AbrObservation

SMOOTH_ALPHA = 0.5
"""Migration strength: 0 leaves activations as they are, 1 moves all their range into the weights."""
KEEP_FLOAT = ("down_proj",)
"""Linear layers (name suffixes) left in float32 by the `int8` scheme: down_proj's inputs have the most
extreme outliers, and int8 there cost validation QoE even after smoothing (see `quantize_int8`)."""
SCHEMES = {"int8": KEEP_FLOAT, "int8-full": ()}
"""Serving schemes: name -> layers kept in float32."""
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


def quantize_int8(model: NetLLMAbr, smooth_alpha: float = SMOOTH_ALPHA,
                  keep_float: tuple[str, ...] = KEEP_FLOAT) -> NetLLMAbr:
    """CPU serving: smooth the body's activations (`smooth_alpha` 0: off), then make its linear layers dynamic
    int8 (weights per output channel, activations quantised on the fly), except those whose name ends with
    one of `keep_float`. Encoder and head stay float32. LoRA must be merged first; the model can no longer
    be trained.

    Why down_proj stays float32 by default: the shipped SmolLM2 policy, on the 29 validation sessions, scored
    mean QoE 0.349 in float32, 0.162 with plain dynamic int8, 0.243 smoothed with every layer int8, and 0.359
    smoothed with down_proj in float32 (a decision policy amplifies small changes: 1 % Gaussian noise on the
    body's weights alone dropped it to 0.211)."""
    if hasattr(model.backbone, "peft_config"):
        raise ValueError("merge the LoRA adapter (merge_lora=True) before quantising")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 dynamic quantisation is a CPU serving option")
    if not 0.0 <= smooth_alpha <= 1.0:
        raise ValueError("smooth_alpha must be in [0, 1]")
    if next(model.backbone.parameters()).dtype != torch.float32:
        model.backbone.float()
    model.eval()
    if smooth_alpha > 0:
        smooth_activations(model, input_channel_max(model, calibration_windows(model)), smooth_alpha)
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        spec = {name: per_channel_dynamic_qconfig for name, m in model.backbone.named_modules()
                if isinstance(m, nn.Linear) and not name.endswith(tuple(keep_float))}
        model.backbone = torch.ao.quantization.quantize_dynamic(model.backbone, spec, dtype=torch.qint8)
    model._body_dtype = torch.float32
    return model
