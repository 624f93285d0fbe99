"""Lean incremental decoding of a Llama-architecture body, for serving decisions.

A decision feeds ~8 tokens through the body. With transformers' generic `LlamaModel.forward` about half of a
CPU decision went to Python and small-op overhead around the matmuls (mask building, cache bookkeeping, rotary
position ids, grouped-query `repeat_kv` copies). This module runs the same layers' weights with the same math:
- a preallocated key/value cache per session (no concatenation per step);
- rotary cos/sin tables computed once, by the body's own rotary module (so every static RoPE variant of the
  config is honoured);
- grouped-query attention without copying keys/values: the query heads that share a key/value head are
  stacked along the sequence axis and attend to that head's keys with one causal mask;
- queries and keys rotated in one pass (with a fused q/k/v layer they are adjacent columns of its output), and
  attention as three plain ops (scaled scores plus mask, softmax, weighted values): at ~8 queries torch's
  `scaled_dot_product_attention` took its generic path on the CPU, ~2.5x slower than these three.
It calls the body's own linear modules, so LoRA-merged, int8-quantised (controller.netllm.quantize) and
outlier-split layers work unchanged; fused q/k/v and gate/up projections are used when a layer has them.
`LlamaDecoder.supports` says which bodies qualify; others keep the transformers path
(controller.netllm.inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far: (layers, kv_heads, capacity, head_dim) each."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in float32, scale in the input dtype (one fused op in float32)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated: rotate_half(x) * sin == roll(x, half) * signed sin, for Llama's rotary
    layout (the two halves of a head share one frequency each)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


class LlamaDecoder:
    """Runs a Llama body (`LlamaModel`: layers, norm, rotary_emb) over new tokens on top of a `KVCache`."""

    def __init__(self, body: nn.Module, capacity: int) -> None:
        if not self.supports(body):
            raise ValueError("LlamaDecoder needs a Llama-architecture body without sliding-window attention")
        cfg = body.config
        self.body = body
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self.capacity = capacity
        param = next(body.parameters())
        self._device = param.device
        self._dtype = body.norm.weight.dtype
        self._cos, self._sin = self._rotary_tables(capacity)

    @staticmethod
    def supports(body: nn.Module) -> bool:
        cfg = getattr(body, "config", None)
        layers = getattr(body, "layers", None)
        return (cfg is not None and getattr(cfg, "model_type", "") == "llama" and layers is not None
                and hasattr(body, "norm") and hasattr(body, "rotary_emb")
                and all(hasattr(layer, p) for layer in layers for p in _LAYER_PARTS)
                and not getattr(cfg, "sliding_window", None))

    def _rotary_tables(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.arange(positions, device=self._device).unsqueeze(0)
        probe = torch.zeros(1, device=self._device, dtype=self._dtype)
        cos, sin = self.body.rotary_emb(probe, ids)
        return cos[0], _signed_sin(sin[0])  # (positions, head_dim)

    def new_cache(self) -> KVCache:
        shape = (len(self.body.layers), self.kv_heads, self.capacity, self.head_dim)
        return KVCache(torch.empty(shape, device=self._device, dtype=self._dtype),
                       torch.empty(shape, device=self._device, dtype=self._dtype))

    def _grow(self, cache: KVCache, needed: int) -> None:
        """Room for `needed` tokens (a caller feeding more than the window it announced)."""
        capacity = max(needed, 2 * cache.keys.shape[2])
        pad = capacity - cache.keys.shape[2]
        cache.keys = F.pad(cache.keys, (0, 0, 0, pad))
        cache.values = F.pad(cache.values, (0, 0, 0, pad))
        if capacity > self._cos.shape[0]:
            self._cos, self._sin = self._rotary_tables(capacity)

    def _qk_v(self, attn: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys side by side (n, heads + kv_heads, head_dim), and values (n, kv_heads * head_dim):
        one matmul when the layer has a fused `qkv_proj` (controller.netllm.quantize.fuse_projections)."""
        n, qk_width = h.shape[0], (self.heads + self.kv_heads) * self.head_dim
        fused = getattr(attn, "qkv_proj", None)
        if fused is None:
            qk = torch.cat((attn.q_proj(h), attn.k_proj(h)), dim=-1)
            v = attn.v_proj(h)
        else:
            qkv = fused(h)
            qk, v = qkv[:, :qk_width], qkv[:, qk_width:]
        return qk.view(n, self.heads + self.kv_heads, self.head_dim), v

    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Final hidden states (1, n, width) of `tokens` (1, n, width); appends their keys/values to `cache`."""
        if tokens.dim() != 3 or tokens.shape[0] != 1:
            raise ValueError("LlamaDecoder decodes one sequence: tokens must be (1, n, width)")
        n, start = tokens.shape[1], cache.length
        end = start + n
        if end > cache.keys.shape[2]:
            self._grow(cache, end)
        cos, sin = self._cos[start:end], self._sin[start:end]
        # Query row g*n + t (query head g of a key/value group, token t) sees keys 0 .. start + t.
        group = self.heads // self.kv_heads
        # An additive float mask, added to the scores by the same op that computes them (one copy per key/value
        # head: baddbmm is slower with a broadcast one).
        allowed = torch.ones(n, end, dtype=torch.bool, device=tokens.device).tril(start)
        mask = torch.zeros(n, end, dtype=self._dtype, device=tokens.device).masked_fill_(~allowed, float("-inf"))
        mask = mask.repeat(group, 1).expand(self.kv_heads, -1, -1).contiguous()
        x = tokens[0].to(self._dtype)
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for i, layer in enumerate(self.body.layers):
            attn = layer.self_attn
            qk, v = self._qk_v(attn, _rms_norm(x, layer.input_layernorm))
            qk = qk * cos + torch.roll(qk, head_dim // 2, -1) * sin
            cache.keys[i, :, start:end] = qk[:, heads:].transpose(0, 1)
            cache.values[i, :, start:end] = v.view(n, kv_heads, head_dim).transpose(0, 1)
            q = qk[:, :heads].transpose(0, 1).reshape(kv_heads, group * n, head_dim)
            scores = torch.baddbmm(mask, q, cache.keys[i, :, :end].transpose(1, 2), alpha=attn.scaling)
            # Softmax in float32 whatever the body's dtype, as transformers' eager attention does.
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.bmm(weights, cache.values[i, :, :end])
            out = out.view(heads, n, head_dim).transpose(0, 1).reshape(n, -1)
            x = x + attn.o_proj(out)
            h = _rms_norm(x, layer.post_attention_layernorm)
            mlp = layer.mlp
            gate_up = getattr(mlp, "gate_up_proj", None)
            gate, up = gate_up(h).chunk(2, -1) if gate_up is not None else (mlp.gate_proj(h), mlp.up_proj(h))
            x = x + mlp.down_proj(mlp.act_fn(gate) * up)
        cache.length = end
        return _rms_norm(x, self.body.norm).unsqueeze(0)
