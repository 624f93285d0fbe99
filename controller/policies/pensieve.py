"""The RL baseline as a policy: Pensieve's actor-critic network (Mao et al., SIGCOMM'17), trained by
`netllm train-rl` in the simulator, loaded from a safetensors checkpoint (policy name `pensieve`).

State (`pensieve_features`, shape (6, S_LEN), computed from the `AbrObservation` alone, so the live player
and the simulator feed the same numbers; Pensieve's scaling):
  row 0: last chunk's bitrate / top bitrate (last column; earlier columns 0)
  row 1: buffer seconds / 10 (last column)
  row 2: past throughputs in MB/s (kbps / 8000), oldest first, right-aligned, zero-padded
  row 3: past download times / 10 s, same layout
  row 4: next chunk's size at each level in MB (first `levels` columns)
  row 5: chunks left (the one being decided included), capped at 48, / 48 (last column)

Network (`PensieveNet`): 1-D convolutions (128 filters, width 4) over rows 2, 3 and 4, dense 128 on the
scalars of rows 0, 1 and 5, concatenation, dense 128, then a softmax over the levels (actor) or one value
(critic); ReLU everywhere. Pensieve's original also sizes everything for 6 levels.

Checkpoint folder: `model.safetensors` (actor weights, names of `PensieveNet.state_dict()`) and
`config.json` (`levels`, `history_len`, `hidden`, training metadata). Default folder: `models/pensieve-a2c`
under the repository, or `NETLLM_PENSIEVE_CHECKPOINT`. Decisions take the most likely level
(`sample=True` draws from the distribution instead, seeded).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from controller.model_cache import load_once
from controller.policies.base import AbrPolicy
from netllm.abr_state import AbrObservation, UnsupportedObservation
from netllm.paths import REPO_ROOT

S_INFO = 6
S_LEN = 8
BUFFER_NORM_S = 10.0
CHUNKS_CAP = 48.0
CONV_WIDTH = 4


def default_checkpoint_dir() -> Path:
    value = os.environ.get("NETLLM_PENSIEVE_CHECKPOINT")
    return Path(value).expanduser() if value else REPO_ROOT / "models" / "pensieve-a2c"


def pensieve_features(obs: AbrObservation, history_len: int = S_LEN,
                      out: np.ndarray | None = None) -> np.ndarray:
    """The (6, max(history_len, levels)) float32 state of the module docstring; `out` is filled in place."""
    levels = obs.levels
    width = max(history_len, levels, CONV_WIDTH)
    if out is None:
        out = np.zeros((S_INFO, width), dtype=np.float32)
    else:
        out.fill(0.0)
    ladder = obs.ladder_kbps
    out[0, -1] = ladder[obs.last_quality] / ladder[-1]
    out[1, -1] = obs.buffer_s / BUFFER_NORM_S
    tput = obs.throughput_kbps_history[-history_len:]
    times = obs.download_time_s_history[-history_len:]
    if tput:
        out[2, width - len(tput):] = np.asarray(tput, dtype=np.float64) / 8000.0
        out[3, width - len(times):] = np.asarray(times, dtype=np.float64) / BUFFER_NORM_S
    out[4, :levels] = np.asarray(obs.upcoming_chunk_sizes_bytes[0], dtype=np.float64) / 1e6
    out[5, -1] = min(obs.chunks_remaining, CHUNKS_CAP) / CHUNKS_CAP
    return out


def build_net(levels: int, history_len: int = S_LEN, hidden: int = 128, outputs: int | None = None) -> Any:
    """The actor (outputs = levels, softmax applied by the caller) or critic (outputs = 1) network."""
    import torch
    from torch import nn

    width = max(history_len, levels, CONV_WIDTH)

    class PensieveNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.levels = levels
            self.scalars = nn.ModuleList([nn.Linear(1, hidden) for _ in range(3)])  # rows 0, 1, 5
            self.convs = nn.ModuleList([nn.Conv1d(1, hidden, CONV_WIDTH) for _ in range(3)])  # rows 2, 3, 4
            merged = 3 * hidden + hidden * ((width - CONV_WIDTH + 1) * 2 + (levels - CONV_WIDTH + 1))
            self.hidden = nn.Linear(merged, hidden)
            self.head = nn.Linear(hidden, outputs if outputs is not None else levels)

        def forward(self, state: torch.Tensor) -> torch.Tensor:
            relu = torch.relu
            parts = [relu(layer(state[:, row, -1:])) for layer, row in zip(self.scalars, (0, 1, 5))]
            seqs = (state[:, 2:3, :], state[:, 3:4, :], state[:, 4:5, :self.levels])
            parts += [relu(conv(seq)).flatten(1) for conv, seq in zip(self.convs, seqs)]
            return self.head(relu(self.hidden(torch.cat(parts, dim=1))))

    if levels < CONV_WIDTH:
        raise ValueError(f"the Pensieve network needs at least {CONV_WIDTH} ladder levels, got {levels}")
    return PensieveNet()


def load_pensieve(folder: Path) -> tuple[Any, dict[str, Any]]:
    """The actor network of a `netllm train-rl` checkpoint folder and its config.json."""
    from safetensors.torch import load_file

    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not weights_path.is_file() or not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no Pensieve checkpoint (model.safetensors + config.json); "
                                "train one with `netllm train-rl --out DIR` (it writes DIR/best) or set "
                                "NETLLM_PENSIEVE_CHECKPOINT")
    config = json.loads(config_path.read_text())
    net = build_net(int(config["levels"]), int(config.get("history_len", S_LEN)),
                    int(config.get("hidden", 128)))
    try:
        net.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as exc:
        raise ValueError(f"{weights_path}: weights do not fit config.json's network ({exc})") from None
    net.eval()
    return net, config


class PensievePolicy(AbrPolicy):
    name: ClassVar[str] = "pensieve"
    # Network inference (and, for a session's first decision, loading torch and the weights) runs on the
    # controller's worker thread, off its event loop.
    blocking: ClassVar[bool] = True

    def __init__(self, checkpoint: str | Path | None = None, sample: bool = False, seed: int = 0) -> None:
        folder = Path(checkpoint) if checkpoint is not None else default_checkpoint_dir()
        # One network per process, shared by every session (each keeps its own state array).
        net, config = load_once(("pensieve", str(folder.resolve())), lambda: load_pensieve(folder))
        self._setup(net, config, sample, seed)

    @classmethod
    def from_network(cls, net: Any, config: dict[str, Any], sample: bool = False,
                     seed: int = 0) -> "PensievePolicy":
        """A policy around an in-memory actor (training uses it for validation)."""
        policy = cls.__new__(cls)
        policy._setup(net, config, sample, seed)
        return policy

    def _setup(self, net: Any, config: dict[str, Any], sample: bool, seed: int) -> None:
        import torch

        self.config = config
        self.levels = int(config["levels"])
        self.history_len = int(config.get("history_len", S_LEN))
        self.net = net
        self.net.eval()
        self.sample = sample
        self.rng = np.random.default_rng(seed)
        self._torch = torch
        self._state = np.zeros((1, S_INFO, max(self.history_len, self.levels, CONV_WIDTH)), dtype=np.float32)

    def select_quality(self, obs: AbrObservation) -> int:
        if obs.levels != self.levels:
            raise UnsupportedObservation("ladder_kbps", f"the Pensieve checkpoint was trained for {self.levels} "
                                                        f"levels, the video has {obs.levels}")
        pensieve_features(obs, self.history_len, out=self._state[0])
        with self._torch.no_grad():
            logits = self.net(self._torch.from_numpy(self._state))[0]
        if not self.sample:
            return int(logits.argmax())
        probs = self._torch.softmax(logits, dim=0).double().numpy()
        return int(self.rng.choice(self.levels, p=probs / probs.sum()))
