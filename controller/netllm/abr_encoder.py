"""NetLLM's multimodal encoder for ABR: every modality of a step becomes one token of the LLM's width.

Per step the tokens are, in order (`TOKENS_PER_STEP` = 8):

    [return-to-go, last bitrate, buffer, chunks remaining, throughput history, download-time history,
     next chunk sizes, action]

Scalars go through a linear layer each; the two 8-chunk histories and the 6 next-chunk sizes go through a 1-D
convolution, flattened and projected. The return-to-go is a linear embedding of the scaled return, the action
an embedding of the level index. A per-step timestep embedding (the chunk index, clamped) is added to each of
the step's tokens, then a LayerNorm (as in the Decision Transformer) brings them to the scale the LLM expects:
its gain starts at `token_rms`, the RMS of the backbone's own input embeddings. A unit gain hands the LLM
tokens about 7x larger than any word it was pre-trained on (SmolLM2's embeddings have RMS ~0.14); with it, the
pre-trained backbone trained worse than a randomly initialised one.

With `return_bypass` (a model config option) the scaled return-to-go also enters after the LayerNorm, along a
learned direction, so that the size of the return asked for survives normalisation.

Inputs are OBS_DIM rows in physical units (see `abr_features`); the normalisation here is fixed:
bitrates and throughputs are divided by the ladder's top bitrate, the buffer by 10 s, download times by the
chunk duration, a chunk size is turned into its mean bitrate over the chunk divided by the ladder's top
bitrate, and chunks remaining by the video's chunk count. Ladder-relative scales let one model serve another
6-level ladder.
"""

from __future__ import annotations

import torch
from torch import nn

from controller.netllm.abr_features import COL, DOWNLOAD_TIME, HISTORY, LADDER, LEVELS, NEXT_SIZES, THROUGHPUT

STATE_TOKENS = 6
"""last bitrate, buffer, chunks remaining, throughput history, download-time history, next chunk sizes."""
TOKENS_PER_STEP = STATE_TOKENS + 2
"""return-to-go + state tokens + action."""
LAST_STATE_TOKEN = STATE_TOKENS
"""Index within a step of the token whose hidden state the networking head reads."""
BUFFER_SCALE_S = 10.0
RETURN_BYPASS_GAIN = 30.0
"""The return bypass's scale, in token RMS per unit of parameter (see AbrEncoder)."""


def normalise_states(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., OBS_DIM) rows -> scalars (..., 3), histories (..., 2, HISTORY), next sizes (..., LEVELS)."""
    top_kbps = states[..., LADDER][..., -1:].clamp_min(1e-3)
    chunk_s = states[..., COL["chunk_duration_s"]:COL["chunk_duration_s"] + 1].clamp_min(1e-3)
    total = states[..., COL["total_chunks"]:COL["total_chunks"] + 1].clamp_min(1.0)
    scalars = torch.cat([
        states[..., COL["last_bitrate_kbps"]:COL["last_bitrate_kbps"] + 1] / top_kbps,
        states[..., COL["buffer_s"]:COL["buffer_s"] + 1] / BUFFER_SCALE_S,
        states[..., COL["chunks_remaining"]:COL["chunks_remaining"] + 1] / total,
    ], dim=-1)
    tput = states[..., THROUGHPUT] / top_kbps
    dtime = states[..., DOWNLOAD_TIME] / chunk_s
    sizes_kbps = states[..., NEXT_SIZES] * 8.0 / 1000.0 / chunk_s
    return scalars, torch.stack([tput, dtime], dim=-2), sizes_kbps / top_kbps


class ConvToken(nn.Module):
    """A 1-D sequence -> one token: Conv1d over the sequence, LeakyReLU, flatten, linear to the LLM width."""

    def __init__(self, length: int, channels: int, kernel: int, width: int) -> None:
        super().__init__()
        kernel = min(kernel, length)
        self.conv = nn.Conv1d(1, channels, kernel)
        self.proj = nn.Linear(channels * (length - kernel + 1), width)
        self.act = nn.LeakyReLU()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        lead = seq.shape[:-1]
        x = self.act(self.conv(seq.reshape(-1, 1, seq.shape[-1])))
        return self.proj(x.flatten(1)).reshape(*lead, -1)


class AbrEncoder(nn.Module):
    """Steps (returns, states, actions, timesteps) -> LayerNormed tokens (B, T, TOKENS_PER_STEP, width)."""

    def __init__(self, width: int, levels: int = LEVELS, conv_channels: int = 128, conv_kernel: int = 4,
                 max_timestep: int = 128, token_rms: float = 1.0, return_bypass: bool = False) -> None:
        super().__init__()
        self.max_timestep = max_timestep
        self.embed_return = nn.Linear(1, width)
        self.embed_scalars = nn.ModuleList([nn.Linear(1, width) for _ in range(3)])
        self.embed_throughput = ConvToken(HISTORY, conv_channels, conv_kernel, width)
        self.embed_download_time = ConvToken(HISTORY, conv_channels, conv_kernel, width)
        self.embed_sizes = ConvToken(levels, conv_channels, conv_kernel, width)
        self.embed_action = nn.Embedding(levels, width)
        self.embed_timestep = nn.Embedding(max_timestep, width)
        self.norm = nn.LayerNorm(width)
        nn.init.constant_(self.norm.weight, token_rms)
        # The LayerNorm rescales the return token whatever the return's size, so on its own that token tells
        # the body little about how much QoE is asked for (the shipped model all but ignores it). The bypass
        # adds R_t x a learned direction after the norm. It starts at zero (the model computes what it did
        # before) and is scaled so that Adam's steps of about lr per element move it at the tokens' own scale.
        self.return_gain = RETURN_BYPASS_GAIN * token_rms
        self.return_bypass = nn.Parameter(torch.zeros(width)) if return_bypass else None

    def time(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.embed_timestep(timesteps.clamp(0, self.max_timestep - 1))

    def state_tokens(self, states: torch.Tensor) -> torch.Tensor:
        """(..., OBS_DIM) -> (..., STATE_TOKENS, width), before the timestep embedding."""
        scalars, histories, sizes = normalise_states(states)
        tokens = [layer(scalars[..., i:i + 1]) for i, layer in enumerate(self.embed_scalars)]
        tokens.append(self.embed_throughput(histories[..., 0, :]))
        tokens.append(self.embed_download_time(histories[..., 1, :]))
        tokens.append(self.embed_sizes(sizes))
        return torch.stack(tokens, dim=-2)

    def forward(self, returns: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        """returns (B, T) scaled, states (B, T, OBS_DIM), actions (B, T) long, timesteps (B, T) long."""
        ret = self.embed_return(returns.unsqueeze(-1)).unsqueeze(-2)
        act = self.embed_action(actions).unsqueeze(-2)
        tokens = torch.cat([ret, self.state_tokens(states), act], dim=-2)
        tokens = self.norm(tokens + self.time(timesteps).unsqueeze(-2))
        if self.return_bypass is None:
            return tokens
        bypass = returns[..., None, None] * (self.return_gain * self.return_bypass)
        return torch.cat([tokens[..., :1, :] + bypass, tokens[..., 1:, :]], dim=-2)

    def action_token(self, action: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The action token alone (B,) -> (B, width): what incremental decoding appends after a decision."""
        return self.norm(self.embed_action(action) + self.time(timestep))
