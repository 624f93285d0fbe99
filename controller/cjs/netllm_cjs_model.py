"""NetLLM for cluster job scheduling: graph encoder -> tokens -> LLM body (LoRA) -> two masked heads.

Per decision t (an event), the Decima-style `GraphEncoder` gives node embeddings, per-job (DAG) summaries and
a global summary. Four tokens enter the LLM, each a linear projection to the backbone's width plus a
token-type embedding, layer-normalised (Decision-Transformer style):

    [R_t]       the return-to-go (minus the job-seconds still to come, / return_scale_s)
    [G_t]       the global summary (every job's DAG summary pooled, plus the cluster features)
    [F_t]       the frontier: the mean over runnable stages of [node embedding, its job's DAG summary]
    [A_t]       the answer taken: [chosen node embedding, its job's summary, limit / N]

A window holds the last `window` decisions (4 x window tokens in training; at serving the current decision has
no A token yet: 15 tokens by default, one SmolLM2 forward each). The hidden state at F_t (it sees R_t and the
state but not A_t) feeds:
- the stage head: one score per node from [h_t, node embedding, job summary, global], masked to the runnable
  stages (a softmax over them): a non-runnable stage is never chosen;
- the limit head: one score per limit 1..N from [h_t, chosen job's summary, global, l / N], masked to the
  job's valid limits (>= its min_limit): every answer is valid by construction.

Checkpoint folder (safetensors + JSON only, the ABR checkpoint's conventions): `netllm_cjs_config.json` (format,
model config, backbone description and fingerprint, storage dtype, serving target), `adapter_config.json` +
`adapter_model.safetensors` (the LoRA adapter as PEFT writes it), `netllm_cjs_modules.safetensors` (encoder,
projections, heads) and, for random backbones only (`tiny`), `backbone.safetensors`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from controller.cjs.decima import MAX_STAGES, NEG, RUNNABLE_FEATURE, GraphEncoder, mlp
from controller.netllm.model import LowRankAdaptation, apply_finetune_mode
from controller.netllm.llm_parts import (  # noqa: F401  (ADAPTER_CONFIG: callers import it from here)
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, BACKBONE_FILE, load_body, write_llm_parts)
from netllm.atomic import write_folder_atomically
from netllm.tensor_files import read_safetensors

FORMAT = "netllm-cjs"
CONFIG_FILE = "netllm_cjs_config.json"
MODULES_FILE = "netllm_cjs_modules.safetensors"
TOKENS_PER_STEP = 4
FRONTIER_TOKEN = 2


@dataclass
class NetLLMCjsConfig(LowRankAdaptation):
    hidden_size: int = 576
    """LLM token width (from the backbone)."""
    num_executors: int = 50
    """Cluster size trained on (limits are scored as l / N, so other sizes are served too)."""
    dim: int = 16
    hidden: int = 32
    passes: int = 6
    window: int = 4
    """Decisions of context."""
    return_scale_s: float = 1000.0
    token_rms: float = 0.0
    """Initial gain of the token LayerNorm; 0 = the RMS of the backbone's input embeddings, measured when the
    model is built (see controller.netllm.abr_encoder: tokens start at the scale the LLM knows)."""
    head_width: int = 64
    """The LLM hidden state is projected to this width before the heads."""


class NetLLMCjs(nn.Module):
    def __init__(self, cfg: NetLLMCjsConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.encoder = GraphEncoder(cfg.dim, cfg.hidden, cfg.passes)
        nw, jw, gw = self.encoder.node_width, self.encoder.job_width, self.encoder.glob_width
        self.ret_proj = nn.Linear(1, h)
        self.glob_proj = nn.Linear(gw, h)
        self.front_proj = nn.Linear(nw + jw, h)
        self.act_proj = nn.Linear(nw + jw + 1, h)
        self.type_emb = nn.Embedding(TOKENS_PER_STEP, h)
        self.token_norm = nn.LayerNorm(h)
        if cfg.token_rms <= 0.0:
            from controller.netllm.model import embedding_rms

            cfg.token_rms = embedding_rms(backbone)
        nn.init.constant_(self.token_norm.weight, cfg.token_rms)
        self.down = nn.Linear(h, cfg.head_width)
        self.stage_head = mlp(cfg.head_width + nw + jw + gw, cfg.hidden * 2, 1)
        self.limit_head = mlp(cfg.head_width + jw + gw + 1, cfg.hidden * 2, 1)
        self.backbone = backbone
        self._body_dtype = next(backbone.parameters()).dtype

    def module_state(self) -> dict[str, torch.Tensor]:
        """Everything but the LLM body."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    # ---- graph side: one row per event ----
    def encode(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nodes, jobs, glob = self.encoder(b)
        n, j, s, _ = nodes.shape
        node_ctx = torch.cat([nodes, jobs.unsqueeze(2).expand(-1, -1, s, -1)], dim=-1).reshape(n, j * s, -1)
        runnable = (b["nodes"][..., RUNNABLE_FEATURE] > 0.5).reshape(n, j * s)
        weights = runnable.float() / runnable.float().sum(-1, keepdim=True).clamp_min(1)
        frontier = torch.einsum("nk,nkw->nw", weights, node_ctx)
        return {"node_ctx": node_ctx, "jobs": jobs, "glob": glob, "runnable": runnable, "frontier": frontier,
                "limit_mask": b["limit_mask"]}

    def state_tokens(self, enc: dict[str, torch.Tensor], returns: torch.Tensor) -> torch.Tensor:
        """[R, G, F] tokens (n, 3, H) for n events with returns-to-go (n,) already scaled."""
        toks = torch.stack([self.ret_proj(returns.view(-1, 1)), self.glob_proj(enc["glob"]),
                            self.front_proj(enc["frontier"])], dim=1)
        return self.token_norm(toks + self.type_emb.weight[:3])

    def action_tokens(self, enc: dict[str, torch.Tensor], node: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(node.shape[0])
        inp = torch.cat([enc["node_ctx"][rows, node], (limit.float() / enc["limit_mask"].shape[-1]).view(-1, 1)], -1)
        return self.token_norm(self.act_proj(inp) + self.type_emb.weight[3]).unsqueeze(1)

    # ---- heads ----
    def stage_log_probs(self, h: torch.Tensor, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n, J*S) log-probs over runnable nodes from LLM states h (n, H)."""
        d = self.down(h)
        k = enc["node_ctx"].shape[1]
        inp = torch.cat([d.unsqueeze(1).expand(-1, k, -1), enc["node_ctx"],
                         enc["glob"].unsqueeze(1).expand(-1, k, -1)], dim=-1)
        scores = self.stage_head(inp).squeeze(-1)
        return F.log_softmax(scores.masked_fill(~enc["runnable"], NEG), dim=-1)

    def limit_log_probs(self, h: torch.Tensor, enc: dict[str, torch.Tensor], node: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(node.shape[0])
        job = node // MAX_STAGES
        n = enc["limit_mask"].shape[-1]  # the event's cluster size: limits are scored as fractions l / N
        ctx = torch.cat([self.down(h), enc["jobs"][rows, job], enc["glob"]], dim=-1)
        values = (torch.arange(1, n + 1, dtype=ctx.dtype) / n).view(1, n, 1).expand(node.shape[0], -1, -1)
        inp = torch.cat([ctx.unsqueeze(1).expand(-1, n, -1), values], dim=-1)
        scores = self.limit_head(inp).squeeze(-1)
        valid = enc["limit_mask"][rows, job] > 0
        return F.log_softmax(scores.masked_fill(~valid, NEG), dim=-1)

    def body(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.backbone(inputs_embeds=tokens.to(self._body_dtype))
        return out.last_hidden_state.float()

    # ---- training ----
    def loss(self, b: dict[str, torch.Tensor], returns: torch.Tensor, node: torch.Tensor, limit: torch.Tensor,
             windows: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the recorded stage and limit at every decision of `windows` windows; the events
        of `b` are ordered window by window (windows x window rows)."""
        enc = self.encode(b)
        w = node.shape[0] // windows
        state = self.state_tokens(enc, returns)
        action = self.action_tokens(enc, node, limit)
        tokens = torch.cat([state, action], dim=1).reshape(windows, w * TOKENS_PER_STEP, -1)
        hidden = self.body(tokens).reshape(windows * w, TOKENS_PER_STEP, -1)[:, FRONTIER_TOKEN]
        rows = torch.arange(node.shape[0])
        stage_nll = -self.stage_log_probs(hidden, enc)[rows, node].mean()
        limit_nll = -self.limit_log_probs(hidden, enc, node)[rows, limit - 1].mean()
        return stage_nll + limit_nll, {"stage_nll": float(stage_nll.detach()), "limit_nll": float(limit_nll.detach())}


# ------------------------------------------------------------------------------------------- building
def build_netllm_cjs(cfg: NetLLMCjsConfig, backbone: nn.Module) -> NetLLMCjs:
    return NetLLMCjs(cfg, apply_finetune_mode(backbone, cfg))


def save_netllm_cjs(model: NetLLMCjs, out_dir: Path, backbone_info: dict[str, Any], storage_dtype: str = "bfloat16",
                    serving: dict[str, Any] | None = None, training: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint folder (replacing an old one only once the new one is complete)."""
    def write(staging: Path) -> None:
        files = write_llm_parts(staging, model.backbone, model.module_state(), MODULES_FILE,
                                model.cfg.finetune, backbone_info, storage_dtype)
        doc = {"format": FORMAT, "format_version": 1, "model": model.cfg.to_json(), "backbone": backbone_info,
               "storage_dtype": storage_dtype, "files": sorted(files), "serving": serving or {},
               "training": training or {}}
        (staging / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    return write_folder_atomically(Path(out_dir), write)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path, ValueError)


def load_netllm_cjs(ckpt_dir: Path, device: str = "cpu") -> tuple[NetLLMCjs, dict[str, Any]]:
    """The model in eval mode (LoRA merged into the body for serving) and the config document."""
    from peft import set_peft_model_state_dict

    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable NetLLM-CJS checkpoint config ({exc})") from exc
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    cfg = NetLLMCjsConfig.from_json(doc["model"])
    body, _ = load_body(doc.get("backbone"), path, device, "fp32", ValueError)
    if BACKBONE_FILE in doc["files"]:
        body.load_state_dict({k: v.float() for k, v in _tensors(ckpt_dir / BACKBONE_FILE).items()})
    model = build_netllm_cjs(cfg, body)
    state = {k: v.float() for k, v in _tensors(ckpt_dir / MODULES_FILE).items()}
    missing = set(model.module_state()) ^ set(state)
    if missing:
        raise ValueError(f"{ckpt_dir / MODULES_FILE}: tensors do not match the model ({sorted(missing)[:5]})")
    model.load_state_dict(state, strict=False)
    if cfg.finetune == "lora":
        adapter = {k: v.float() for k, v in _tensors(ckpt_dir / ADAPTER_WEIGHTS).items()}
        result = set_peft_model_state_dict(model.backbone, adapter)
        if result.unexpected_keys:
            raise ValueError(f"{ckpt_dir / ADAPTER_WEIGHTS}: adapter does not match the backbone")
        model.backbone = model.backbone.merge_and_unload()
    model.requires_grad_(False)
    model.eval()
    return model, doc
