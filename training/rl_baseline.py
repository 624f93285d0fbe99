"""`netllm train-rl`: train the Pensieve-architecture actor-critic (policy `pensieve`) in the simulator.

Algorithm: synchronous advantage actor-critic (A2C), Pensieve's recipe on one process: `--envs` sessions
run side by side (random trace of the training split, random start sample, delay noise on, as Pensieve's
training environment), the actor samples every decision, every `--rollout` decisions per session the
n-step discounted returns (gamma 0.99, bootstrapped from the critic unless the session ended) give the
advantages (normalised per update); actor loss = -log pi(a|s) * advantage - beta * entropy (beta decays
linearly from `--entropy-start` to `--entropy-end`), critic loss = squared error; Adam with Pensieve's
learning rates (actor 1e-4, critic 1e-3). Rewards are the chunk QoE terms (`netllm.qoe`).

Checkpoint selection: every `--eval-every` decisions the greedy actor (most likely level) plays every
validation trace once (start sample 1, no noise, chunk 0 at quality 1: the project's evaluation protocol)
and the best mean QoE so far is saved to `OUT/best/` (the folder the `pensieve` policy loads, swapped in
whole): `model.safetensors` (actor), `critic.safetensors`, `config.json` (network shape, ladder, training
metadata). The run folder `--out` (default runs/pensieve, never a shipped model) holds, as every training
command's: `config.json` (the resolved options), `loss.csv` (one line per evaluation), `summary.json` (the
outcome) and best/. There is no `--resume`: an --out that is not empty is refused. Training and validation
traces must not overlap fcc-test or norway-test (checked by content): evaluation sets are never used for
training or checkpoint selection.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from netllm.atomic import write_folder_atomically
from netllm.cli import CommandError
from netllm.config import arg, save_config, to_jsonable
from netllm.paths import shared_data_dir
from training.run_files import check_new_out, check_ranges

LOG_COLUMNS = ("step", "wall_s", "entropy", "train_episode_qoe", "valid_mean_qoe")


def _default_video() -> Path:
    return shared_data_dir() / "abr" / "videos" / "video1_sizes"


@dataclass
class Config:
    out: Path = arg(Path("runs/pensieve"), help="run folder (must be new or empty); the checkpoint goes to "
                                                "OUT/best")
    train_traces: str = arg("train", help="training traces: a split name (netllm splits), a folder or a "
                                          "JSON list")
    valid_traces: str = arg("valid", help="validation traces for checkpoint selection (same forms)")
    video: Path = arg(_default_video(), help="video (video.json folder or video_size_L folder)")
    steps: int = arg(300_000, help="training decisions (chunks) in total")
    envs: int = arg(16, help="sessions simulated side by side")
    rollout: int = arg(32, help="decisions per session between updates")
    gamma: float = arg(0.99, help="discount")
    actor_lr: float = arg(1e-4, help="actor learning rate (Adam)")
    critic_lr: float = arg(1e-3, help="critic learning rate (Adam)")
    entropy_start: float = arg(0.1, help="entropy bonus weight at the start")
    entropy_end: float = arg(0.01, help="entropy bonus weight at the end (linear decay)")
    eval_every: int = arg(25_000, help="decisions between validation runs")
    noise: bool = arg(True, help="delay noise U(0.9, 1.1) in training sessions (never in validation)")
    hidden: int = arg(128, help="filters / units per layer")
    seed: int = arg(0, help="random seed (traces, starts, actions, noise, initial weights)")
    threads: int = arg(1, help="torch CPU threads")


# ---------------------------------------------------------------------------------------------- traces

def resolve_traces(spec: str) -> list[Path]:
    """A split name from `traces.splits`, a trace folder or a JSON list of paths."""
    from emulation.abr_sim_cli import trace_paths
    from traces.splits import SPLITS, SplitError, split_paths

    if spec in SPLITS:
        try:
            return split_paths(spec)
        except SplitError as exc:
            raise CommandError(str(exc)) from None
    return trace_paths(Path(spec))


def check_no_test_traces(paths: list[Path]) -> None:
    """Refuse training or validation traces byte-identical to a test trace (fcc-test, norway-test)."""
    from traces.splits import SplitError, copies_of_test_traces

    try:
        leaked = copies_of_test_traces(paths)
    except SplitError:
        return  # no test splits on this machine: nothing to leak
    if leaked:
        raise CommandError(f"{len(leaked)} training/validation traces are test traces (e.g. {leaked[0][0].name}); "
                           "use the project's splits (netllm splits)")


# ---------------------------------------------------------------------------------------------- rollouts

class Sessions:
    """`n` training sessions stepped together; finished sessions restart on a random trace and start."""

    def __init__(self, traces: list[Any], video: Any, config: Any, n: int, rng: np.random.Generator,
                 history_len: int) -> None:
        from controller.policies.pensieve import CONV_WIDTH, S_INFO

        self.traces, self.video, self.config, self.rng = traces, video, config, rng
        self.history_len = history_len
        width = max(history_len, video.levels, CONV_WIDTH)
        self.state = np.zeros((n, S_INFO, width), dtype=np.float32)
        self.sessions = [self._new() for _ in range(n)]
        self.episode_qoe: list[float] = []
        self._running = [0.0] * n
        for i in range(n):
            self._features(i)

    def _new(self) -> Any:
        from emulation.abr_sim import AbrSession

        trace = self.traces[int(self.rng.integers(len(self.traces)))]
        start = int(self.rng.integers(1, trace.samples))
        return AbrSession(trace, self.video, self.config, start, int(self.rng.integers(2**62)))

    def _features(self, i: int) -> None:
        from controller.policies.pensieve import pensieve_features

        pensieve_features(self.sessions[i].obs, self.history_len, out=self.state[i])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply one action per session; returns (rewards, done flags) and refreshes `state`."""
        n = len(self.sessions)
        rewards = np.empty(n, dtype=np.float32)
        dones = np.zeros(n, dtype=np.float32)
        for i, session in enumerate(self.sessions):
            step = session.step(int(actions[i]))
            rewards[i] = step.qoe
            self._running[i] += step.qoe
            if session.done:
                dones[i] = 1.0
                self.episode_qoe.append(self._running[i] / max(self.video.chunk_count - 1, 1))
                self._running[i] = 0.0
                self.sessions[i] = self._new()
            self._features(i)
        return rewards, dones


def discounted_returns(rewards: np.ndarray, dones: np.ndarray, bootstrap: np.ndarray,
                       gamma: float) -> np.ndarray:
    """n-step returns per (step, session); a done flag cuts the bootstrap at that step."""
    out = np.zeros_like(rewards)
    running = bootstrap.astype(np.float32)
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running * (1.0 - dones[t])
        out[t] = running
    return out


# ---------------------------------------------------------------------------------------------- training

def evaluate(actor: Any, net_config: dict[str, Any], traces: list[Any], video: Any) -> float:
    """Mean QoE of the greedy actor over the traces (start 1, no noise, chunk 0 at quality 1)."""
    from controller.policies.pensieve import PensievePolicy
    from emulation.abr_sim import SimConfig, simulate_session

    policy = PensievePolicy.from_network(actor, net_config)
    cfg = SimConfig()
    try:
        return float(np.mean([simulate_session(policy, t, video, 1, cfg).mean_qoe for t in traces]))
    finally:
        actor.train()


def save_checkpoint(folder: Path, actor: Any, critic: Any, net_config: dict[str, Any]) -> None:
    """The `pensieve` policy's checkpoint folder, swapped in whole (an interruption keeps the last one)."""
    from safetensors.torch import save_file

    def write(staging: Path) -> None:
        for net, name in ((actor, "model.safetensors"), (critic, "critic.safetensors")):
            save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(staging / name))
        (staging / "config.json").write_text(json.dumps(net_config, indent=2, sort_keys=True) + "\n")

    write_folder_atomically(Path(folder), write)


class Trainer:
    def __init__(self, cfg: Config, train: list[Any], valid: list[Any], video: Any) -> None:
        import torch

        from controller.policies.pensieve import S_LEN, build_net
        from emulation.abr_sim import SimConfig

        torch.manual_seed(cfg.seed)
        self.cfg, self.valid, self.video = cfg, valid, video
        self.actor = build_net(video.levels, S_LEN, cfg.hidden)
        self.critic = build_net(video.levels, S_LEN, cfg.hidden, outputs=1)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.rng = np.random.default_rng(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.sessions = Sessions(train, video, SimConfig(noise=cfg.noise), cfg.envs, self.rng, S_LEN)
        self.net_config = {"levels": video.levels, "history_len": S_LEN, "hidden": cfg.hidden,
                           "ladder_kbps": list(video.ladder_kbps), "algorithm": "a2c",
                           "train_traces": cfg.train_traces, "valid_traces": cfg.valid_traces,
                           "video": str(cfg.video)}

    def update(self, fraction: float) -> float:
        """One rollout of `rollout` steps per session and one gradient step; returns the mean entropy."""
        import torch

        cfg, envs = self.cfg, self.sessions
        states, actions, rewards, dones = [], [], [], []
        for _ in range(cfg.rollout):
            state = torch.from_numpy(envs.state.copy())
            with torch.no_grad():
                probs = torch.softmax(self.actor(state), dim=1)
            action = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
            r, d = envs.step(action.numpy())
            states.append(state), actions.append(action), rewards.append(r), dones.append(d)
        with torch.no_grad():
            bootstrap = self.critic(torch.from_numpy(envs.state)).squeeze(1).numpy()
        returns = discounted_returns(np.stack(rewards), np.stack(dones), bootstrap, cfg.gamma)
        ret = torch.from_numpy(returns).reshape(-1)
        s = torch.cat(states)
        a = torch.cat(actions)
        values = self.critic(s).squeeze(1)
        critic_loss = 0.5 * (ret - values).pow(2).mean()
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        logp = torch.log_softmax(self.actor(s), dim=1)
        entropy = -(logp.exp() * logp).sum(dim=1).mean()
        advantage = ret - values.detach()
        # Normalised advantages: the stall penalty makes raw advantages span two orders of magnitude.
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-6)
        beta = cfg.entropy_start + (cfg.entropy_end - cfg.entropy_start) * fraction
        actor_loss = -(logp.gather(1, a[:, None]).squeeze(1) * advantage).mean() - beta * entropy
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        return float(entropy.detach())

    def run(self) -> dict[str, Any]:
        """Train; evaluations go to OUT/loss.csv as they happen, the best actor to OUT/best."""
        from training.trainer import CsvLog

        cfg = self.cfg
        per_update = cfg.rollout * cfg.envs
        updates = max(1, cfg.steps // per_update)
        eval_every = max(1, cfg.eval_every // per_update)
        best, best_step, evaluations = -np.inf, 0, 0
        started = time.time()
        log = CsvLog(Path(cfg.out) / "loss.csv", LOG_COLUMNS)
        for u in range(1, updates + 1):
            entropy = self.update(u / updates)
            if u % eval_every == 0 or u == updates:
                step = u * per_update
                valid_qoe = evaluate(self.actor, self.net_config, self.valid, self.video)
                recent = self.sessions.episode_qoe[-100:]
                log.write({"step": step, "wall_s": round(time.time() - started, 2), "entropy": entropy,
                           "train_episode_qoe": float(np.mean(recent)) if recent else "",
                           "valid_mean_qoe": valid_qoe})
                evaluations += 1
                if valid_qoe > best:
                    best, best_step = valid_qoe, step
                    save_checkpoint(Path(cfg.out) / "best", self.actor, self.critic,
                                    {**self.net_config, "step": step, "valid_mean_qoe": valid_qoe})
                print(f"step {step:>9d}  valid QoE {valid_qoe:.4f}  best {best:.4f} @ {best_step}  "
                      f"entropy {entropy:.3f}  {time.time() - started:.0f} s", flush=True)
        log.close()
        return {"steps": updates * per_update, "best_valid_mean_qoe": best, "best_step": best_step,
                "evaluations": evaluations, "episodes": len(self.sessions.episode_qoe),
                "wall_s": time.time() - started}


def _check(cfg: Config) -> None:
    """Every option that can be checked without data, before any work."""
    if cfg.steps < 1 or cfg.envs < 1 or cfg.rollout < 1:
        raise CommandError("--steps, --envs and --rollout must be >= 1")
    check_ranges(cfg, at_least={"actor_lr": 0, "critic_lr": 0, "entropy_start": 0, "entropy_end": 0,
                                "eval_every": 1, "hidden": 1, "threads": 1},
                 within={"gamma": (0, 1)})
    check_new_out(Path(cfg.out), "train-rl")


def run(cfg: Config) -> int:
    import torch

    from emulation.abr_sim import PreparedTrace, PreparedVideo
    from netllm.chunklog import write_summary
    from netllm.video import VideoError, load_video
    from traces.bandwidth import TraceError
    from traces.readers import read_trace

    _check(cfg)
    torch.set_num_threads(cfg.threads)
    train_paths, valid_paths = resolve_traces(cfg.train_traces), resolve_traces(cfg.valid_traces)
    check_no_test_traces(train_paths + valid_paths)
    try:
        video = PreparedVideo(load_video(cfg.video))
        train = [PreparedTrace(read_trace(p)) for p in train_paths]
        valid = [PreparedTrace(read_trace(p)) for p in valid_paths]
    except (VideoError, TraceError) as exc:
        raise CommandError(str(exc)) from None
    save_config(cfg, Path(cfg.out))
    result = Trainer(cfg, train, valid, video).run()
    best = Path(cfg.out) / "best"
    write_summary(to_jsonable(result | {"train_traces": len(train), "valid_traces": len(valid),
                                        "checkpoint": str(best)}), cfg.out)
    print(f"best validation QoE {result['best_valid_mean_qoe']:.4f} at step {result['best_step']}; "
          f"checkpoint in {best}")
    return 0
