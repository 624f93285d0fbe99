"""TRACK-style position-only VP model (Rondon et al.'s position-only seq2seq baseline), its checkpoint and
policy, plus the pose encoding it shares with NetLLM-VP (`controller.vp.netllm_vp_model`).

Encoding (both learned models): everything is relative to the LAST observed pose, so a model that outputs zero
is exactly no-motion and the output layers start at zero (training starts from the strongest baseline).
- input, per history sample (`history_features`, INPUT_FEATURES columns): roll, pitch and yaw offsets from the
  last pose (roll and yaw unwrapped along the history first, so a turn through +-180 is continuous), divided
  by OFFSET_SCALE_DEG; sin(pitch) (viewers drift back to the equator); sin and cos of roll (roll wraps);
- output: offsets from the last pose per future step, in units of OFFSET_SCALE_DEG; `offsets_to_poses` adds
  them to the last pose and wraps roll and yaw / clips pitch. Training targets are the wrapped differences
  future - last (`future_offsets_deg`), and the L1 loss on them in degrees is the MAE the metric reports
  (up to the wrap of errors beyond 180 degrees).

TRACK model (`TrackModel`): an LSTM encoder over the 10 history samples; its final states seed an LSTM decoder
that rolls out one step at a time, each step fed its previous predicted offset and adding a predicted change
to it (so any horizon can be rolled out, though it was trained for `horizon`). TRACK works on unit vectors,
which cannot carry roll; the MAE of this project (and NetLLM's) includes roll, so this variant predicts the
three angle offsets. The saliency (content) branch of TRACK is left out: this is its position-only baseline.

Checkpoint folder (safetensors + JSON, never pickle): `track_config.json` (format, model config, storage
dtype, training provenance) + `track_model.safetensors`.

Policy `track` options: `checkpoint` (default `models/track-jin2022`, or $NETLLM_VP_TRACK_CHECKPOINT),
`device` (cpu default). A horizon longer than trained is rolled out further by the decoder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from controller.vp.policies import VpContext, VpPolicy, check_histories, normalize_poses, unwrap_angles
from netllm.atomic import write_folder_atomically
from controller.model_cache import load_once
from netllm.paths import REPO_ROOT
from netllm.tensor_files import STORAGE_DTYPE_NAMES, cast_for_storage, load_checked, read_safetensors
from traces.headmove import HISTORY_LEN, HORIZON_LEN, wrap_deg

OFFSET_SCALE_DEG = 20.0
"""Offsets enter and leave the models in units of this many degrees (keeps activations near 1)."""
INPUT_FEATURES = 6
TRACK_FORMAT = "netllm-vp-track"
FORMAT_VERSION = 1
TRACK_CONFIG_FILE = "track_config.json"
TRACK_WEIGHTS = "track_model.safetensors"
DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "track-jin2022"


class VpCheckpointError(ValueError):
    """An unusable VP checkpoint folder; the message names the file."""


# -- encoding shared by the learned VP models ----------------------------------------------------------------

def history_features(histories_deg: np.ndarray) -> np.ndarray:
    """(N, H, 3) roll/pitch/yaw histories -> (N, H, INPUT_FEATURES) float32 model inputs."""
    history = unwrap_angles(np.asarray(histories_deg, dtype=np.float64))
    offsets = (history - history[:, -1:, :]) / OFFSET_SCALE_DEG
    roll, pitch = np.radians(history[..., 0]), np.radians(history[..., 1])
    extra = np.stack([np.sin(pitch), np.sin(roll), np.cos(roll)], axis=-1)
    return np.concatenate([offsets, extra], axis=-1).astype(np.float32)


def future_offsets_deg(histories_deg: np.ndarray, futures_deg: np.ndarray) -> np.ndarray:
    """Training targets: wrapped future - last pose, (N, F, 3) float32 degrees."""
    last = np.asarray(histories_deg, dtype=np.float64)[:, -1:, :]
    return wrap_deg(np.asarray(futures_deg, dtype=np.float64) - last).astype(np.float32)


def offsets_to_poses(histories_deg: np.ndarray, offsets_deg: np.ndarray) -> np.ndarray:
    """Last pose + predicted offsets (N, F, 3) degrees, roll/yaw wrapped and pitch clipped."""
    last = np.asarray(histories_deg, dtype=np.float64)[:, -1:, :]
    return normalize_poses(last + np.asarray(offsets_deg, dtype=np.float64))


def fit_horizon(offsets_deg: np.ndarray, horizon: int) -> np.ndarray:
    """Cut to `horizon` steps, or hold the last predicted offset beyond what the model predicts."""
    have = offsets_deg.shape[1]
    if horizon <= have:
        return offsets_deg[:, :horizon]
    tail = np.repeat(offsets_deg[:, -1:], horizon - have, axis=1)
    return np.concatenate([offsets_deg, tail], axis=1)


def resolve_checkpoint(checkpoint: str | Path | None, env_var: str, default: Path, config_file: str,
                       how_to_train: str) -> Path:
    """The checkpoint folder to load (relative paths from the working directory, else the repository), or a
    FileNotFoundError saying what is missing and how to make it."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
            path = REPO_ROOT / path
    else:
        path = Path(os.environ[env_var]).expanduser() if os.environ.get(env_var) else default
    if not (path / config_file).is_file():
        raise FileNotFoundError(f"{path}: no VP checkpoint here ({config_file} missing); train one with "
                                f"`{how_to_train}` or pass checkpoint=DIR")
    return path


def read_json_config(path: Path, fmt: str) -> dict[str, Any]:
    """A checkpoint's JSON document after format checks, or VpCheckpointError naming the file."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise VpCheckpointError(f"{path}: cannot read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise VpCheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise VpCheckpointError(f"{path}: not a {fmt} checkpoint config")
    if doc.get("format_version") != FORMAT_VERSION:
        raise VpCheckpointError(f"{path}: format_version {doc.get('format_version')} (this code reads "
                                f"{FORMAT_VERSION})")
    for key in ("model", "storage_dtype", "files"):
        if key not in doc:
            raise VpCheckpointError(f"{path}: missing {key!r}")
    return doc


def read_tensors(path: Path) -> dict[str, Any]:
    return read_safetensors(path, VpCheckpointError)


def load_state_strict(module: Any, state: dict[str, Any], source: Path) -> None:
    """Load tensors whose names and shapes must match the module exactly; cast to the module's dtypes."""
    load_checked(module, state, source, VpCheckpointError)


def check_storage_dtype(storage_dtype: str) -> None:
    if storage_dtype not in STORAGE_DTYPE_NAMES:
        raise VpCheckpointError(f"storage dtype {storage_dtype!r}: use one of "
                                f"{', '.join(STORAGE_DTYPE_NAMES)}")


def cast_state(state: dict[str, Any], storage_dtype: str) -> dict[str, Any]:
    check_storage_dtype(storage_dtype)
    return cast_for_storage(state, storage_dtype)


# -- the TRACK-style model -----------------------------------------------------------------------------------

@dataclass
class TrackConfig:
    hidden_size: int = 128
    """LSTM width (encoder and decoder)."""
    layers: int = 2
    """Stacked LSTM layers (encoder and decoder)."""
    history_len: int = HISTORY_LEN
    horizon: int = HORIZON_LEN
    """Steps rolled out in training."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(doc: dict[str, Any]) -> "TrackConfig":
        unknown = sorted(set(doc) - {f.name for f in fields(TrackConfig)})
        if unknown:
            raise ValueError(f"unknown TRACK model fields {unknown}")
        return TrackConfig(**doc)


def build_track_model(cfg: TrackConfig) -> Any:
    """A fresh `TrackModel` (torch imported only when a model is needed)."""
    from torch import nn

    class TrackModel(nn.Module):
        """LSTM encoder over the history; LSTM decoder rolling out offsets from the last pose."""

        def __init__(self, cfg: TrackConfig) -> None:
            super().__init__()
            self.cfg = cfg
            self.encoder = nn.LSTM(INPUT_FEATURES, cfg.hidden_size, cfg.layers, batch_first=True)
            self.decoder = nn.LSTM(3, cfg.hidden_size, cfg.layers, batch_first=True)
            self.out = nn.Linear(cfg.hidden_size, 3)
            nn.init.zeros_(self.out.weight)  # start as no-motion: every predicted change is 0
            nn.init.zeros_(self.out.bias)

        def forward(self, features: Any, horizon: int | None = None) -> Any:
            """(B, H, INPUT_FEATURES) -> offsets (B, horizon, 3) in OFFSET_SCALE_DEG units."""
            import torch

            _, state = self.encoder(features)
            offset = torch.zeros(features.shape[0], 1, 3, dtype=features.dtype, device=features.device)
            steps = []
            for _ in range(horizon or self.cfg.horizon):
                hidden, state = self.decoder(offset, state)
                offset = offset + self.out(hidden)
                steps.append(offset)
            return torch.cat(steps, dim=1)

        def loss(self, batch: dict[str, Any]) -> Any:
            """Mean absolute offset error in degrees over steps and axes (the MAE, unwrapped)."""
            predicted = self(batch["features"], batch["targets"].shape[1]) * OFFSET_SCALE_DEG
            return (predicted - batch["targets"]).abs().mean()

    return TrackModel(cfg)


def save_track_checkpoint(model: Any, out_dir: Path, storage_dtype: str = "float32",
                          training: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        save_file(cast_state(model.state_dict(), storage_dtype), str(folder / TRACK_WEIGHTS),
                  metadata={"format": "pt"})
        doc = {"format": TRACK_FORMAT, "format_version": FORMAT_VERSION, "model": model.cfg.to_json(),
               "storage_dtype": storage_dtype, "files": [TRACK_WEIGHTS], "encoding": encoding_json(),
               "training": training or {}}
        (folder / TRACK_CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    return write_folder_atomically(Path(out_dir), write)


def encoding_json() -> dict[str, Any]:
    """What a checkpoint's inputs and outputs mean (recorded so a changed encoding is detectable)."""
    return {"offset_scale_deg": OFFSET_SCALE_DEG, "input_features": INPUT_FEATURES,
            "input": "offsets from last pose (unwrapped) / scale, sin(pitch), sin(roll), cos(roll)",
            "output": "offsets from last pose / scale"}


def check_encoding(doc: dict[str, Any], source: Path) -> None:
    if doc.get("encoding", {}).get("offset_scale_deg") != OFFSET_SCALE_DEG or \
            doc.get("encoding", {}).get("input_features") != INPUT_FEATURES:
        raise VpCheckpointError(f"{source}: trained with another input encoding ({doc.get('encoding')}); "
                                "retrain it with this version")


def load_track_checkpoint(ckpt_dir: Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """The model (eval mode, no gradients) and its config document."""
    ckpt_dir = Path(ckpt_dir)
    doc = read_json_config(ckpt_dir / TRACK_CONFIG_FILE, TRACK_FORMAT)
    check_encoding(doc, ckpt_dir / TRACK_CONFIG_FILE)
    try:
        cfg = TrackConfig.from_json(doc["model"])
    except (TypeError, ValueError) as exc:
        raise VpCheckpointError(f"{ckpt_dir / TRACK_CONFIG_FILE}: bad model config ({exc})") from exc
    model = build_track_model(cfg)
    load_state_strict(model, read_tensors(ckpt_dir / TRACK_WEIGHTS), ckpt_dir / TRACK_WEIGHTS)
    model.to(device)
    model.requires_grad_(False)
    model.eval()
    return model, doc


# -- policy --------------------------------------------------------------------------------------------------



def predict_offsets(model: Any, histories_deg: np.ndarray, horizon: int | None = None,
                    batch_size: int = 1024) -> np.ndarray:
    """Offsets (N, steps, 3) in degrees from an in-memory TRACK or NetLLM-VP model (no gradients)."""
    import torch

    features = history_features(histories_deg)
    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            chunk = torch.from_numpy(features[start:start + batch_size]).to(device)
            out = model(chunk, horizon) if horizon is not None else model(chunk)
            outputs.append(out.float().cpu().numpy() * OFFSET_SCALE_DEG)
    return np.concatenate(outputs) if outputs else np.zeros((0, horizon or 0, 3))


class LearnedVpPolicy(VpPolicy):
    """A VP policy around a trained offset model (TRACK, NetLLM-VP): built from a checkpoint by the subclass
    or around an in-memory model (`from_model`); `offsets` says how the model predicts."""

    blocking: ClassVar[bool] = True
    history_len: ClassVar[int | None] = HISTORY_LEN
    model: Any
    meta: dict[str, Any]
    checkpoint: Path | None

    @classmethod
    def from_model(cls, model: Any) -> Self:
        """A policy around an in-memory model (validation during training, tests)."""
        policy = cls.__new__(cls)
        policy.model, policy.meta, policy.checkpoint = model, {}, None
        return policy

    def offsets(self, history_deg: np.ndarray, horizon: int) -> np.ndarray:
        """(N, horizon, 3) offsets in degrees from each history's last pose."""
        raise NotImplementedError

    def predict_batch(self, histories_deg: np.ndarray, horizon: int = HORIZON_LEN,
                      contexts: Sequence[VpContext] | None = None) -> np.ndarray:
        history = check_histories(histories_deg, self)
        if isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        return offsets_to_poses(history, self.offsets(history, int(horizon)))


class TrackPolicy(LearnedVpPolicy):
    name: ClassVar[str] = "track"

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu") -> None:
        path = resolve_checkpoint(checkpoint, "NETLLM_VP_TRACK_CHECKPOINT", DEFAULT_CHECKPOINT,
                                  TRACK_CONFIG_FILE, "netllm train-vp --model track")
        self.model, self.meta = load_once(("track", str(path.resolve()), device),
                                          lambda: load_track_checkpoint(path, device))
        self.checkpoint = path

    def offsets(self, history_deg: np.ndarray, horizon: int) -> np.ndarray:
        return predict_offsets(self.model, history_deg, horizon)
