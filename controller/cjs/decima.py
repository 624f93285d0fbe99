"""Decima-style graph neural network scheduler (Mao et al., SIGCOMM'19), written here from the paper.

Inputs are the arrays of `controller.cjs.encoding.encode_event`, trimmed to the jobs in the event
(`featurize`), so a model trained in `emulation.cluster_env`'s layout reads the same features.

Network (`GraphEncoder` + `DecimaNet`), every part a small MLP, `dim` wide:
- per-node embeddings by message passing over each job's DAG, children to parents:
  e_v = prep(x_v) + agg(sum_{c in children(v)} msg(e_c)), repeated `passes` times (TPC-H DAGs are at most a
  few levels deep, so a fixed number of passes reaches every node's descendants);
- a per-job (DAG) summary y_j = sum over the job's nodes of job_mlp([x_v, e_v]), joined with the job's own
  features; a global summary z = sum over jobs of glob_mlp(y_j), joined with the event's global features;
- stage head: one score per node from [x_v, e_v, y_j, z], masked to the runnable stages (a softmax over
  them), so a non-runnable stage has probability zero;
- parallelism-limit head: for the chosen stage's job, one score per limit l = 1..N from [y_j, z, l / N],
  masked to the job's valid limits (`limit_mask`), so every sampled limit is accepted by the simulator.

Features are passed through sign(x) log(1 + |x|) so that task durations of hundreds of seconds and flags of
0/1 share one scale. Training (policy gradient in the simulator) lives in `training.train_cjs`.

Checkpoint (`models/decima-cjs/`): `decima_config.json` (format, model config, training provenance) and
`model.safetensors`. `DecimaPolicy(checkpoint=..., greedy=True)` loads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from controller.cjs.encoding import GLOBAL_FEATURES, JOB_FEATURES, NODE_FEATURES, encode_event
from controller.cjs.observation import DECLINE, Decision, SchedulingEvent
from controller.cjs.policies import CjsPolicy
from controller.model_cache import load_once
from netllm.paths import REPO_ROOT

MAX_JOBS = 64
"""Jobs the model sees (the first in arrival order); the rest count in the `jobs_hidden` feature."""
MAX_STAGES = 20
"""Stage slots per job (TPC-H DAGs have at most 18 stages)."""
RUNNABLE_FEATURE = NODE_FEATURES.index("runnable")
FORMAT = "decima-cjs"
CONFIG_FILE = "decima_config.json"
WEIGHTS_FILE = "model.safetensors"
NEG = -1e9


def default_checkpoint() -> Path:
    """models/decima-cjs, or the folder named by $NETLLM_DECIMA_CHECKPOINT (the service builds policies without options)."""
    value = os.environ.get("NETLLM_DECIMA_CHECKPOINT")
    return Path(value).expanduser() if value else REPO_ROOT / "models" / "decima-cjs"


# -------------------------------------------------------------------------------------------- features
def featurize(event: SchedulingEvent) -> tuple[dict[str, np.ndarray], np.ndarray, list] | None:
    """(arrays of one event, the runnable node indices in event order, their StageRefs); None when no visible
    stage is runnable. Arrays: nodes [J,S,F], node_mask [J,S], adj [J,S,S], jobs [J,Fj], job_mask [J],
    limit_mask [J,N], globals [G], with J the visible jobs."""
    visible = min(len(event.jobs), MAX_JOBS)
    if visible == 0:
        return None
    enc = encode_event(event, max_jobs=visible, max_stages=MAX_STAGES)
    if enc.num_runnable == 0:
        return None
    glob = enc.globals.copy()
    glob[1] = visible / MAX_JOBS  # the same scale whatever the trimmed width
    arrays = {"nodes": enc.nodes.reshape(visible, MAX_STAGES, -1), "node_mask": enc.node_mask.reshape(visible, -1),
              "adj": enc.adjacency, "jobs": enc.jobs, "job_mask": enc.job_mask, "limit_mask": enc.limit_mask,
              "globals": glob}
    return arrays, enc.runnable[:enc.num_runnable].copy(), enc.refs


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack events with different job counts, padding jobs to the widest (padded jobs are masked out)."""
    width = max(s["jobs"].shape[0] for s in samples)
    out: dict[str, torch.Tensor] = {}
    for key in ("nodes", "node_mask", "adj", "jobs", "job_mask", "limit_mask"):
        first = samples[0][key]
        batch = np.zeros((len(samples), width, *first.shape[1:]), first.dtype)
        for i, s in enumerate(samples):
            batch[i, :s[key].shape[0]] = s[key]
        out[key] = torch.from_numpy(batch)
    out["globals"] = torch.from_numpy(np.stack([s["globals"] for s in samples]))
    return out


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


# --------------------------------------------------------------------------------------------- network
@dataclass
class DecimaConfig:
    num_executors: int = 50
    """Cluster size trained on (the limit head scores l / N, so other sizes are served too)."""
    dim: int = 16
    """Width of node embeddings and summaries."""
    hidden: int = 32
    """Hidden width of every MLP."""
    passes: int = 6
    """Message-passing rounds over the DAG (children to parents)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(doc: dict[str, Any]) -> "DecimaConfig":
        unknown = set(doc) - {f.name for f in fields(DecimaConfig)}
        if unknown:
            raise ValueError(f"unknown Decima config fields {sorted(unknown)}")
        return DecimaConfig(**doc)


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                         nn.LeakyReLU(0.2), nn.Linear(hidden, out))


class GraphEncoder(nn.Module):
    """Node embeddings, per-job (DAG) summaries and a global summary of a batch of events."""

    def __init__(self, dim: int, hidden: int, passes: int) -> None:
        super().__init__()
        nf, jf, gf = len(NODE_FEATURES), len(JOB_FEATURES), len(GLOBAL_FEATURES)
        self.passes = passes
        self.prep = mlp(nf, hidden, dim)
        self.msg = mlp(dim, hidden, dim)
        self.agg = mlp(dim, hidden, dim)
        self.job_mlp = mlp(nf + dim, hidden, dim)
        self.glob_mlp = mlp(dim + jf, hidden, dim)
        self.node_width = nf + dim
        self.job_width = dim + jf
        self.glob_width = dim + gf

    def forward(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(nodes [B,J,S,nf+dim], jobs [B,J,dim+jf], global [B,dim+gf])."""
        x = symlog(b["nodes"])
        node_mask = b["node_mask"].unsqueeze(-1).float()
        adj = b["adj"].float()
        h0 = self.prep(x) * node_mask
        e = h0
        for _ in range(self.passes):
            e = (h0 + self.agg(torch.matmul(adj, self.msg(e)))) * node_mask
        nodes = torch.cat([x, e], dim=-1)
        job_sum = (self.job_mlp(nodes) * node_mask).sum(dim=2)
        job_mask = b["job_mask"].unsqueeze(-1).float()
        jobs = torch.cat([job_sum, symlog(b["jobs"])], dim=-1) * job_mask
        glob = (self.glob_mlp(jobs) * job_mask).sum(dim=1)
        return nodes, jobs, torch.cat([glob, symlog(b["globals"])], dim=-1)


class DecimaNet(nn.Module):
    def __init__(self, cfg: DecimaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = GraphEncoder(cfg.dim, cfg.hidden, cfg.passes)
        enc = self.encoder
        self.stage_head = mlp(enc.node_width + enc.job_width + enc.glob_width, cfg.hidden, 1)
        self.limit_head = mlp(enc.job_width + enc.glob_width + 1, cfg.hidden, 1)

    def forward(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(stage log-probs [B, J*S] over runnable nodes, job summaries [B,J,*], global [B,*])."""
        nodes, jobs, glob = self.encoder(b)
        bsz, j, s, _ = nodes.shape
        ctx = torch.cat([nodes, jobs.unsqueeze(2).expand(-1, -1, s, -1),
                         glob[:, None, None, :].expand(-1, j, s, -1)], dim=-1)
        scores = self.stage_head(ctx).squeeze(-1).reshape(bsz, j * s)
        runnable = b["nodes"][..., RUNNABLE_FEATURE].reshape(bsz, j * s) > 0.5
        return F.log_softmax(scores.masked_fill(~runnable, NEG), dim=-1), jobs, glob

    def limit_log_probs(self, jobs: torch.Tensor, glob: torch.Tensor, job_idx: torch.Tensor,
                        limit_mask: torch.Tensor) -> torch.Tensor:
        """Log-probs [B, N] of the limits 1..N for job slot `job_idx` of each event, masked to valid ones."""
        rows = torch.arange(jobs.shape[0])
        chosen = jobs[rows, job_idx]
        n = limit_mask.shape[-1]  # the event's cluster size: limits are scored as fractions l / N
        values = (torch.arange(1, n + 1, dtype=jobs.dtype) / n).view(1, n, 1).expand(jobs.shape[0], -1, -1)
        inp = torch.cat([chosen.unsqueeze(1).expand(-1, n, -1), glob.unsqueeze(1).expand(-1, n, -1), values],
                        dim=-1)
        scores = self.limit_head(inp).squeeze(-1)
        valid = limit_mask[rows, job_idx] > 0
        return F.log_softmax(scores.masked_fill(~valid, NEG), dim=-1)

    def log_prob(self, b: dict[str, torch.Tensor], node: torch.Tensor, limit: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi(node, limit) [B], entropy of both heads [B]) for recorded actions (limit is 1-based)."""
        stage_lp, jobs, glob = self(b)
        job_idx = node // MAX_STAGES
        limit_lp = self.limit_log_probs(jobs, glob, job_idx, b["limit_mask"])
        rows = torch.arange(node.shape[0])
        lp = stage_lp[rows, node] + limit_lp[rows, limit - 1]
        ent = -(stage_lp.exp() * stage_lp.clamp_min(-50)).sum(-1) - (limit_lp.exp() * limit_lp.clamp_min(-50)).sum(-1)
        return lp, ent


def choose(logp: torch.Tensor, greedy: bool, generator: torch.Generator | None) -> int:
    if greedy:
        return int(torch.argmax(logp))
    return int(torch.multinomial(logp.exp(), 1, generator=generator))


@torch.no_grad()
def act(net: DecimaNet, arrays: dict[str, np.ndarray], greedy: bool,
        generator: torch.Generator | None = None) -> tuple[int, int]:
    """(node index j*S+s, limit) for one event; always a runnable node and a valid limit."""
    b = collate([arrays])
    stage_lp, jobs, glob = net(b)
    node = choose(stage_lp[0], greedy, generator)
    limit_lp = net.limit_log_probs(jobs, glob, torch.tensor([node // MAX_STAGES]), b["limit_mask"])
    return node, choose(limit_lp[0], greedy, generator) + 1


def decision_for(node: int, limit: int, runnable: np.ndarray, refs: list) -> Decision:
    k = int(np.searchsorted(runnable, node))
    if k >= len(runnable) or runnable[k] != node:
        raise AssertionError(f"node {node} is not runnable (masking failed)")
    return refs[k], int(limit)


# ------------------------------------------------------------------------------------------ checkpoint
def save_decima(net: DecimaNet, out_dir: Path, training: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    doc = {"format": FORMAT, "format_version": 1, "model": net.cfg.to_json(),
           "features": {"nodes": list(NODE_FEATURES), "jobs": list(JOB_FEATURES), "globals": list(GLOBAL_FEATURES)},
           "max_jobs": MAX_JOBS, "max_stages": MAX_STAGES, "training": training or {}}
    (out_dir / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_decima(ckpt_dir: Path) -> tuple[DecimaNet, dict[str, Any]]:
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable Decima checkpoint config ({exc})") from exc
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    net = DecimaNet(DecimaConfig.from_json(doc["model"]))
    try:
        state = load_file(str(ckpt_dir / WEIGHTS_FILE))
        net.load_state_dict(state)
    except Exception as exc:  # missing file, corrupt file, shape mismatch
        raise ValueError(f"{ckpt_dir / WEIGHTS_FILE}: cannot load ({exc})") from exc
    net.eval()
    return net, doc


# -------------------------------------------------------------------------------------------- policy
class DecimaPolicy(CjsPolicy):
    """Decima's GNN as a CjsPolicy: greedy (argmax) by default, sampling with `greedy=False`."""
    name: ClassVar[str] = "decima"
    blocking: ClassVar[bool] = True

    def __init__(self, checkpoint: str | Path | None = None, greedy: bool = True, seed: int = 0,
                 net: DecimaNet | None = None, threads: int = 0) -> None:
        if threads > 0:  # the network is tiny: one thread is fastest (set for the whole process)
            torch.set_num_threads(threads)
        if net is None:
            path = Path(checkpoint) if checkpoint else default_checkpoint()
            net, _ = load_once(("decima", str(path.resolve())), lambda: load_decima(path))
        self.net = net
        self.greedy = greedy
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)

    def schedule(self, event: SchedulingEvent) -> Decision:
        if event.free_executors < 1:
            return DECLINE
        feats = featurize(event)
        if feats is None:
            return DECLINE
        arrays, runnable, refs = feats
        node, limit = act(self.net, arrays, self.greedy, self.generator)
        return decision_for(node, limit, runnable, refs)


# -------------------------------------------------------------------------------- rollouts and training
@dataclass
class Trajectory:
    """One episode of a policy in the simulator, decision by decision."""
    samples: list[dict[str, np.ndarray]]
    nodes: list[int]
    limits: list[int]
    times_s: list[float]
    rewards_s: list[float]
    """minus the job-seconds between this decision and the next (0 within a round)."""
    mean_jct_s: float = float("nan")


def rollout(sim: Any, seed: int, choose_fn: Any) -> Trajectory:
    """Play one episode; `choose_fn(event, arrays, runnable, refs) -> (node, limit) | None` decides each
    visible decision (None declines; rounds with nothing visible are declined without asking). Works for the
    learned and the baseline policies. A declined round's time counts in the previous decision's reward."""
    traj = Trajectory([], [], [], [], [])
    event = sim.reset(seed)
    before = sim.job_seconds
    while event is not None:
        feats = featurize(event) if event.free_executors > 0 else None
        choice = choose_fn(event, *feats) if feats is not None else None
        if choice is None:
            event = sim.step(DECLINE)
        else:
            arrays, runnable, refs = feats
            node, limit = choice
            traj.samples.append(arrays)
            traj.nodes.append(node)
            traj.limits.append(limit)
            traj.times_s.append(event.time_s)
            traj.rewards_s.append(0.0)
            event = sim.step(decision_for(node, limit, runnable, refs))
        if traj.rewards_s:
            traj.rewards_s[-1] -= sim.job_seconds - before
        before = sim.job_seconds
    traj.mean_jct_s = sim.result().mean_jct_s
    return traj


def node_of(decision: Decision, refs: list, runnable: np.ndarray) -> tuple[int, int] | None:
    """(node index, limit) of a baseline's decision, None for a decline (imitation, experience pool)."""
    if decision[0] is None:
        return None
    return int(runnable[refs.index(decision[0])]), int(decision[1])


def returns_to_go(rewards: list[float]) -> np.ndarray:
    return np.cumsum(np.asarray(rewards, np.float64)[::-1])[::-1]


def advantages(trajs: list[Trajectory], reward_scale_s: float) -> list[np.ndarray]:
    """Decima's input-dependent baseline: every trajectory plays the same job stream, so the baseline at time
    t is the mean over the trajectories of their return-to-go at t (interpolated in time)."""
    rtg = [returns_to_go(t.rewards_s) / reward_scale_s for t in trajs]
    times = [np.asarray(t.times_s) for t in trajs]
    out = []
    for g, ts in zip(rtg, times):
        base = np.mean([np.interp(ts, tj, gj) for tj, gj in zip(times, rtg)], axis=0)
        out.append(g - base)
    return out


def policy_gradient_step(net: DecimaNet, optimizer: torch.optim.Optimizer, trajs: list[Trajectory],
                         reward_scale_s: float, entropy_weight: float, chunk: int = 512,
                         clip_norm: float = 1.0) -> dict[str, float]:
    """One REINFORCE update over the rollouts of one job stream (advantages normalised by their std)."""
    adv = np.concatenate(advantages(trajs, reward_scale_s))
    adv = adv / (adv.std() + 1e-8)
    samples = [s for t in trajs for s in t.samples]
    nodes = np.array([n for t in trajs for n in t.nodes])
    limits = np.array([lim for t in trajs for lim in t.limits])
    optimizer.zero_grad(set_to_none=True)
    total, ent_sum = 0.0, 0.0
    count = len(samples)
    for lo in range(0, count, chunk):
        hi = min(count, lo + chunk)
        lp, ent = net.log_prob(collate(samples[lo:hi]), torch.from_numpy(nodes[lo:hi]),
                               torch.from_numpy(limits[lo:hi]))
        a = torch.from_numpy(adv[lo:hi]).float()
        loss = (-(lp * a).sum() - entropy_weight * ent.sum()) / count
        loss.backward()
        total += float(loss.detach()) * count
        ent_sum += float(ent.detach().sum())
    grad = float(torch.nn.utils.clip_grad_norm_(net.parameters(), clip_norm))
    optimizer.step()
    return {"loss": total / count, "entropy": ent_sum / count, "grad_norm": grad, "decisions": count}


def imitation_loss(net: DecimaNet, samples: list[dict[str, np.ndarray]], nodes: np.ndarray,
                   limits: np.ndarray) -> torch.Tensor:
    """Cross-entropy of a teacher's (stage, limit) choices: the warm start before policy gradient."""
    lp, _ = net.log_prob(collate(samples), torch.from_numpy(nodes), torch.from_numpy(limits))
    return -lp.mean()
