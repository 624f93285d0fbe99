"""Task-independent pieces of an offline training loop (ABR now; viewport prediction and scheduling later).

Vocabulary, used in every option name and log column:
- a *micro-batch* is one forward/backward pass (`micro_batch_size` samples);
- an *optimizer step* applies the gradient accumulated over `grad_accum` micro-batches;
- warm-up, the learning-rate schedule, evaluation and checkpoint periods all count OPTIMIZER steps.
Gradients are clipped once per optimizer step, after accumulation and right before `optimizer.step()`.

Training state for `--resume` (optimizer moments, counters, RNG states) is stored as safetensors + JSON, never
pickled.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from netllm.atomic import make_readable, write_folder_atomically
from netllm.config import read_json_object

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class LrSchedule:
    """Linear warm-up over `warmup_steps` optimizer steps, then cosine decay to `min_ratio` x base_lr by
    `total_steps`."""

    base_lr: float
    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.1

    def factor(self, step: int) -> float:
        """Multiplier of base_lr for optimizer step `step` (0-based: the step about to be taken)."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def lr(self, step: int) -> float:
        return self.base_lr * self.factor(step)


def make_adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; matrices decay, biases/norm scales/embedding rows of 1-D don't."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def accumulated_step(micro_batches: Iterable[Any], loss_fn: Callable[[Any], torch.Tensor],
                     optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], lr: float,
                     clip_norm: float) -> tuple[float, float]:
    """One optimizer step over the given micro-batches: (mean loss, gradient norm before clipping)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    batches = list(micro_batches)
    total = 0.0
    for batch in batches:
        loss = loss_fn(batch)
        (loss / len(batches)).backward()
        total += float(loss.detach())
    # Clip the accumulated gradient (not each micro-batch's), right before the update.
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm > 0 else float("inf")))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / len(batches), grad_norm


class CsvLog:
    """Append-and-flush CSV (e.g. loss.csv) whose rows are keyed by optimizer step; resuming drops the rows
    written after the resumed step, so the curve has no duplicates."""

    def __init__(self, path: Path, columns: Sequence[str], resume_after_step: int | None = None) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        if resume_after_step is not None and self.path.exists():
            with open(self.path, newline="") as fh:
                kept = [r for r in csv.DictReader(fh)
                        if r.get("step") and int(r["step"]) <= resume_after_step]
            self._open("w")
            for row in kept:
                self._writer.writerow({c: row.get(c, "") for c in self.columns})
        else:
            self._open("w")
        self._fh.flush()

    def _open(self, mode: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, mode, newline="", buffering=1)
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="ignore")
        self._writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({c: _fmt(row.get(c, "")) for c in self.columns})
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def save_train_state(folder: Path, optimizer: torch.optim.Optimizer, counters: dict[str, Any],
                     numpy_rng: np.random.Generator | None = None) -> None:
    """Optimizer moments + torch RNG as safetensors; counters, hyper-parameters and numpy RNG as JSON."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng/torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda_{i}"] = s
    scalars: dict[str, Any] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{key}"] = value
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    doc = {"counters": counters, "param_groups": groups, "optim_scalars": scalars,
           "numpy_rng": numpy_rng.bit_generator.state if numpy_rng is not None else None}
    save_file(tensors, str(folder / STATE_TENSORS))
    make_readable(folder / STATE_TENSORS)
    (folder / STATE_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


class TrainStateError(ValueError):
    """An unusable training state (missing, truncated or foreign); the message names the file."""


def load_train_state(folder: Path, optimizer: torch.optim.Optimizer,
                     numpy_rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Restore what `save_train_state` wrote; returns the counters. Raises TrainStateError naming the file."""
    folder = Path(folder)
    doc = _read_state_json(folder / STATE_JSON)
    tensors = _read_state_tensors(folder / STATE_TENSORS)
    per_param: dict[int, dict[str, Any]] = {}
    try:
        for name, value in tensors.items():
            if name.startswith("optim/"):
                _, idx, key = name.split("/", 2)
                per_param.setdefault(int(idx), {})[key] = value
    except ValueError as exc:
        raise TrainStateError(f"{folder / STATE_TENSORS}: unexpected tensor names ({exc})") from exc
    try:
        for name, value in doc["optim_scalars"].items():
            idx, key = name.split("/", 1)
            per_param.setdefault(int(idx), {})[key] = value
    except (AttributeError, ValueError) as exc:
        raise TrainStateError(f"{folder / STATE_JSON}: malformed optim_scalars ({exc})") from exc
    current = [len(g["params"]) for g in optimizer.state_dict()["param_groups"]]
    saved = [len(g.get("params", ())) if isinstance(g, dict) else -1 for g in doc["param_groups"]]
    if current != saved:
        raise TrainStateError(f"{folder / STATE_JSON}: the optimizer state is for another set of trainable "
                              "parameters")
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": doc["param_groups"]})
        torch.set_rng_state(tensors["rng/torch_cpu"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise TrainStateError(f"{folder / STATE_TENSORS}: does not fit this run's optimizer ({exc!r})"
                              ) from exc
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda_")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if numpy_rng is not None and doc.get("numpy_rng"):
        try:
            numpy_rng.bit_generator.state = doc["numpy_rng"]
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainStateError(f"{folder / STATE_JSON}: malformed numpy_rng ({exc!r})") from exc
    return dict(doc["counters"])


def _read_state_json(path: Path) -> dict[str, Any]:
    doc = read_json_object(path, TrainStateError, "a training state")
    keys = ("counters", "param_groups", "optim_scalars")
    missing = [k for k in keys if k not in doc]
    if missing:
        raise TrainStateError(f"{path}: not a training state (missing {', '.join(missing)})")
    if not isinstance(doc["counters"], dict) or not isinstance(doc["counters"].get("step"), int) or \
            not isinstance(doc["param_groups"], list) or not isinstance(doc["optim_scalars"], dict):
        raise TrainStateError(f"{path}: not a training state (malformed counters, param_groups or "
                              "optim_scalars)")
    return doc


def _read_state_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TrainStateError(f"{path}: missing")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type, without the path, for a cut file
        raise TrainStateError(f"{path}: not a readable safetensors file ({exc})") from exc
    if "rng/torch_cpu" not in tensors:
        raise TrainStateError(f"{path}: not a training state (no rng/torch_cpu)")
    return tensors


def save_resumable(folder: Path, save_weights: Callable[[Path], Any], write_state: Callable[[Path], None]
                   ) -> Path:
    """Write a checkpoint (`save_weights(dir)`, itself atomic) and its training state (`write_state(dir)`)
    into ONE staging folder swapped in whole: an interruption leaves the previous folder complete, never
    new weights beside a missing or older state."""
    def write(staging: Path) -> None:
        weights = staging / ".weights"
        save_weights(weights)
        for item in weights.iterdir():
            item.rename(staging / item.name)
        weights.rmdir()
        write_state(staging)

    return write_folder_atomically(Path(folder), write)


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
