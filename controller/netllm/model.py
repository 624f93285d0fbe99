"""NetLLM for ABR in one file: config, model (encoder -> LLM body with LoRA -> networking head), loss.

Decision-Transformer tokenisation, as NetLLM's data-driven low-rank networking adaptation (DD-LRNA) uses it:
an episode is a sequence of steps (R_t, s_t, a_t) where R_t is the return-to-go (the sum of the QoE terms
still to come, from chunk t to the end, divided by `return_scale`), s_t the observation and a_t the level
chosen. Each step becomes TOKENS_PER_STEP tokens [R_t, s_t's 6 modality tokens, a_t]; a window holds the last
`window` steps, positions restart at 0 at the window's first token, and the chunk index enters only through
the timestep embedding. The LLM reads the sequence causally; the head reads the hidden state of each step's
last state token, which sees R_t and s_t and everything before but not a_t, and scores the levels. Training
minimises the cross-entropy of a_t at every step of the window; at run time R_0 is the return we ask for and
R_{t+1} = R_t - qoe_t, so the model is steered toward behaviour that earned such returns in the pool.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

import torch
from torch import nn
from torch.nn import functional as F

from controller.netllm.abr_encoder import LAST_STATE_TOKEN, AbrEncoder
from controller.netllm.abr_features import LEVELS

FINETUNE_MODES = ("lora", "full", "frozen")


@dataclass
class LowRankAdaptation:
    """How the LLM body is fine-tuned: the fields every NetLLM task's model config (ABR, VP, CJS) shares, and
    its JSON round trip."""

    finetune: str = "lora"
    """lora: LoRA on the attention projections, rest of the body frozen; full: every weight trains;
    frozen: only the task's encoder and heads train."""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Self:
        unknown = sorted(set(doc) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        return cls(**doc)


@dataclass
class NetLLMConfig(LowRankAdaptation):
    hidden_size: int = 576
    """LLM token width (taken from the backbone)."""
    levels: int = LEVELS
    """Quality levels the head scores."""
    window: int = 20
    """Steps of context the model sees."""
    conv_channels: int = 128
    conv_kernel: int = 4
    max_timestep: int = 128
    """Rows of the timestep embedding; larger chunk indices are clamped to the last row."""
    token_rms: float = 0.0
    """Initial gain of the encoder's output LayerNorm (the RMS of its tokens); 0 = measure the RMS of
    the backbone's input embeddings when the model is built, so tokens start at the scale the LLM knows."""
    return_scale: float = 50.0
    """R_t in tokens = (sum of future per-chunk QoE) / return_scale; 48 chunks of ~1 QoE give ~1."""
    return_bypass: bool = False
    """Also add R_t x a learned direction to the return token after the encoder's LayerNorm (zero at the
    start), so the size of the return asked for is not normalised away (controller.netllm.abr_encoder)."""


def _lora_targets(backbone: nn.Module, wanted: list[str]) -> list[str]:
    """The attention projections this architecture has (OPT names its output projection out_proj)."""
    names = {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules()
             if isinstance(module, nn.Linear)}
    found = [t for t in wanted if t in names]
    if "o_proj" in wanted and "o_proj" not in names and "out_proj" in names:
        found.append("out_proj")
    if not found:
        raise ValueError(f"none of the LoRA targets {wanted} is a linear layer of this backbone")
    return found


def apply_finetune_mode(backbone: nn.Module, cfg: LowRankAdaptation) -> nn.Module:
    """Wrap the body with LoRA (peft) or set which of its weights train."""
    if cfg.finetune not in FINETUNE_MODES:
        raise ValueError(f"finetune {cfg.finetune!r}: use one of {FINETUNE_MODES}")
    if cfg.finetune == "full":
        backbone.requires_grad_(True)
        return backbone
    backbone.requires_grad_(False)
    if cfg.finetune == "frozen":
        return backbone
    from peft import LoraConfig, get_peft_model

    cfg.lora_targets = _lora_targets(backbone, cfg.lora_targets)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), bias="none")
    with warnings.catch_warnings():  # peft 0.21 calls a transformers 5 API deprecated in favour of a new name
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(backbone, lora)


def embedding_rms(backbone: nn.Module) -> float:
    """RMS per element of the backbone's input-embedding table: the scale of the tokens it was trained on."""
    weight = backbone.get_input_embeddings().weight.detach().float()
    return float(weight.pow(2).mean().sqrt())


class NetLLMAbr(nn.Module):
    def __init__(self, cfg: NetLLMConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.token_rms <= 0.0:
            cfg.token_rms = embedding_rms(backbone)
        self.encoder = AbrEncoder(cfg.hidden_size, cfg.levels, cfg.conv_channels, cfg.conv_kernel,
                                  cfg.max_timestep, cfg.token_rms, cfg.return_bypass)
        self.backbone = backbone
        self.head = nn.Linear(cfg.hidden_size, cfg.levels)
        self._body_dtype = next(backbone.parameters()).dtype

    # ---- full forward (training, recompute serving) ----
    def body(self, tokens: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        """LLM hidden states of `tokens` (B, N, width), optionally continuing a KV cache."""
        out = self.backbone(inputs_embeds=tokens.to(self._body_dtype), cache=cache,
                            use_cache=cache is not None)
        return out.last_hidden_state.float(), out.cache

    def forward(self, returns: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        """Level logits (B, T, levels) for each step of the windows."""
        tokens = self.encoder(returns, states, actions, timesteps)
        b, t, k, w = tokens.shape
        hidden, _ = self.body(tokens.reshape(b, t * k, w))
        at_state = hidden.reshape(b, t, k, w)[:, :, LAST_STATE_TOKEN]
        return self.head(at_state)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of the target levels over the real (unpadded) steps of the batch.

        The inputs hold the actions played; the targets are `labels` when the batch has them (an expert's
        choice in a relabelled episode), else the actions themselves. Step t's logits never see action t."""
        logits = self(batch["returns"], batch["states"], batch["actions"], batch["timesteps"])
        mask = batch["mask"]
        targets = batch.get("labels", batch["actions"])
        return F.cross_entropy(logits[mask], targets[mask])

    # ---- incremental decoding (KV-cache serving) ----
    def step_input(self, ret: torch.Tensor, state: torch.Tensor, timestep: torch.Tensor,
                   prev_action: torch.Tensor | None, prev_timestep: torch.Tensor | None) -> torch.Tensor:
        """Tokens that extend a cache by one step: [a_{t-1}] + [R_t, s_t...] (1, 7 or 8, width)."""
        dummy_action = torch.zeros_like(timestep)
        tokens = self.encoder(ret.view(1, 1), state.view(1, 1, -1), dummy_action.view(1, 1),
                              timestep.view(1, 1))
        tokens = tokens[0, 0, :LAST_STATE_TOKEN + 1]
        if prev_action is not None:
            action = self.encoder.action_token(prev_action.view(1), prev_timestep.view(1))
            tokens = torch.cat([action, tokens])
        return tokens.unsqueeze(0)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the hidden states of a step's input (its last token is the last state token)."""
        return self.head(hidden[:, -1])

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, total


def build_model(cfg: NetLLMConfig, backbone: nn.Module) -> NetLLMAbr:
    """Model with the fine-tuning mode applied; encoder and head live on the backbone's device in float32."""
    device = next(backbone.parameters()).device
    model = NetLLMAbr(cfg, apply_finetune_mode(backbone, cfg))
    model.encoder.to(device)
    model.head.to(device)
    return model
