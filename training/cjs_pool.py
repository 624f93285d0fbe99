"""Experience pools for cluster job scheduling: graphs per decision, stored as npz (never pickled).

A decision's input is the trimmed `controller.cjs.decima.featurize` arrays of its event (J visible jobs,
S = MAX_STAGES stage slots). Decisions have different J, so the jobs of every decision are stacked and each
decision points at its rows. `pool.npz` (read with allow_pickle=False):

    job_offsets   int64 [D+1]       decision d owns job rows job_offsets[d] .. job_offsets[d+1]-1
    nodes         float32 [R,S,F]   node features (R = total job rows)
    node_mask     int8 [R,S]
    adj_bits      uint8 [R,S,ceil(S/8)]  np.packbits of the adjacency rows (adj[a, b] = 1: b depends on a)
    jobs          float32 [R,Fj]
    min_limit     int16 [R]         smallest valid parallelism limit of the job (limit_mask is rebuilt)
    globals       float32 [D,G]
    node          int64 [D]         chosen node index (job slot * S + stage slot)
    limit         int64 [D]         chosen parallelism limit (1..N)
    reward_s      float64 [D]       minus the job-seconds until the next decision
    time_s        float64 [D]
    episode_offsets int64 [E+1]     episode e owns decisions episode_offsets[e] .. episode_offsets[e+1]-1

`pool.json`: num_executors, max_stages, and per episode: policy, seed, jobs, mean JCT, return (job-seconds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.cjs.decima import MAX_STAGES, Trajectory

POOL_FILE = "pool.npz"
META_FILE = "pool.json"
ARRAY_KEYS = ("job_offsets", "nodes", "node_mask", "adj_bits", "jobs", "min_limit", "globals", "node", "limit",
              "reward_s", "time_s", "episode_offsets")
MIN_LIMIT_COLUMN = 1
"""Index of min_limit / num_executors among JOB_FEATURES."""


class CjsPoolError(ValueError):
    """A malformed pool; the message names the file and the array."""


class CjsPoolBuilder:
    def __init__(self, num_executors: int) -> None:
        self.num_executors = num_executors
        self.trajs: list[Trajectory] = []
        self.episodes: list[dict[str, Any]] = []

    def add(self, traj: Trajectory, policy: str, seed: int, jobs: int) -> None:
        if not traj.samples:
            return
        self.trajs.append(traj)
        self.episodes.append({"policy": policy, "seed": seed, "jobs": jobs, "mean_jct_s": traj.mean_jct_s,
                              "return_s": float(np.sum(traj.rewards_s)), "decisions": len(traj.samples)})

    def save(self, out_dir: Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        samples = [s for t in self.trajs for s in t.samples]
        counts = [s["jobs"].shape[0] for s in samples]
        adj = np.concatenate([s["adj"] for s in samples]).astype(bool)
        jobs = np.concatenate([s["jobs"] for s in samples])
        # a job with no valid limit (at the cluster's size, not the source) gets N + 1
        min_limit = np.concatenate([np.where(s["limit_mask"].any(axis=1), s["limit_mask"].argmax(axis=1) + 1,
                                             self.num_executors + 1) for s in samples]).astype(np.int16)
        arrays = {
            "job_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            "nodes": np.concatenate([s["nodes"] for s in samples]).astype(np.float32),
            "node_mask": np.concatenate([s["node_mask"] for s in samples]).astype(np.int8),
            "adj_bits": np.packbits(adj, axis=-1),
            "jobs": jobs.astype(np.float32), "min_limit": min_limit,
            "globals": np.stack([s["globals"] for s in samples]).astype(np.float32),
            "node": np.array([n for t in self.trajs for n in t.nodes], np.int64),
            "limit": np.array([x for t in self.trajs for x in t.limits], np.int64),
            "reward_s": np.array([r for t in self.trajs for r in t.rewards_s], np.float64),
            "time_s": np.array([x for t in self.trajs for x in t.times_s], np.float64),
            "episode_offsets": np.concatenate([[0], np.cumsum([len(t.samples) for t in self.trajs])]
                                              ).astype(np.int64),
        }
        np.savez_compressed(out_dir / POOL_FILE, **arrays)
        meta = {"format": "netllm-cjs-pool", "format_version": 1, "num_executors": self.num_executors,
                "max_stages": MAX_STAGES, "episodes": self.episodes}
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out_dir


@dataclass
class CjsPool:
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def num_decisions(self) -> int:
        return int(self.arrays["node"].shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.arrays["episode_offsets"].shape[0] - 1)

    def episode_span(self, e: int) -> tuple[int, int]:
        off = self.arrays["episode_offsets"]
        return int(off[e]), int(off[e + 1])

    def returns_to_go_s(self) -> np.ndarray:
        """Per decision: the sum of its episode's rewards from that decision on (job-seconds, negative)."""
        out = np.zeros(self.num_decisions)
        for e in range(self.num_episodes):
            lo, hi = self.episode_span(e)
            out[lo:hi] = np.cumsum(self.arrays["reward_s"][lo:hi][::-1])[::-1]
        return out

    def sample(self, d: int) -> dict[str, np.ndarray]:
        """The featurize() arrays of decision d."""
        a = self.arrays
        lo, hi = int(a["job_offsets"][d]), int(a["job_offsets"][d + 1])
        n = int(self.meta["num_executors"])
        limit_mask = (np.arange(1, n + 1)[None, :] >= a["min_limit"][lo:hi, None]).astype(np.int8)
        adj = np.unpackbits(a["adj_bits"][lo:hi], axis=-1, count=MAX_STAGES).astype(np.int8)
        return {"nodes": a["nodes"][lo:hi], "node_mask": a["node_mask"][lo:hi], "adj": adj,
                "jobs": a["jobs"][lo:hi], "job_mask": np.ones(hi - lo, np.int8), "limit_mask": limit_mask,
                "globals": a["globals"][d]}


def load_cjs_pool(folder: Path) -> CjsPool:
    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
        with np.load(folder / POOL_FILE, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ARRAY_KEYS}
    except (OSError, ValueError, KeyError) as exc:
        raise CjsPoolError(f"{folder}: not a readable CJS experience pool ({exc})") from exc
    if meta.get("format") != "netllm-cjs-pool" or meta.get("max_stages") != MAX_STAGES:
        raise CjsPoolError(f"{folder / META_FILE}: not a netllm-cjs-pool with max_stages={MAX_STAGES}")
    d = arrays["node"].shape[0]
    if arrays["job_offsets"].shape[0] != d + 1 or arrays["job_offsets"][-1] != arrays["nodes"].shape[0] \
            or arrays["episode_offsets"][-1] != d:
        raise CjsPoolError(f"{folder / POOL_FILE}: offsets do not match the arrays")
    if len(meta.get("episodes", [])) != arrays["episode_offsets"].shape[0] - 1:
        raise CjsPoolError(f"{folder / META_FILE}: episode table does not match {POOL_FILE}")
    return CjsPool(arrays, meta)
