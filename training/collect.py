"""`netllm collect`: build an experience pool by running baseline ABR policies in the chunk-level simulator.

Every (trace, policy, repeat) becomes one episode (with `--keep best`, only each (trace, repeat)'s best
policy's). For variety, repeat r > 0 starts the trace at a seeded random sample index and, with `--noise`,
multiplies every download delay by U(0.9, 1.1) from a seeded generator; repeat 0 starts at the split's start
index (1 unless the split says otherwise). All policies of one (trace, repeat) get the same start and
noise. `--epsilon` optionally replaces a decision by a random level with that probability (seeded), to show
the model actions off the baselines' paths; recorded actions are the ones actually taken. `--epsilon-levels
adjacent` draws the replacement from the levels next to the policy's choice instead of from all of them, so
the episode strays from the policy's path by one rung at a time (with `--label-with` the same policy,
DART-style perturbed demonstrations: states just off the expert's path, labelled with the expert's way
back). The policy `optimal` (the offline optimum's plan, see emulation.abr_optimal) runs without noise: its
plan is only optimal for the exact trace.

DAgger-style relabelling: with `--label-with EXPERT`, a shadow instance of EXPERT is shown every observation
the playing policy sees (so its memory, e.g. robustMPC's prediction errors, follows the session actually
played) and its choice is stored as the decision's training label (pool `labels`); the played level stays in
`actions`. Playing the learned policy (`--policies netllm`) and labelling with an expert shows the model the
states its own choices lead to, with what the expert would do there. `--append-to POOL` writes the earlier
pool's episodes first, so rounds aggregate.

Output: `--out DIR` with pool.npz + pool.json (format in training.pool), config.json and summary.json.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from netllm.cli import CommandError
from netllm.config import arg, save_config, to_jsonable


@dataclass
class Config:
    out: Path = arg(help="folder to write the pool into")
    policies: list[str] = arg(["robustmpc", "robustmpc-pm1", "bba", "bola", "rb"],
                              help="baseline policies to run (registry names, plus 'optimal')")
    split: str = arg("train", help="trace split (traces.splits: train, valid, ...) to run over; never a test "
                                   "split for training data (ignored with --trace-dir)")
    trace_dir: Path | None = arg(None, help="run over every trace file in this folder instead of a split")
    video: Path | None = arg(None, help="video folder (video.json or video_size_L files); default: the "
                                        "reference video1 of the shared data")
    repeats: int = arg(2, help="episodes per (trace, policy): repeat 0 at the split's start, others random")
    noise: bool = arg(True, help="multiply download delays by U(0.9, 1.1) on repeats > 0 (seeded)")
    epsilon: float = arg(0.0, help="probability of replacing a decision by a random level (seeded)")
    epsilon_levels: str = arg("any", help="where --epsilon's random level is drawn from: any (every level) "
                                          "or adjacent (one level above or below the policy's choice)")
    max_traces: int = arg(0, help="use only the first N traces (0: all)")
    seed: int = arg(0, help="base seed of start indices, noise and epsilon draws")
    keep: str = arg("all", help="all: every policy's episode; best: of each (trace, repeat), only the "
                                "episode of the policy with the highest mean QoE (a pool better than every "
                                "baseline in it, at the price of fewer and less varied episodes)")
    label_with: str = arg("", help="an expert policy asked at every decision of the episodes played; its "
                                   "choice becomes the training label (DAgger-style; empty: labels = actions)")
    append_to: Path | None = arg(None, help="an existing pool whose episodes come first in the output "
                                            "(aggregating rounds; it is read, never modified)")


KEEP_CHOICES = ("all", "best")
EPSILON_LEVELS = ("any", "adjacent")


@dataclass
class Session:
    trace: Any
    """traces.bandwidth.BandwidthTrace"""
    start_index: int = 1


def default_video_path() -> Path:
    from netllm.paths import shared_data_dir

    return shared_data_dir() / "abr" / "videos" / "video1_sizes"


def load_sim_video(path: Path | None) -> Any:
    from netllm.video import VideoError, load_video

    path = Path(path) if path else default_video_path()
    try:
        return load_video(path)
    except VideoError as exc:
        raise CommandError(str(exc)) from exc


def split_sessions(split: str | None, trace_dir: Path | None, max_traces: int = 0) -> list[Session]:
    """The sessions (trace + start index) of a split of traces.splits, or of every file in a folder."""
    from traces.bandwidth import TraceError

    try:
        if trace_dir is not None:
            from traces.readers import read_trace_dir

            sessions = [Session(t, 1) for t in read_trace_dir(trace_dir)]
        else:
            sessions = _sessions_of_split(split or "train")
    except (TraceError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    return sessions[:max_traces] if max_traces > 0 else sessions


def _sessions_of_split(split: str) -> list[Session]:
    """Every trace of a traces.splits split, started at sample 1 (its files in sorted name order)."""
    from traces.readers import read_trace
    from traces.splits import SplitError, split_paths

    try:
        paths = split_paths(split)
    except SplitError as exc:
        raise CommandError(str(exc)) from exc
    return [Session(read_trace(p), 1) for p in paths]


class EpsilonPolicy:
    """Wraps a policy: with probability epsilon the decision is a random level (both drawn from `rng`): any
    level, or with `levels="adjacent"` one of the levels next to the policy's choice."""

    def __init__(self, inner: Any, epsilon: float, rng: random.Random, levels: str = "any") -> None:
        if levels not in EPSILON_LEVELS:
            raise ValueError(f"epsilon levels {levels!r}: use one of {', '.join(EPSILON_LEVELS)}")
        self.inner, self.epsilon, self.rng, self.levels = inner, epsilon, rng, levels
        self.name = getattr(inner, "name", type(inner).__name__)

    def reset(self) -> None:
        self.inner.reset()

    def select_quality(self, obs: Any) -> int:
        quality = self.inner.select_quality(obs)  # always asked, so stateful policies see every chunk
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            if self.levels == "any":
                return self.rng.randrange(obs.levels)
            return self.rng.choice([q for q in (quality - 1, quality + 1) if 0 <= q < obs.levels])
        return quality

    def observe_outcome(self, reward: float) -> None:
        self.inner.observe_outcome(reward)


def run_episode(policy: Any, session: Session, video: Any, sim_config: Any, seed: int,
                expert: Any = None) -> dict[str, Any]:
    """Simulate one session, recording each decision's observation row, action and chunk QoE, and with an
    `expert` policy the level it picks in each observed state (`labels`)."""
    from controller.netllm.abr_features import observation_features
    from emulation.abr_sim import simulate_session

    rows: list[np.ndarray] = []
    actions: list[int] = []
    chunks: list[int] = []
    labels: list[int] = []
    if expert is not None:
        expert.reset()

    def record(obs: Any, quality: int) -> None:
        rows.append(observation_features(obs))
        actions.append(int(quality))
        chunks.append(obs.chunk_index)
        if expert is not None:
            labels.append(int(expert.select_quality(obs)))

    result = simulate_session(policy, session.trace, video, start_index=session.start_index,
                              config=sim_config, seed=seed, on_decision=record)
    rewards = [result.qoe[c] for c in chunks]
    taken = [result.qualities[c] for c in chunks]
    return {"observations": np.stack(rows) if rows else np.zeros((0, 0), np.float32),
            "actions": np.asarray(taken, dtype=np.int64), "rewards": np.asarray(rewards, dtype=np.float32),
            "labels": np.asarray(labels, dtype=np.int64) if expert is not None else None,
            "mean_qoe": result.mean_qoe}


def _policy_for(name: str, session: Session, video: Any, sim_config: Any) -> Any:
    if name == "optimal":
        from emulation.abr_optimal import PlanPolicy, solve

        return PlanPolicy(solve(session.trace, video, session.start_index, sim_config).plan)
    from controller.policies import make_policy

    return make_policy(name)


def collect_pool(sessions: list[Session], policies: list[str], video: Any, repeats: int = 1,
                 noise: bool = True, epsilon: float = 0.0, seed: int = 0, progress: bool = False,
                 meta: dict[str, Any] | None = None, keep: str = "all", label_with: str = "",
                 append_to: Any = None, epsilon_levels: str = "any") -> tuple[Any, dict[str, list[float]]]:
    """Run every (session, repeat) with every policy in the simulator; the pool and each policy's episode QoE.

    The policies of one (session, repeat) face the same start index and delay noise (paired episodes), so
    their returns compare like for like; `keep="best"` stores only the highest-return one of them.
    `label_with`: an expert policy's name, asked in every state played (see the module docstring);
    `append_to`: a pool whose episodes come first."""
    from emulation.abr_sim import SimConfig
    from training.pool import PoolBuilder

    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep {keep!r}: use one of {', '.join(KEEP_CHOICES)}")
    builder = PoolBuilder()
    if append_to is not None:
        builder.add_pool(append_to)
    expert = _policy_for(label_with, sessions[0], video, SimConfig()) if label_with else None
    per_policy: dict[str, list[float]] = {p: [] for p in policies}
    jobs = [(i, s, r) for i, s in enumerate(sessions) for r in range(repeats)]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="collect", unit="session")
    for index, session, repeat in jobs:
        episode_seed = seed * 1_000_003 + index * repeats + repeat
        start = session.start_index if repeat == 0 else \
            random.Random(episode_seed).randrange(1, len(session.trace.time_s))
        episode_session = Session(session.trace, start)
        episodes = []
        for name in policies:
            sim_config = SimConfig(noise=noise and repeat > 0 and name != "optimal")
            policy = _policy_for(name, episode_session, video, sim_config)
            if epsilon > 0 and name != "optimal":
                rng = random.Random(f"{episode_seed}:{name}")
                policy = EpsilonPolicy(policy, epsilon, rng, epsilon_levels)
            ep = run_episode(policy, episode_session, video, sim_config, episode_seed, expert)
            per_policy[name].append(ep["mean_qoe"])
            episodes.append((name, ep))
        if keep == "best":
            episodes = [max(episodes, key=lambda e: e[1]["mean_qoe"])]
        for name, ep in episodes:
            builder.add_episode(ep["observations"], ep["actions"], ep["rewards"], session.trace.name, name,
                                start, episode_seed, ep["labels"])
    full_meta = {"policies": list(policies), "repeats": repeats, "noise": noise, "epsilon": epsilon,
                 "epsilon_levels": epsilon_levels, "seed": seed, "keep": keep, "traces": len(sessions),
                 "sim_config": to_jsonable(SimConfig()), "label_with": label_with or None}
    if append_to is not None:  # provenance of the aggregated rounds, oldest first
        full_meta["appended_to"] = {"episodes": append_to.episode_count, "meta": append_to.meta}
    full_meta.update(meta or {})
    return builder.build(full_meta), per_policy


def run(cfg: Config) -> int:
    from controller.policies import UnknownPolicyError, policy_class
    from netllm.chunklog import write_summary
    from training.pool import PoolError

    if cfg.repeats < 1 or not 0 <= cfg.epsilon <= 1:
        raise CommandError("--repeats must be >= 1 and --epsilon in [0, 1]")
    if not cfg.policies:
        raise CommandError("--policies is empty: name at least one policy to play the episodes")
    if cfg.keep not in KEEP_CHOICES:
        raise CommandError(f"--keep {cfg.keep!r}: use one of {', '.join(KEEP_CHOICES)}")
    if cfg.epsilon_levels not in EPSILON_LEVELS:
        raise CommandError(f"--epsilon-levels {cfg.epsilon_levels!r}: use one of {', '.join(EPSILON_LEVELS)}")
    for name in cfg.policies + ([cfg.label_with] if cfg.label_with else []):
        if name != "optimal":
            try:
                policy_class(name)
            except (UnknownPolicyError, ImportError) as exc:
                raise CommandError(f"policy {name!r}: {exc}") from exc
    if cfg.label_with == "optimal":
        raise CommandError("--label-with optimal: the offline optimum is a plan for one session's start, not "
                           "a policy that can be asked about another policy's states; name a policy")
    if cfg.trace_dir is None and cfg.split not in ("train", "valid"):
        raise CommandError(f"split {cfg.split!r}: experience pools are built from the train (or valid) split "
                           "only; test traces must stay unseen")
    if cfg.append_to is not None and Path(cfg.append_to).resolve() == Path(cfg.out).resolve():
        raise CommandError("--append-to and --out name the same folder: write the aggregate to a new one, so "
                           "the earlier pool stays as it was")
    video = load_sim_video(cfg.video)
    earlier = _load_earlier_pool(cfg.append_to)
    sessions = split_sessions(cfg.split, cfg.trace_dir, cfg.max_traces)
    started = time.monotonic()
    meta = {"split": None if cfg.trace_dir else cfg.split, "trace_dir": str(cfg.trace_dir or ""),
            "video": str(cfg.video or default_video_path())}
    try:
        pool, per_policy = collect_pool(sessions, cfg.policies, video, cfg.repeats, cfg.noise, cfg.epsilon,
                                        cfg.seed, progress=True, meta=meta, keep=cfg.keep,
                                        label_with=cfg.label_with, append_to=earlier,
                                        epsilon_levels=cfg.epsilon_levels)
    except PoolError as exc:  # e.g. no session at all: an empty pool
        raise CommandError(f"no pool written: {exc}") from exc
    pool.save(cfg.out)
    save_config(cfg, cfg.out)
    summary = {"rows": len(pool), "episodes": pool.episode_count, "traces": len(sessions),
               "seconds": round(time.monotonic() - started, 2),
               "mean_qoe_by_policy": {p: float(np.mean(v)) for p, v in per_policy.items() if v},
               "episodes_kept_by_policy": {p: int(np.sum(pool.episode_policy == p)) for p in cfg.policies},
               "appended_episodes": earlier.episode_count if earlier is not None else 0,
               "relabelled_decisions": pool.relabelled_rows()}
    write_summary(summary, cfg.out)
    print(f"pool: {len(pool)} decisions in {pool.episode_count} episodes -> {cfg.out}")
    if cfg.label_with:
        print(f"labels from {cfg.label_with}: {pool.relabelled_rows()} decisions differ from the level played")
    return 0


def _load_earlier_pool(folder: Path | None) -> Any:
    from training.pool import PoolError, load_pool

    if folder is None:
        return None
    try:
        return load_pool(folder)
    except PoolError as exc:
        raise CommandError(f"--append-to: {exc}") from exc
