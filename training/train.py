"""`netllm train`: adapt an LLM to ABR on an experience pool (NetLLM's DD-LRNA, offline return-conditioned).

Loop (terms in training.trainer): each optimizer step averages the cross-entropy of the pool's actions over
`grad_accum` micro-batches of `micro_batch_size` windows (training.pool.WindowSampler: `window` steps of one
episode, returns-to-go divided by `return_scale`), clips the accumulated gradient, and steps AdamW with linear
warm-up then cosine decay, all counted in optimizer steps.

Checkpoint selection never looks at test traces: every `eval_every` optimizer steps the model is scored on
validation data and the best score is kept in `OUT/best`:
- `--select-by sim` (default): the mean per-chunk QoE (chunk 0 skipped) of the model as a policy in the
  simulator over the validation split (`--valid-split`, or `--valid-trace-dir`), asking for the pool's
  `eval_target_quantile` episode return, served as the netllm policy serves it on `--device`
  (`--valid-quantize`: int8-split on a CPU) with `--eval-window` steps of context (default: the trained
  window);
- `--select-by loss`: the action cross-entropy on pool episodes held out by trace (`--valid-fraction`).
At the end the best checkpoint's serving target return is chosen the same way among quantiles of the pool's
per-episode mean QoE (`--target-quantiles`), jointly with the context served (`--serving-windows`; default
the trained window), and written into `OUT/best/netllm_config.json`.

Outputs in `--out`: config.json (resolved), loss.csv (one row per optimizer step; eval columns filled on eval
steps), best/ (selected checkpoint, stored in `--save-dtype`), last/ (float32 weights + optimizer state for
`--resume`, written as one folder), summary.json. `--resume` refuses options that differ from config.json
except those in RESUMABLE (how long and how often, where it runs, the pool and validation budget: what
models/README.md's resumes change); each resume keeps the config it replaces as config-resume-N.json.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netllm.cli import CommandError
from netllm.config import arg
from netllm.tensor_files import STORAGE_DTYPE_NAMES
from training.run_files import check_choice, check_ranges, check_resume_config, save_run_config

# Options a resumed run may change; every other one defines the model, its optimizer or its data and must
# match OUT/config.json. The pool may change (a resumed fine-tune on a new pool, models/README step 7), and so
# may the batch split (the counters are running totals) and the periodic evaluations' budget and target.
RESUMABLE = frozenset({
    "optimizer_steps", "max_minutes", "stop_after_steps", "eval_every", "threads",  # how long, how often
    "resume", "out", "init_from", "select_only",  # this invocation (a copied run resumes under a new --out)
    "pool", "device", "dtype", "micro_batch_size", "grad_accum",
    "valid_max_traces", "valid_starts", "valid_windows", "valid_quantize", "eval_target_quantile",
    "eval_window",
    "target_quantiles", "serving_windows",  # end-of-run candidates
    "save_dtype",  # how checkpoints are stored, not what is trained
})
FINETUNE_MODES = ("lora", "full", "frozen")
SAVE_DTYPES = STORAGE_DTYPE_NAMES

LOSS_COLUMNS = ("step", "micro_batches", "samples", "loss", "lr", "grad_norm", "elapsed_s", "valid_loss",
                "valid_qoe", "best")


@dataclass
class Config:
    pool: Path = arg(help="experience pool folder written by `netllm collect`")
    out: Path = arg(Path("runs/netllm-abr"), help="run folder (checkpoints, loss.csv, summary.json)")
    backbone: str = arg("smollm2", help="smollm2 (embedded), smollm2-random (same shape, random weights), tiny "
                                        "(random, tests), llama2-7b-shape (random), "
                                        "or a local Hugging Face model folder")
    device: str = arg("auto", help="auto (CUDA when present), cpu or cuda")
    dtype: str = arg("auto", help="backbone compute dtype: auto (fp32 on CPU, bf16/fp16 on GPU), fp32, bf16, "
                                  "fp16")
    finetune: str = arg("lora", help="lora (LoRA on attention, body frozen), full, or frozen (encoder and "
                                     "head only)")
    lora_rank: int = arg(8, help="LoRA rank")
    lora_alpha: float = arg(16.0, help="LoRA scaling numerator (scale = alpha / rank)")
    lora_dropout: float = arg(0.05, help="dropout on the LoRA input")
    window: int = arg(20, help="steps of context per training window")
    return_scale: float = arg(50.0, help="returns-to-go are divided by this in the model's input")
    return_bypass: bool = arg(False, help="add the return-to-go to its token after the encoder's LayerNorm "
                                          "too (a learned direction, zero at the start; with --init-from "
                                          "it may be added to a checkpoint without one)")
    conv_channels: int = arg(128, help="channels of the encoder's 1-D convolutions")
    optimizer_steps: int = arg(2000, help="optimizer steps to run (each = grad_accum micro-batches)")
    micro_batch_size: int = arg(8, help="windows per micro-batch (one forward/backward)")
    grad_accum: int = arg(4, help="micro-batches accumulated per optimizer step")
    lr: float = arg(1e-4, help="peak learning rate")
    min_lr_ratio: float = arg(0.1, help="final learning rate as a fraction of --lr (cosine decay)")
    warmup_steps: int = arg(100, help="linear warm-up length, in OPTIMIZER steps")
    weight_decay: float = arg(1e-4, help="AdamW weight decay on matrices")
    clip_grad_norm: float = arg(0.25, help="max global gradient norm, applied after accumulation (0: off)")
    eval_every: int = arg(100, help="evaluate and maybe save `best` every N optimizer steps")
    select_by: str = arg("sim", help="checkpoint selection: sim (validation traces) or loss (held-out "
                                     "episodes)")
    valid_split: str = arg("valid", help="trace split for --select-by sim")
    valid_trace_dir: Path | None = arg(None, help="validation trace folder instead of --valid-split")
    valid_max_traces: int = arg(20, help="validation traces used per evaluation (0: all)")
    # A few validation traces with long stalls dominate a mean over one session per trace; more starts per
    # trace steady the score without touching other traces.
    valid_starts: int = arg(1, help="sessions per validation trace: start at sample 1 and at N-1 more sample "
                                    "indices spread evenly over the trace")
    valid_fraction: float = arg(0.05, help="share of the pool's traces held out for the validation loss")
    valid_windows: int = arg(256, help="held-out windows scored per validation loss (evenly spread; 0: all)")
    video: Path | None = arg(None, help="video for simulator evaluation (default: the pool's)")
    # Selection scores the model as it will be served: on a CPU the policy serves int8-split by default, and
    # two checkpoints that tie in float32 need not tie there (it is also ~4x faster to simulate).
    valid_quantize: str = arg("auto", help="how --select-by sim serves the model: auto (what the netllm "
                                           "policy serves on --device: int8-split on a CPU, float on a GPU), "
                                           "none, or a controller.netllm.quantize scheme")
    # 0.5, not higher: asked for the pool's top returns, the policy played too aggressively on hard validation
    # traces (mean QoE -1.6 at the 0.75 quantile vs +0.6 at 0.5, same checkpoint), so periodic scores misled.
    eval_target_quantile: float = arg(0.5, help="target return of periodic evaluations: this quantile of "
                                                "the pool's per-episode mean QoE")
    # A fine-tune of a checkpoint served with a short context (the shipped ABR model: 3 steps) is best judged
    # as it will serve. It is not cheaper: the KV cache of a short context is rebuilt more often (10 validation
    # sessions of the shipped model, one process, 2 threads: 0.8 min at 3 steps, 0.6 min at 20).
    eval_window: int = arg(0, help="steps of context served in periodic evaluations (2 .. --window; 0: the "
                                   "trained window); best/ records it as its served context")
    target_quantiles: list[float] = arg([0.25, 0.5, 0.75, 0.9],
                                        help="candidate serving targets tried on validation at the end")
    # A model trained on 20-step windows may do better served with fewer: the shipped ABR model scored higher
    # on validation and on its training traces with 3 (its long history of cautious levels held it back).
    serving_windows: list[int] = arg([], help="candidate served context lengths (steps, 2 .. the trained "
                                              "window) tried with each target at the end; empty: the "
                                              "trained window only")
    save_dtype: str = arg("float32", help="storage dtype of best/: float32, bfloat16 or float16")
    seed: int = arg(0, help="seed of initialisation, window sampling and dropout")
    threads: int = arg(0, help="torch CPU threads (0: torch's default)")
    max_minutes: float = arg(0.0, help="stop after this much wall-clock time (evaluations included) and "
                                         "finish cleanly (0: no limit)")
    stop_after_steps: int = arg(0, help="stop this invocation after N more optimizer steps, saving last/ for "
                                        "--resume (0: run to --optimizer-steps)")
    resume: bool = arg(False, help="continue from OUT/last (model, optimizer, sampler and RNG state)")
    init_from: Path | None = arg(None, help="start a new run from this checkpoint's trained weights (a run's "
                                            "best/ or last/, or a shipped model; same backbone and model "
                                            "config), with a fresh optimizer, schedule and counters")
    select_only: bool = arg(False, help="train nothing: score OUT/best and OUT/last at every --target-quantiles "
                                        "target (and --serving-windows window) on validation and write the "
                                        "winner to OUT/selected")


@dataclass
class Validation:
    """What a periodic evaluation looks at."""

    pool: Any = None
    sessions: list[Any] = field(default_factory=list)
    video: Any = None


def _model_config(cfg: Config, hidden_size: int) -> Any:
    from controller.netllm.model import NetLLMConfig

    return NetLLMConfig(hidden_size=hidden_size, window=cfg.window, conv_channels=cfg.conv_channels,
                        return_scale=cfg.return_scale, return_bypass=cfg.return_bypass,
                        finetune=cfg.finetune, lora_rank=cfg.lora_rank,
                        lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout)


def _check(cfg: Config) -> None:
    """Every option that can be checked without data, before any work (a bad value would otherwise surface
    as NaN losses or a traceback after training)."""
    check_choice(cfg, "select_by", ("sim", "loss"))
    check_choice(cfg, "finetune", FINETUNE_MODES)
    check_choice(cfg, "save_dtype", SAVE_DTYPES)
    if min(cfg.optimizer_steps, cfg.micro_batch_size, cfg.grad_accum, cfg.eval_every, cfg.window,
           cfg.valid_starts) < 1:
        raise CommandError("--optimizer-steps, --micro-batch-size, --grad-accum, --eval-every, --window and "
                           "--valid-starts must be >= 1")
    check_ranges(cfg, at_least={"lr": 0, "warmup_steps": 0, "weight_decay": 0, "clip_grad_norm": 0,
                                "lora_rank": 1, "conv_channels": 1, "valid_max_traces": 0, "valid_windows": 0,
                                "threads": 0, "max_minutes": 0, "stop_after_steps": 0},
                 above={"return_scale": 0, "lora_alpha": 0},
                 within={"min_lr_ratio": (0, 1), "lora_dropout": (0, 0.99), "valid_fraction": (0, 0.99)})
    if cfg.select_by == "loss" and not 0 < cfg.valid_fraction < 1:
        raise CommandError("--select-by loss needs --valid-fraction in (0, 1)")
    if cfg.select_by == "sim" and cfg.valid_trace_dir is None and cfg.valid_split not in ("valid", "train"):
        raise CommandError(f"--valid-split {cfg.valid_split!r}: select checkpoints on the valid split, "
                           "never on test traces")
    if cfg.resume and cfg.init_from is not None:
        raise CommandError("--init-from starts a new run from a checkpoint, --resume continues OUT: use one")
    if not all(0 <= q <= 1 for q in [*cfg.target_quantiles, cfg.eval_target_quantile]):
        raise CommandError("target quantiles must be in [0, 1]")
    if not all(w >= 2 for w in cfg.serving_windows):
        raise CommandError("--serving-windows must be >= 2 (and at most the trained window)")
    if not cfg.select_only and any(w > cfg.window for w in cfg.serving_windows):
        raise CommandError(f"--serving-windows: at most --window ({cfg.window})")
    if cfg.eval_window and not 2 <= cfg.eval_window <= cfg.window:
        raise CommandError(f"--eval-window {cfg.eval_window}: use 0 (the trained window) or 2 .. --window "
                           f"({cfg.window})")
    try:
        _valid_quantize(cfg)
    except ValueError as exc:
        raise CommandError(f"--valid-quantize: {exc}") from exc


def _check_split(cfg: Config, pool: Any) -> None:
    """The held-out share must leave traces on both sides (checked on the pool, before building the model)."""
    traces = len(np.unique(pool.episode_trace))
    held = held_out_traces(cfg.valid_fraction, traces)
    if cfg.select_by == "loss" and held == 0:
        raise CommandError(f"--select-by loss: the pool {cfg.pool} has {traces} trace(s); holding episodes "
                           "out by trace needs at least 2 (collect more traces, or use --select-by sim)")
    if held >= traces > 0:
        raise CommandError(f"--valid-fraction {cfg.valid_fraction:g} holds out all {traces} traces of the "
                           f"pool {cfg.pool}, leaving none to train on: use a smaller fraction")


def held_out_traces(fraction: float, traces: int) -> int:
    """How many of a pool's `traces` `split_pool` holds out (0: no held-out set)."""
    if fraction <= 0 or traces < 2:
        return 0
    return max(1, int(round(fraction * traces)))


def split_pool(pool: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, held-out) pools; held-out episodes are all those of a random `fraction` of the traces."""
    traces = np.unique(pool.episode_trace)
    count = held_out_traces(fraction, len(traces))
    if count == 0:
        return pool, None
    rng = np.random.default_rng(seed)
    held = set(rng.choice(traces, size=count, replace=False).tolist())
    is_held = np.array([t in held for t in pool.episode_trace])
    return pool.subset(np.flatnonzero(~is_held)), pool.subset(np.flatnonzero(is_held))


def validation_loss(model: Any, pool: Any, cfg: Config, device: Any) -> float:
    import torch

    from training.pool import WindowSampler, iter_windows
    from training.trainer import to_device

    sampler = WindowSampler(pool, cfg.window, cfg.return_scale)
    spans = list(iter_windows(pool.episode_bounds(), cfg.window))
    if 0 < cfg.valid_windows < len(spans):  # a fixed, evenly spread subset: comparable across evaluations
        spans = [spans[i] for i in np.linspace(0, len(spans) - 1, cfg.valid_windows).round().astype(int)]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(spans), cfg.micro_batch_size):
            batch = to_device(sampler.gather(spans[i:i + cfg.micro_batch_size]), device)
            n = int(batch["mask"].sum())
            total += float(model.loss(batch)) * n
            count += n
    model.train()
    return total / max(count, 1)


def simulate_mean_qoe(model: Any, sessions: list[Any], video: Any, target_per_chunk: float,
                      quantize: str = "none", window: int | None = None) -> float:
    """Mean over sessions of the per-chunk QoE (chunk 0 skipped) of the in-memory model as a policy, served
    with `quantize` (a resolved scheme, see `_serving_copy`) and `window` steps of context (None: trained)."""
    from controller.policies.netllm_policy import NetLLMPolicy
    from emulation.abr_sim import SimConfig, simulate_session

    was_training = model.training
    policy = NetLLMPolicy.from_model(_serving_copy(model, quantize), target_return=target_per_chunk,
                                     window=window)
    scores = [simulate_session(policy, s.trace, video, start_index=s.start_index, config=SimConfig()).mean_qoe
              for s in sessions]
    model.train(was_training)
    return float(np.mean(scores))


def _serving_copy(model: Any, quantize: str = "none") -> Any:
    """The model as it is served: with the LoRA adapter folded into a copy of the body (so the lean Llama
    decoder runs it instead of peft's slower unmerged forward), quantised as `quantize` names (none, or a
    controller.netllm.quantize scheme), in eval mode, without gradients."""
    import copy

    from controller.netllm.quantize import quantize_int8

    model.eval()
    merged = not hasattr(model.backbone, "merge_and_unload")  # already merged, or trained without LoRA
    if merged and quantize == "none":
        return model
    served = copy.deepcopy(model)  # quantising rewrites the body: never touch the trained model
    if not merged:
        served.backbone = served.backbone.merge_and_unload()
    served.requires_grad_(False)
    return served if quantize == "none" else quantize_int8(served, quantize)


def _valid_quantize(cfg: Config) -> str:
    from controller.policies.netllm_policy import resolve_quantize

    return resolve_quantize(cfg.valid_quantize, cfg.device)


def _target(pool: Any, quantile: float) -> float:
    return float(np.quantile(pool.episode_mean_rewards(), quantile))


def _evaluate(model: Any, cfg: Config, val: Validation, train_pool: Any, device: Any) -> dict[str, float]:
    scores: dict[str, float] = {}
    if val.pool is not None:
        scores["valid_loss"] = validation_loss(model, val.pool, cfg, device)
    if cfg.select_by == "sim":
        scores["valid_qoe"] = simulate_mean_qoe(model, val.sessions, val.video,
                                                _target(train_pool, cfg.eval_target_quantile),
                                                _valid_quantize(cfg), cfg.eval_window or None)
    scores["score"] = scores["valid_qoe"] if cfg.select_by == "sim" else -scores["valid_loss"]
    return scores


def _validation(cfg: Config, held_out: Any, pool_meta: dict[str, Any]) -> Validation:
    from training.collect import load_sim_video, split_sessions

    val = Validation(pool=held_out)
    if cfg.select_by == "sim":
        video_path = cfg.video or (Path(pool_meta["video"]) if pool_meta.get("video") else None)
        val.video = load_sim_video(video_path)
        traces = split_sessions(cfg.valid_split, cfg.valid_trace_dir, cfg.valid_max_traces)
        val.sessions = spread_starts(traces, cfg.valid_starts)
        if not val.sessions:
            raise CommandError("no validation traces")
    return val


def spread_starts(sessions: list[Any], starts: int) -> list[Any]:
    """Each session's trace played from `starts` start sample indices: 1, then evenly spaced up to the end."""
    from training.collect import Session

    return [Session(s.trace, 1 + k * (len(s.trace.time_s) - 1) // starts) for s in sessions for k in range(starts)]


def _load_pool(cfg: Config) -> Any:
    from training.pool import PoolError, load_pool

    try:
        return load_pool(cfg.pool)
    except PoolError as exc:
        raise CommandError(str(exc)) from exc


def _build(cfg: Config) -> tuple[Any, Any]:
    from controller.netllm.backbone import BackboneError, BackboneSpec, load_backbone
    from controller.netllm.model import build_model

    try:
        body, info = load_backbone(BackboneSpec.parse(cfg.backbone), cfg.device, cfg.dtype)
        model = build_model(_model_config(cfg, info.hidden_size), body)
    except (BackboneError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    model.train()
    return model, info


def _init_from(model: Any, info: Any, folder: Path) -> None:
    """Load another checkpoint's adapter, encoder and head (fine-tuning it on a new pool, say). A run with
    --return-bypass may start from a checkpoint without the bypass (it starts at zero: the same model)."""
    from controller.netllm.checkpoint import CheckpointError, load_weights, read_checkpoint_config

    try:
        theirs = read_checkpoint_config(folder)["backbone"]
        if theirs.get("sha256") != info.sha256:
            raise CommandError(f"--init-from {folder}: trained on backbone {theirs.get('kind')} "
                               f"({str(theirs.get('sha256'))[:12]}), this run uses {info.kind} "
                               f"({info.sha256[:12]})")
        load_weights(model, folder, may_lack=("encoder.return_bypass",) if model.cfg.return_bypass else ())
    except (CheckpointError, RuntimeError, ValueError) as exc:
        raise CommandError(f"--init-from {folder}: {exc}") from exc


def _save(model: Any, folder: Path, info: Any, dtype: str, serving: dict[str, Any], step: int) -> None:
    from controller.netllm.checkpoint import save_checkpoint

    save_checkpoint(model, folder, info.to_json(), storage_dtype=dtype, serving=serving,
                    training={"optimizer_steps": step})


def _save_last(model: Any, folder: Path, info: Any, serving: dict[str, Any], optimizer: Any,
               counters: dict[str, Any], rng: np.random.Generator) -> None:
    """last/: float32 weights and the training state, swapped in as one folder (an interruption mid-save
    leaves the previous last/ resumable)."""
    from training.trainer import save_resumable, save_train_state

    save_resumable(folder, lambda d: _save(model, d, info, "float32", serving, counters["step"]),
                   lambda d: save_train_state(d, optimizer, counters, rng))


def _resume_from(model: Any, last: Path, optimizer: Any, rng: np.random.Generator) -> dict[str, Any]:
    """Weights and training state of OUT/last; an unusable file is a user error naming it."""
    from controller.netllm.checkpoint import CheckpointError, load_weights
    from training.trainer import TrainStateError, load_train_state

    try:
        load_weights(model, last)
        return load_train_state(last, optimizer, rng)
    except (CheckpointError, TrainStateError, RuntimeError) as exc:
        raise CommandError(f"--resume: {last} cannot be resumed: {exc}") from exc


def _serving(pool: Any, target: float, context_steps: int = 0) -> dict[str, Any]:
    """best/'s `serving` entries before the end-of-run choice: the periodic evaluations' target, and their
    served context when it is not the trained window."""
    from controller.netllm.abr_features import COL

    chunk_index = pool.observations[:, COL["chunk_index"]]
    serving = {"target_return_per_chunk": target, "min_trained_timestep": int(chunk_index.min()),
               "max_trained_timestep": int(chunk_index.max())}
    if context_steps:
        serving["context_steps"] = context_steps
    return serving


def _choose_target(cfg: Config, val: Validation, pool: Any, best_dir: Path) -> dict[str, float]:
    """Score each candidate target return of the best checkpoint on validation; keep the best in best/."""
    import json

    from controller.netllm.checkpoint import CONFIG_FILE, load_checkpoint

    model, _ = load_checkpoint(best_dir, device=cfg.device, dtype=cfg.dtype, merge_lora=True)
    scores = _serving_scores(model, cfg, val, pool)
    best_q, best_w = _candidate(max(scores, key=lambda k: scores[k]), model.cfg.window)
    doc = json.loads((best_dir / CONFIG_FILE).read_text())
    doc["serving"].update(_served(pool, best_q, best_w))
    (best_dir / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return scores


def _serving_scores(model: Any, cfg: Config, val: Validation, pool: Any) -> dict[str, float]:
    """Validation QoE of `model` at every (target quantile, served window) candidate, keyed "0.75" (only the
    trained window) or "0.75/w3" (--serving-windows, else --eval-window's one window)."""
    trained = int(model.cfg.window)
    windows = list(dict.fromkeys(cfg.serving_windows)) or [cfg.eval_window or trained]
    if max(windows) > trained:
        raise CommandError(f"--serving-windows {max(windows)}: longer than the trained window ({trained})")
    quantize = _valid_quantize(cfg)
    keyed = bool(cfg.serving_windows or cfg.eval_window)
    return {(f"{q:g}/w{w}" if keyed else f"{q:g}"):
            simulate_mean_qoe(model, val.sessions, val.video, _target(pool, q), quantize, w)
            for q in cfg.target_quantiles for w in windows}


def _candidate(key: str, trained_window: int) -> tuple[float, int]:
    """(target quantile, served window) of a `_serving_scores` key."""
    quantile, _, window = key.partition("/w")
    return float(quantile), int(window) if window else trained_window


def _served(pool: Any, quantile: float, window: int) -> dict[str, Any]:
    """The checkpoint's `serving` entries for a chosen (target quantile, served window)."""
    return {"target_return_per_chunk": _target(pool, quantile), "target_quantile": quantile,
            "context_steps": window}


def train(cfg: Config) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from training.pool import WindowSampler
    from training.trainer import CsvLog, LrSchedule, accumulated_step, make_adamw, seed_everything, to_device

    _check(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out, last, best = Path(cfg.out), Path(cfg.out) / "last", Path(cfg.out) / "best"
    if not cfg.resume and last.exists():
        raise CommandError(f"{out} already holds a run: pass --resume to continue it, or another --out")
    if cfg.resume and not last.exists():
        raise CommandError(f"{last}: nothing to resume")
    if cfg.resume:
        check_resume_config(cfg, out, RESUMABLE)
    seed_everything(cfg.seed)
    pool = _load_pool(cfg)
    _check_split(cfg, pool)
    train_pool, held_out = split_pool(pool, cfg.valid_fraction, cfg.seed)
    val = _validation(cfg, held_out, pool.meta)
    model, info = _build(cfg)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay)
    sampler = WindowSampler(train_pool, cfg.window, cfg.return_scale, seed=cfg.seed)
    schedule = LrSchedule(cfg.lr, cfg.warmup_steps, cfg.optimizer_steps, cfg.min_lr_ratio)
    counters = {"step": 0, "micro_batches": 0, "samples": 0, "best_score": -math.inf, "best_step": -1,
                "train_seconds": 0.0}
    if cfg.init_from is not None:
        _init_from(model, info, Path(cfg.init_from))
    if cfg.resume:
        resumed = _resume_from(model, last, optimizer, sampler.rng)
        if "micro_batches" not in resumed:  # states written before these counters: assume this run's sizes
            resumed["micro_batches"] = resumed["step"] * cfg.grad_accum
            resumed["samples"] = resumed["micro_batches"] * cfg.micro_batch_size
        counters.update(resumed)
    save_run_config(cfg, out, cfg.resume)
    serving = _serving(train_pool, _target(train_pool, cfg.eval_target_quantile), cfg.eval_window)
    log = CsvLog(out / "loss.csv", LOSS_COLUMNS, resume_after_step=counters["step"] if cfg.resume else None)
    trainable, total = model.trainable_parameters()
    bar = tqdm(total=cfg.optimizer_steps, initial=counters["step"], desc="train", unit="step")
    started = time.monotonic() - counters["train_seconds"]
    stop_at = counters["step"] + cfg.stop_after_steps if cfg.stop_after_steps > 0 else cfg.optimizer_steps
    time_up = False
    while counters["step"] < cfg.optimizer_steps:
        step = counters["step"]
        micro = (to_device(sampler.sample(cfg.micro_batch_size), device) for _ in range(cfg.grad_accum))
        loss, grad_norm = accumulated_step(micro, model.loss, optimizer, params, schedule.lr(step),
                                           cfg.clip_grad_norm)
        counters["step"] = step = step + 1
        # running totals, not step x sizes: a resumed run may change the batch size
        counters["micro_batches"] += cfg.grad_accum
        counters["samples"] += cfg.grad_accum * cfg.micro_batch_size
        counters["train_seconds"] = time.monotonic() - started
        time_up = cfg.max_minutes > 0 and counters["train_seconds"] > cfg.max_minutes * 60
        stopping = time_up or step >= stop_at
        row: dict[str, Any] = {"step": step, "micro_batches": counters["micro_batches"],
                               "samples": counters["samples"], "loss": loss,
                               "lr": schedule.lr(step - 1), "grad_norm": grad_norm,
                               "elapsed_s": counters["train_seconds"]}
        if step % cfg.eval_every == 0 or step == cfg.optimizer_steps or stopping:
            scores = _evaluate(model, cfg, val, train_pool, device)
            row.update({k: v for k, v in scores.items() if k != "score"})
            if scores["score"] > counters["best_score"]:
                counters["best_score"], counters["best_step"] = scores["score"], step
                _save(model, best, info, cfg.save_dtype, serving, step)
                row["best"] = 1
            _save_last(model, last, info, serving, optimizer, counters, sampler.rng)
        log.write(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{row['lr']:.2e}")
        if stopping:
            break
    bar.close()
    log.close()
    summary: dict[str, Any] = {
        "optimizer_steps": counters["step"], "best_step": counters["best_step"],
        "best_score": counters["best_score"], "select_by": cfg.select_by,
        "valid_quantize": _valid_quantize(cfg), "valid_sessions": len(val.sessions),
        "train_seconds": round(counters["train_seconds"], 1), "trainable_parameters": trainable,
        "total_parameters": total, "trainable_fraction": trainable / total, "backbone": info.to_json(),
        "pool_rows": len(train_pool), "stopped_early": counters["step"] < cfg.optimizer_steps}
    paused = counters["step"] < cfg.optimizer_steps and not time_up  # --stop-after-steps: to be resumed
    if cfg.select_by == "sim" and best.exists() and not paused:
        summary["target_scores"] = _choose_target(cfg, val, train_pool, best)
    return summary


def select_checkpoint(cfg: Config) -> dict[str, Any]:
    """Pick (checkpoint, serving target) among OUT/best and OUT/last on validation traces only; the winner is
    copied to OUT/selected in --save-dtype with that target, the scores go to OUT/selection.json."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from controller.netllm.checkpoint import CONFIG_FILE, load_checkpoint
    from netllm.atomic import write_folder_atomically
    from netllm.tensor_files import cast_for_storage

    _check(cfg)
    out = Path(cfg.out)
    pool = _load_pool(cfg)
    _check_split(cfg, pool)
    train_pool, held_out = split_pool(pool, cfg.valid_fraction, cfg.seed)
    val = _validation(cfg, held_out, pool.meta)
    scores: dict[str, float] = {}
    trained_window = {}
    for name in ("best", "last"):
        if (out / name / CONFIG_FILE).is_file():
            model, _ = load_checkpoint(out / name, device=cfg.device, dtype=cfg.dtype, merge_lora=True)
            trained_window[name] = int(model.cfg.window)
            scores.update({f"{name}@{key}": score
                           for key, score in _serving_scores(model, cfg, val, train_pool).items()})
    if not scores:
        raise CommandError(f"{out}: no best/ or last/ checkpoint to select from")
    winner = max(scores, key=lambda k: scores[k])
    name, key = winner.split("@")
    quantile, window = _candidate(key, trained_window[name])

    def write(staging: Path) -> None:
        for src in sorted((out / name).iterdir()):
            if not src.is_file() or src.name.startswith("train_state."):
                continue
            if src.suffix == ".safetensors":  # store in --save-dtype (last/ is float32 for resuming)
                save_file(cast_for_storage(load_file(str(src)), cfg.save_dtype), str(staging / src.name),
                          metadata={"format": "pt"})
            else:
                shutil.copy2(src, staging / src.name)
        doc = json.loads((staging / CONFIG_FILE).read_text())
        doc["serving"].update(_served(train_pool, quantile, window))
        doc["storage_dtype"] = cfg.save_dtype
        (staging / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    write_folder_atomically(out / "selected", write)  # a killed selection leaves the previous selected/
    result = {"scores": scores, "winner": winner, "valid_sessions": len(val.sessions),
              "valid_quantize": _valid_quantize(cfg)}
    (out / "selection.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run(cfg: Config) -> int:
    from netllm.chunklog import write_summary

    if cfg.select_only:
        result = select_checkpoint(cfg)
        print(f"selected {result['winner']} (validation QoE {result['scores'][result['winner']]:.4f}) -> "
              f"{Path(cfg.out) / 'selected'}")
        return 0
    summary = train(cfg)
    write_summary(summary, cfg.out)
    best = Path(cfg.out) / "best"
    print(f"best score {summary['best_score']:.4f} at step {summary['best_step']} -> {best}")
    return 0
