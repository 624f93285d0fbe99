"""The experience pool: decisions of baseline policies in the simulator, stored for offline training.

On disk a pool is a folder with two files (no pickle anywhere):

`pool.npz` (numpy, loadable with allow_pickle=False), one row per decision, episodes stored contiguously:
- `observations` float32 (N, OBS_DIM): `controller.netllm.abr_features.OBS_COLUMNS` (units in that module)
- `actions` int64 (N,): level chosen at that decision (the one played: the model sees these as its history)
- `labels` int64 (N,), optional: the level training teaches at that decision. Absent, or equal to `actions`,
  for an expert's own episodes; in relabelled episodes (`netllm collect --label-with EXPERT`, DAgger-style)
  it is the expert's choice in the state the playing policy reached, which that policy may not have taken
- `rewards` float32 (N,): QoE term (`netllm.qoe.chunk_qoe`) of the chunk that decision fetched
- `dones` bool (N,): True on the last decision of an episode
- `episode_trace` str (E,): trace name of each episode; `episode_policy` str (E,): policy that played it
- `episode_start_index` int64 (E,): trace sample index the session started at; `episode_seed` int64 (E,)

`pool.json`: format name/version, OBS_COLUMNS, counts, and provenance (split, video, simulator config,
policies, seeds), written by `netllm collect`.

An episode is one simulated session; its rows are the policy's decisions in chunk order (chunk 0 is fetched
at the default quality without a decision, so a 48-chunk session gives 47 rows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from controller.netllm.abr_features import COL, LEVELS, OBS_COLUMNS, OBS_DIM

FORMAT = "netllm-abr-pool"
FORMAT_VERSION = 1
ARRAYS_FILE = "pool.npz"
META_FILE = "pool.json"


class PoolError(ValueError):
    """An unusable pool; the message names the file and the array."""


@dataclass
class ExperiencePool:
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    episode_trace: np.ndarray
    episode_policy: np.ndarray
    episode_start_index: np.ndarray
    episode_seed: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = None
    """Training targets where they differ from `actions` (see the module docstring); None: the actions."""

    @property
    def targets(self) -> np.ndarray:
        """The level the loss teaches at each row: `labels` when present, else `actions`."""
        return self.actions if self.labels is None else self.labels

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def episode_count(self) -> int:
        return int(self.episode_trace.shape[0])

    def episode_bounds(self) -> np.ndarray:
        """(E, 2) int64 [start, end) row ranges of the episodes."""
        ends = np.flatnonzero(self.dones) + 1
        starts = np.concatenate([[0], ends[:-1]])
        return np.stack([starts, ends], axis=1).astype(np.int64)

    def episode_ids(self) -> np.ndarray:
        """Episode number of every row."""
        return np.concatenate([[0], np.cumsum(self.dones[:-1])]).astype(np.int64) if len(self) else \
            np.zeros(0, dtype=np.int64)

    def returns_to_go(self) -> np.ndarray:
        """Undiscounted sum of the rewards from each row to its episode's end (float64)."""
        out = np.empty(len(self), dtype=np.float64)
        for start, end in self.episode_bounds():
            out[start:end] = np.cumsum(self.rewards[start:end][::-1].astype(np.float64))[::-1]
        return out

    def episode_mean_rewards(self) -> np.ndarray:
        """Mean per-decision QoE of each episode."""
        return np.array([self.rewards[s:e].mean() for s, e in self.episode_bounds()], dtype=np.float64)

    def subset(self, episodes: np.ndarray) -> "ExperiencePool":
        """A pool of the given episodes (indices), in that order."""
        bounds = self.episode_bounds()
        rows = np.concatenate([np.arange(*bounds[e]) for e in episodes]) if len(episodes) else \
            np.zeros(0, dtype=np.int64)
        return ExperiencePool(self.observations[rows], self.actions[rows], self.rewards[rows],
                              self.dones[rows], self.episode_trace[episodes], self.episode_policy[episodes],
                              self.episode_start_index[episodes], self.episode_seed[episodes],
                              dict(self.meta), None if self.labels is None else self.labels[rows])

    def relabelled_rows(self) -> int:
        """Rows whose training target differs from the action played."""
        return 0 if self.labels is None else int(np.sum(self.labels != self.actions))

    def save(self, out_dir: Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        validate(self, out_dir)
        optional = {} if self.labels is None else {"labels": self.labels}
        np.savez_compressed(out_dir / ARRAYS_FILE, observations=self.observations, actions=self.actions,
                            rewards=self.rewards, dones=self.dones, episode_trace=self.episode_trace,
                            episode_policy=self.episode_policy, episode_start_index=self.episode_start_index,
                            episode_seed=self.episode_seed, **optional)
        meta = dict(self.meta)
        meta.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                     "observation_columns": list(OBS_COLUMNS), "rows": len(self),
                     "episodes": self.episode_count})
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return out_dir


class PoolBuilder:
    """Collects episodes one at a time."""

    def __init__(self) -> None:
        self._obs: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._rewards: list[np.ndarray] = []
        self._labels: list[np.ndarray | None] = []
        self._episodes: list[tuple[str, str, int, int]] = []

    def add_episode(self, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray, trace: str,
                    policy: str, start_index: int = 1, seed: int = 0,
                    labels: np.ndarray | None = None) -> None:
        """One episode; `labels` (optional): the training targets where an expert relabelled it."""
        obs = np.asarray(observations, dtype=np.float32)
        n = obs.shape[0]
        if n == 0:
            return
        if obs.shape != (n, OBS_DIM) or len(actions) != n or len(rewards) != n or \
                (labels is not None and len(labels) != n):
            raise PoolError(f"episode {trace}/{policy}: observations {obs.shape}, {len(actions)} actions, "
                            f"{len(rewards)} rewards{'' if labels is None else f', {len(labels)} labels'} "
                            "do not line up")
        self._labels.append(None if labels is None else np.asarray(labels, dtype=np.int64))
        self._obs.append(obs)
        self._actions.append(np.asarray(actions, dtype=np.int64))
        self._rewards.append(np.asarray(rewards, dtype=np.float32))
        self._episodes.append((trace, policy, int(start_index), int(seed)))

    def __len__(self) -> int:
        return len(self._episodes)

    def add_pool(self, pool: ExperiencePool) -> None:
        """Every episode of an existing pool, in order (aggregating pools, as DAgger rounds do)."""
        targets = pool.targets
        for e, (start, end) in enumerate(pool.episode_bounds()):
            self.add_episode(pool.observations[start:end], pool.actions[start:end], pool.rewards[start:end],
                             str(pool.episode_trace[e]), str(pool.episode_policy[e]),
                             int(pool.episode_start_index[e]), int(pool.episode_seed[e]),
                             None if pool.labels is None else targets[start:end])

    def build(self, meta: dict[str, Any] | None = None) -> ExperiencePool:
        if not self._episodes:
            raise PoolError("the pool is empty: no episode was added")
        dones = np.concatenate([np.eye(1, len(a), len(a) - 1, dtype=bool)[0] for a in self._actions])
        traces, policies, starts, seeds = zip(*self._episodes)
        labels = None
        if any(lab is not None for lab in self._labels):  # unlabelled episodes teach their own actions
            labels = np.concatenate([a if lab is None else lab for a, lab in zip(self._actions, self._labels)])
        return ExperiencePool(np.concatenate(self._obs), np.concatenate(self._actions),
                              np.concatenate(self._rewards), dones, np.array(traces, dtype=str),
                              np.array(policies, dtype=str), np.array(starts, dtype=np.int64),
                              np.array(seeds, dtype=np.int64), dict(meta or {}), labels)


def validate(pool: ExperiencePool, where: Path | str) -> None:
    """Shapes, dtypes and ranges; raises PoolError naming `where` and the array."""
    n = len(pool)

    def bad(name: str, msg: str) -> PoolError:
        return PoolError(f"{where}: {name}: {msg}")

    if pool.observations.shape != (n, OBS_DIM):
        raise bad("observations", f"shape {pool.observations.shape}, expected ({n}, {OBS_DIM})")
    for name in ("rewards", "dones"):
        if getattr(pool, name).shape != (n,):
            raise bad(name, f"shape {getattr(pool, name).shape}, expected ({n},)")
    if not np.isfinite(pool.observations).all():
        raise bad("observations", "non-finite values")
    if not np.isfinite(pool.rewards).all():
        raise bad("rewards", "non-finite values")
    if n and ((pool.actions < 0).any() or (pool.actions >= LEVELS).any()):
        raise bad("actions", f"levels must be in 0..{LEVELS - 1}")
    if pool.labels is not None:
        if pool.labels.shape != (n,):
            raise bad("labels", f"shape {pool.labels.shape}, expected ({n},)")
        if n and ((pool.labels < 0).any() or (pool.labels >= LEVELS).any()):
            raise bad("labels", f"levels must be in 0..{LEVELS - 1}")
    if n and not pool.dones[-1]:
        raise bad("dones", "the last row must end an episode")
    episodes = int(pool.dones.sum())
    for name in ("episode_trace", "episode_policy", "episode_start_index", "episode_seed"):
        if getattr(pool, name).shape != (episodes,):
            raise bad(name, f"{getattr(pool, name).shape[0]} entries for {episodes} episodes")
    if n and (pool.observations[:, COL["chunk_index"]] < 0).any():
        raise bad("observations", "negative chunk_index")


def load_pool(folder: Path) -> ExperiencePool:
    folder = Path(folder)
    arrays_path, meta_path = folder / ARRAYS_FILE, folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except OSError as exc:
        raise PoolError(f"{meta_path}: cannot read ({exc}); is {folder} a pool made by `netllm collect`?"
                        ) from exc
    except json.JSONDecodeError as exc:
        raise PoolError(f"{meta_path}: not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise PoolError(f"{meta_path}: not a {FORMAT} v{FORMAT_VERSION} pool")
    if meta.get("observation_columns") != list(OBS_COLUMNS):
        raise PoolError(f"{meta_path}: observation_columns differ from this code's OBS_COLUMNS")
    try:
        with np.load(arrays_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise PoolError(f"{arrays_path}: cannot read ({exc})") from exc
    needed = ("observations", "actions", "rewards", "dones", "episode_trace", "episode_policy",
              "episode_start_index", "episode_seed")
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise PoolError(f"{arrays_path}: missing arrays {missing}")
    pool = ExperiencePool(arrays["observations"].astype(np.float32), arrays["actions"].astype(np.int64),
                          arrays["rewards"].astype(np.float32), arrays["dones"].astype(bool),
                          arrays["episode_trace"].astype(str), arrays["episode_policy"].astype(str),
                          arrays["episode_start_index"].astype(np.int64),
                          arrays["episode_seed"].astype(np.int64), meta,
                          arrays["labels"].astype(np.int64) if "labels" in arrays else None)
    validate(pool, arrays_path)
    return pool


def iter_windows(bounds: np.ndarray, window: int, stride: int | None = None) -> Iterator[tuple[int, int]]:
    """Deterministic [start, end) windows covering every row, never crossing an episode boundary."""
    stride = stride or window
    for start, end in bounds:
        for s in range(int(start), int(end), stride):
            yield s, min(s + window, int(end))


class WindowSampler:
    """Decision-Transformer training windows: `window` consecutive rows of one episode, right-padded.

    `actions` are the levels played (the model's history tokens); `labels` the levels the loss teaches
    (the pool's `targets`: the same except in relabelled episodes).

    A window starts at a uniformly drawn row and stops at `window` rows or at its episode's end, whichever
    comes first, so no window ever mixes two episodes. Padded rows have mask False (and action 0, return 0).
    Returns-to-go are divided by `return_scale` (see NetLLMConfig.return_scale).
    """

    def __init__(self, pool: ExperiencePool, window: int, return_scale: float, seed: int = 0) -> None:
        if len(pool) == 0:
            raise PoolError("cannot sample windows from an empty pool")
        self.pool = pool
        self.window = window
        self.rng = np.random.default_rng(seed)
        bounds = pool.episode_bounds()
        self.episode_end = np.repeat(bounds[:, 1], bounds[:, 1] - bounds[:, 0])
        self.returns = (pool.returns_to_go() / return_scale).astype(np.float32)
        self.timesteps = pool.observations[:, COL["chunk_index"]].astype(np.int64)
        self.targets = pool.targets

    def sample_spans(self, batch_size: int) -> list[tuple[int, int]]:
        """[start, end) row spans of `batch_size` random windows."""
        starts = self.rng.integers(0, len(self.pool), size=batch_size)
        return [(int(s), int(min(s + self.window, self.episode_end[s]))) for s in starts]

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        return self.gather(self.sample_spans(batch_size))

    def gather(self, spans: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """Batch of the given [start, end) row spans (each within one episode, at most `window` long)."""
        b, w = len(spans), self.window
        out = {"returns": np.zeros((b, w), np.float32),
               "states": np.zeros((b, w, OBS_DIM), np.float32),
               "actions": np.zeros((b, w), np.int64),
               "labels": np.zeros((b, w), np.int64),
               "timesteps": np.zeros((b, w), np.int64),
               "mask": np.zeros((b, w), bool)}
        for i, (start, end) in enumerate(spans):
            n = end - start
            if not 0 < n <= w or end > self.episode_end[start]:
                raise PoolError(f"window [{start}, {end}) is empty, too long or crosses an episode end")
            out["returns"][i, :n] = self.returns[start:end]
            out["states"][i, :n] = self.pool.observations[start:end]
            out["actions"][i, :n] = self.pool.actions[start:end]
            out["labels"][i, :n] = self.targets[start:end]
            out["timesteps"][i, :n] = self.timesteps[start:end]
            out["mask"][i, :n] = True
        return out
