"""`netllm train-cjs`: train the cluster-job schedulers: Decima's GNN (`--model decima`) and NetLLM-CJS
(`--model netllm-cjs`).

Seeds (job streams) are split three ways so that nothing is selected on the streams it is evaluated on:
evaluation uses seeds 0..9999 (`netllm cjs-eval`'s default seed base 0, benchmarks/bench_cjs.py), validation
seeds start at VALID_SEED_BASE and training seeds at TRAIN_SEED_BASE.

`--model decima` (policy gradient in the simulator, Decima's recipe shortened to fit a CPU budget):
1. warm start: imitate the Fair heuristic's (stage, limit) choices on `--bc-episodes` training episodes;
2. REINFORCE: each iteration plays `--rollouts` sampled episodes of one training job stream, with Decima's
   input-dependent baseline (the mean return-to-go of the rollouts at the same simulated time), an entropy
   bonus decaying to `--entropy-min`, and a curriculum of episode lengths (`--curriculum-jobs`, spread
   evenly over the iterations);
3. every `--eval-every` iterations the greedy policy is scored on the validation seeds (mean JCT) and the
   best model is kept in OUT/best/ (and copied to `--export DIR`, e.g. models/decima-cjs, when asked).

`--model netllm-cjs` (return-conditioned offline training, Decision-Transformer style, as NetLLM's DD-LRNA):
1. an experience pool (`training.cjs_pool`) from the baselines and Decima on training seeds (built unless
   `--pool` names an existing one), plus a validation pool on validation seeds;
2. windows of `--window` consecutive decisions with returns-to-go; loss = cross-entropy of the pool's stage
   (masked to the runnable ones) + cross-entropy of its parallelism limit (masked to the valid ones);
3. the checkpoint with the lowest validation loss is kept in OUT/best (and copied to `--export DIR`, e.g.
   models/netllm-cjs-smollm2, when asked), in `--save-dtype`, with the serving target return (per job) taken
   as the `--target-quantile` of the pool's per-episode returns.

Outputs in `--out`: config.json, loss.csv, summary.json, best/ (and pool/, valid-pool/ for netllm-cjs). A run
never writes outside OUT unless `--export` names a folder; that folder is swapped whole, so it must be absent,
empty or hold a checkpoint of the same model. There is no `--resume`: an OUT that holds a run is refused.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from netllm.atomic import write_folder_atomically
from netllm.cli import CommandError
from netllm.config import arg, save_config
from netllm.paths import REPO_ROOT
from training.run_files import (check_choice, check_export_target, check_new_out, check_ranges,
                                 export_checkpoint)

TRAIN_SEED_BASE = 100_000
VALID_SEED_BASE = 50_000
EVAL_SEEDS_BELOW = 10_000
MODELS = ("decima", "netllm-cjs")
LOSS_COLUMNS = ("step", "phase", "jobs", "loss", "entropy", "grad_norm", "train_jct_s", "valid_jct_s",
                "valid_loss", "best", "elapsed_s")


@dataclass
class Config:
    model: str = arg("decima", help="decima (GNN, policy gradient) or netllm-cjs (LLM, offline)")
    out: Path = arg(Path("runs/cjs-train"), help="run folder (config.json, loss.csv, summary.json, best/)")
    # Never a shipped model by default: a run may end worse than what is there.
    export: Path | None = arg(None, help="also copy OUT/best here (e.g. models/decima-cjs); only an absent "
                                         "or empty folder or a checkpoint of the same model is replaced")
    executors: int = arg(50, help="executors in the simulated cluster")
    mean_gap_s: float = arg(25.0, help="mean gap between job arrivals (Poisson)")
    valid_seeds: int = arg(4, help="validation job streams (seeds VALID_SEED_BASE..)")
    valid_jobs: int = arg(100, help="jobs per validation episode")
    seed: int = arg(0, help="seed of initialisation and sampling")
    threads: int = arg(1, help="torch CPU threads")
    max_minutes: float = arg(20.0, help="stop training after this much wall-clock time (0: no limit)")
    lr: float = arg(1e-3, help="learning rate (Adam)")
    # ---- decima
    dim: int = arg(16, help="decima/netllm-cjs graph encoder: embedding width")
    hidden: int = arg(32, help="graph encoder and heads: MLP hidden width")
    passes: int = arg(6, help="graph encoder: message-passing rounds")
    init_from: Path | None = arg(None, help="decima: start from this Decima checkpoint (continue training; "
                                            "the imitation warm start is skipped)")
    bc_episodes: int = arg(12, help="decima: Fair episodes imitated as the warm start (0: none)")
    bc_jobs: int = arg(50, help="decima: jobs per imitation episode")
    bc_steps: int = arg(400, help="decima: imitation steps (batches of 256 decisions)")
    pg_iterations: int = arg(200, help="decima: policy-gradient iterations")
    rollouts: int = arg(4, help="decima: sampled episodes per iteration (one job stream)")
    curriculum_jobs: list[int] = arg([20, 50, 100], help="decima: episode lengths, in order, spread evenly "
                                                          "over the iterations")
    pg_lr: float = arg(3e-4, help="decima: policy-gradient learning rate")
    entropy_weight: float = arg(0.05, help="decima: initial entropy bonus")
    entropy_min: float = arg(0.005, help="decima: final entropy bonus (linear decay)")
    reward_scale_s: float = arg(100.0, help="decima: job-seconds per reward unit")
    eval_every: int = arg(20, help="decima: validate every N iterations")
    # ---- netllm-cjs
    backbone: str = arg("smollm2", help="netllm-cjs: smollm2 (embedded) or tiny (random, tests)")
    pool: Path | None = arg(None, help="netllm-cjs: experience pool folder (default: build OUT/pool)")
    pool_policies: list[str] = arg(["fair", "fifo-cap25", "fifo", "decima", "decima-sample"],
                                   help="netllm-cjs: policies whose episodes fill the pool (decima-sample: "
                                        "Decima sampling instead of argmax)")
    pool_seeds: int = arg(8, help="netllm-cjs: training job streams per pool policy")
    pool_jobs: int = arg(50, help="netllm-cjs: jobs per pool episode (also the serving default)")
    decima_checkpoint: Path | None = arg(None, help="netllm-cjs: Decima model for the pool and for the "
                                                    "graph encoder's initial weights (default models/decima-cjs)")
    window: int = arg(4, help="netllm-cjs: decisions of context (4 tokens each)")
    return_scale_s: float = arg(1000.0, help="netllm-cjs: returns-to-go are divided by this")
    lora_rank: int = arg(8, help="netllm-cjs: LoRA rank")
    optimizer_steps: int = arg(400, help="netllm-cjs: optimizer steps")
    micro_batch_size: int = arg(8, help="netllm-cjs: windows per micro-batch")
    grad_accum: int = arg(2, help="netllm-cjs: micro-batches per optimizer step")
    warmup_steps: int = arg(20, help="netllm-cjs: learning-rate warm-up, optimizer steps")
    eval_loss_every: int = arg(50, help="netllm-cjs: validation loss every N optimizer steps")
    valid_windows: int = arg(128, help="netllm-cjs: validation windows scored per evaluation")
    target_quantile: float = arg(0.9, help="netllm-cjs: serving target return per job = this quantile of the "
                                           "pool's per-episode return per job")
    save_dtype: str = arg("bfloat16", help="netllm-cjs: storage dtype of the checkpoint")


def _check(cfg: Config) -> None:
    """Every option that can be checked without simulating, before any work."""
    check_choice(cfg, "model", MODELS)
    if min(cfg.executors, cfg.valid_seeds, cfg.valid_jobs, cfg.threads, cfg.rollouts, cfg.eval_every) < 1:
        raise CommandError("--executors, --valid-seeds, --valid-jobs, --threads, --rollouts and --eval-every "
                           "must be >= 1")
    if not cfg.curriculum_jobs or min(cfg.curriculum_jobs) < 1:
        raise CommandError("--curriculum-jobs needs job counts >= 1")
    if min(cfg.window, cfg.optimizer_steps, cfg.micro_batch_size, cfg.grad_accum, cfg.pool_jobs) < 1:
        raise CommandError("--window, --optimizer-steps, --micro-batch-size, --grad-accum and --pool-jobs "
                           "must be >= 1")
    check_ranges(cfg, at_least={"lr": 0, "pg_lr": 0, "max_minutes": 0, "bc_episodes": 0, "bc_steps": 0,
                                "pg_iterations": 0, "entropy_weight": 0, "entropy_min": 0, "warmup_steps": 0,
                                "dim": 1, "hidden": 1, "passes": 1, "bc_jobs": 1, "pool_seeds": 1,
                                "lora_rank": 1, "eval_loss_every": 1, "valid_windows": 1},
                 above={"mean_gap_s": 0, "reward_scale_s": 0, "return_scale_s": 0},
                 within={"target_quantile": (0, 1)})
    check_choice(cfg, "save_dtype", ("float32", "bfloat16", "float16"))
    if cfg.model == "netllm-cjs" and cfg.pool is None:
        _check_pool_policies(cfg.pool_policies)
    if cfg.export is not None:
        _check_export(cfg)


def _check_pool_policies(names: list[str]) -> None:
    from controller.cjs.policies import PolicyUnavailableError, UnknownPolicyError, policy_class

    if not names:
        raise CommandError("--pool-policies is empty: name the policies whose episodes fill the pool")
    for name in names:
        if name not in ("decima", "decima-sample"):
            try:
                policy_class(name)
            except (UnknownPolicyError, PolicyUnavailableError) as exc:
                raise CommandError(f"--pool-policies: {exc}") from None


def _check_export(cfg: Config) -> None:
    """--export swaps the target whole: only an absent or empty folder or a checkpoint of this model."""
    if cfg.model == "decima":
        from controller.cjs import decima

        formats = {decima.CONFIG_FILE: (decima.CONFIG_FILE, decima.WEIGHTS_FILE)}
    else:
        from controller.cjs import netllm_cjs_model as ncjs

        formats = {ncjs.CONFIG_FILE: (ncjs.CONFIG_FILE, ncjs.MODULES_FILE, ncjs.ADAPTER_CONFIG,
                                      ncjs.ADAPTER_WEIGHTS, ncjs.BACKBONE_FILE)}
    check_export_target(Path(cfg.export), formats, "Decima" if cfg.model == "decima" else "NetLLM-CJS")


def _load_given_pool(folder: Path) -> Any:
    """--pool, checked before anything is simulated: a missing folder or an ABR pool is a user error."""
    from training.cjs_pool import CjsPoolError, load_cjs_pool

    try:
        return load_cjs_pool(folder)
    except CjsPoolError as exc:
        raise CommandError(f"--pool: {exc}") from None


def _export(cfg: Config, best: Path) -> str | None:
    if cfg.export is None:
        return None
    _check_export(cfg)  # again: the folder may have changed during training
    export_checkpoint(best, Path(cfg.export))
    return str(cfg.export)


def make_sim(cfg: Config, jobs: int, catalog: Any) -> Any:
    from emulation.cluster_sim import ClusterSim, SimConfig

    return ClusterSim(SimConfig(num_executors=cfg.executors, num_jobs=jobs, mean_gap_s=cfg.mean_gap_s), catalog)


def validate_policy(cfg: Config, policy: Any, catalog: Any) -> float:
    """Mean JCT over the validation seeds (never the evaluation seeds)."""
    sim = make_sim(cfg, cfg.valid_jobs, catalog)
    jcts = [j.jct_s for k in range(cfg.valid_seeds) for j in sim.run(policy, VALID_SEED_BASE + k).jobs]
    return float(np.mean(jcts))


# ----------------------------------------------------------------------------------------------- decima
def _teacher_data(cfg: Config, catalog: Any) -> tuple[list, np.ndarray, np.ndarray]:
    from controller.cjs.decima import node_of, rollout
    from controller.cjs.policies import make_policy

    teacher = make_policy("fair")
    sim = make_sim(cfg, cfg.bc_jobs, catalog)
    samples, nodes, limits = [], [], []
    for k in range(cfg.bc_episodes):
        def choose(event: Any, arrays: Any, runnable: Any, refs: Any) -> tuple[int, int] | None:
            return node_of(teacher.schedule(event), refs, runnable)
        traj = rollout(sim, TRAIN_SEED_BASE + 90_000 + k, choose)
        samples += traj.samples
        nodes += traj.nodes
        limits += traj.limits
    return samples, np.array(nodes), np.array(limits)


def _imitate(cfg: Config, net: Any, catalog: Any, log: Any, started: float) -> None:
    import torch

    from controller.cjs.decima import imitation_loss

    samples, nodes, limits = _teacher_data(cfg, catalog)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    for step in range(cfg.bc_steps):
        idx = rng.choice(len(samples), size=min(256, len(samples)), replace=False)
        loss = imitation_loss(net, [samples[i] for i in idx], nodes[idx], limits[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if step % 20 == 0 or step == cfg.bc_steps - 1:
            log.write({"step": step, "phase": "imitate", "jobs": cfg.bc_jobs, "loss": float(loss.detach()),
                       "elapsed_s": time.perf_counter() - started})


def train_decima(cfg: Config, catalog: Any) -> dict[str, Any]:
    import torch

    from controller.cjs.decima import (
        DecimaConfig,
        DecimaNet,
        DecimaPolicy,
        act,
        load_decima,
        policy_gradient_step,
        rollout,
        save_decima,
    )
    from controller.cjs.policies import make_policy
    from training.trainer import CsvLog

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    net = DecimaNet(DecimaConfig(num_executors=cfg.executors, dim=cfg.dim, hidden=cfg.hidden,
                                 passes=cfg.passes))
    log = CsvLog(cfg.out / "loss.csv", LOSS_COLUMNS)
    fair_valid = validate_policy(cfg, make_policy("fair"), catalog)
    print(f"fair on the validation seeds: mean JCT {fair_valid:.2f} s", flush=True)
    if cfg.init_from is not None:
        try:
            net, _ = load_decima(cfg.init_from)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    elif cfg.bc_episodes > 0:
        _imitate(cfg, net, catalog, log, started)
    policy = DecimaPolicy(net=net, greedy=True)
    best = validate_policy(cfg, policy, catalog)
    best_state, best_iter = copy.deepcopy(net.state_dict()), 0
    log.write({"step": 0, "phase": "validate", "valid_jct_s": best, "best": 1,
               "elapsed_s": time.perf_counter() - started})
    print(f"after imitation: validation mean JCT {best:.2f} s", flush=True)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.pg_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    done_iters = 0
    for it in range(1, cfg.pg_iterations + 1):
        if cfg.max_minutes and time.perf_counter() - started > cfg.max_minutes * 60:
            print(f"time budget reached after {done_iters} iterations", flush=True)
            break
        stage = min(len(cfg.curriculum_jobs) - 1, (it - 1) * len(cfg.curriculum_jobs) // cfg.pg_iterations)
        jobs = cfg.curriculum_jobs[stage]
        sim = make_sim(cfg, jobs, catalog)
        seed = TRAIN_SEED_BASE + 1000 * cfg.seed + it  # --seed also picks other job streams
        sample = lambda event, arrays, runnable, refs: act(net, arrays, False, gen)  # noqa: E731
        trajs = [rollout(sim, seed, sample) for _ in range(cfg.rollouts)]
        frac = (it - 1) / max(1, cfg.pg_iterations - 1)
        ent_w = cfg.entropy_weight + (cfg.entropy_min - cfg.entropy_weight) * frac
        stats = policy_gradient_step(net, opt, trajs, cfg.reward_scale_s, ent_w)
        done_iters = it
        row = {"step": it, "phase": "pg", "jobs": jobs, "loss": stats["loss"], "entropy": stats["entropy"],
               "grad_norm": stats["grad_norm"], "train_jct_s": float(np.mean([t.mean_jct_s for t in trajs])),
               "elapsed_s": time.perf_counter() - started}
        if it % cfg.eval_every == 0 or it == cfg.pg_iterations:
            score = validate_policy(cfg, policy, catalog)
            row["valid_jct_s"] = score
            if score < best:
                best, best_state, best_iter = score, copy.deepcopy(net.state_dict()), it
                row["best"] = 1
            print(f"iter {it} jobs {jobs} train JCT {row['train_jct_s']:.1f} valid JCT {score:.2f} "
                  f"(best {best:.2f} @ {best_iter}) {row['elapsed_s']:.0f}s", flush=True)
        log.write(row)
    log.close()
    net.load_state_dict(best_state)
    training = {"best_iteration": best_iter, "valid_mean_jct_s": best, "fair_valid_mean_jct_s": fair_valid,
                "pg_iterations_run": done_iters, "valid_seeds": [VALID_SEED_BASE + k for k in range(cfg.valid_seeds)],
                "valid_jobs": cfg.valid_jobs, "train_seed_base": TRAIN_SEED_BASE,
                "init_from": str(cfg.init_from) if cfg.init_from else "imitation of fair",
                "curriculum_jobs": cfg.curriculum_jobs}
    write_folder_atomically(cfg.out / "best", lambda staging: save_decima(net, staging, training))
    return {**training, "wall_s": time.perf_counter() - started, "checkpoint": str(cfg.out / "best"),
            "exported_to": _export(cfg, cfg.out / "best")}


# ------------------------------------------------------------------------------------------- netllm-cjs
def _pool_chooser(name: str, cfg: Config, catalog: Any) -> Any:
    """choose_fn for `rollout` playing policy `name` (a baseline, decima or decima-sample)."""
    import torch

    from controller.cjs.decima import act, load_decima, node_of
    from controller.cjs.policies import make_policy

    if name in ("decima", "decima-sample"):
        net, _ = load_decima(cfg.decima_checkpoint or REPO_ROOT / "models" / "decima-cjs")
        gen = torch.Generator().manual_seed(cfg.seed)
        greedy = name == "decima"
        return lambda event, arrays, runnable, refs: act(net, arrays, greedy, gen)
    policy = make_policy(name)
    return lambda event, arrays, runnable, refs: node_of(policy.schedule(event), refs, runnable)


def build_pool(cfg: Config, catalog: Any, folder: Path, seed_base: int, seeds: int) -> Path:
    from controller.cjs.decima import rollout
    from training.cjs_pool import CjsPoolBuilder

    builder = CjsPoolBuilder(cfg.executors)
    sim = make_sim(cfg, cfg.pool_jobs, catalog)
    for name in cfg.pool_policies:
        choose = _pool_chooser(name, cfg, catalog)
        for k in range(seeds):
            builder.add(rollout(sim, seed_base + k, choose), name, seed_base + k, cfg.pool_jobs)
    return builder.save(folder)


class WindowSampler:
    """Windows of `window` consecutive decisions of one pool episode, as one model batch."""

    def __init__(self, pool: Any, window: int, return_scale_s: float, seed: int) -> None:
        self.pool, self.window, self.scale = pool, window, return_scale_s
        self.rtg = pool.returns_to_go_s()
        spans = [pool.episode_span(e) for e in range(pool.num_episodes)]
        self.starts = np.concatenate([np.arange(lo, hi - window + 1) for lo, hi in spans if hi - lo >= window])
        if self.starts.size == 0:
            raise CommandError(f"no pool episode has {window} decisions")
        self.rng = np.random.default_rng(seed)

    def batch(self, starts: np.ndarray) -> dict[str, Any]:
        import torch

        from controller.cjs.decima import collate

        idx = (starts[:, None] + np.arange(self.window)[None, :]).reshape(-1)
        a = self.pool.arrays
        return {"b": collate([self.pool.sample(int(d)) for d in idx]),
                "returns": torch.from_numpy(self.rtg[idx] / self.scale).float(),
                "node": torch.from_numpy(a["node"][idx]), "limit": torch.from_numpy(a["limit"][idx]),
                "windows": len(starts)}

    def sample(self, size: int) -> dict[str, Any]:
        return self.batch(self.rng.choice(self.starts, size=size))

    def fixed(self, count: int) -> list[dict[str, Any]]:
        chosen = self.starts[np.linspace(0, self.starts.size - 1, min(count, self.starts.size)).astype(int)]
        return [self.batch(chosen[i:i + 16]) for i in range(0, chosen.size, 16)]


def _valid_loss(model: Any, batches: list[dict[str, Any]]) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        losses = [float(model.loss(x["b"], x["returns"], x["node"], x["limit"], x["windows"])[0]) for x in batches]
    model.train()
    return float(np.mean(losses))


def _netllm_model(cfg: Config) -> tuple[Any, dict[str, Any]]:
    import torch

    from controller.cjs.decima import load_decima
    from controller.cjs.netllm_cjs_model import NetLLMCjsConfig, build_netllm_cjs
    from controller.netllm.backbone import BackboneError, BackboneSpec, load_backbone

    try:
        body, info = load_backbone(BackboneSpec.parse(cfg.backbone), device="cpu", dtype="fp32")
    except BackboneError as exc:
        raise CommandError(str(exc)) from None
    mcfg = NetLLMCjsConfig(hidden_size=info.hidden_size, num_executors=cfg.executors, dim=cfg.dim,
                           hidden=cfg.hidden, passes=cfg.passes, window=cfg.window,
                           return_scale_s=cfg.return_scale_s, lora_rank=cfg.lora_rank,
                           lora_alpha=2.0 * cfg.lora_rank)
    torch.manual_seed(cfg.seed)
    model = build_netllm_cjs(mcfg, body)
    decima_dir = cfg.decima_checkpoint or REPO_ROOT / "models" / "decima-cjs"
    try:  # the graph encoder starts from Decima's when the shapes agree
        net, _ = load_decima(decima_dir)
        model.encoder.load_state_dict(net.encoder.state_dict())
        init = str(decima_dir)
    except (ValueError, RuntimeError):
        init = "random"
    return model, {"backbone": info.to_json(), "encoder_init": init}


def train_netllm_cjs(cfg: Config, catalog: Any, given_pool: Any = None) -> dict[str, Any]:
    """`given_pool`: the --pool folder's pool, already loaded (and checked) by `run`."""
    import torch

    from controller.cjs.netllm_cjs_model import save_netllm_cjs
    from training.cjs_pool import load_cjs_pool
    from training.trainer import CsvLog, LrSchedule, accumulated_step, make_adamw

    started = time.perf_counter()
    if cfg.pool is not None:
        pool_dir, pool = Path(cfg.pool), given_pool if given_pool is not None else _load_given_pool(cfg.pool)
    else:
        pool_dir = build_pool(cfg, catalog, cfg.out / "pool", TRAIN_SEED_BASE, cfg.pool_seeds)
        pool = load_cjs_pool(pool_dir)
    valid = load_cjs_pool(build_pool(cfg, catalog, cfg.out / "valid-pool", VALID_SEED_BASE, cfg.valid_seeds))
    print(f"pool: {pool.num_episodes} episodes, {pool.num_decisions} decisions "
          f"({time.perf_counter() - started:.0f}s)", flush=True)
    model, info = _netllm_model(cfg)
    sampler = WindowSampler(pool, cfg.window, cfg.return_scale_s, cfg.seed)
    valid_batches = WindowSampler(valid, cfg.window, cfg.return_scale_s, cfg.seed).fixed(cfg.valid_windows)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_adamw(model, cfg.lr, 1e-4)
    sched = LrSchedule(cfg.lr, cfg.warmup_steps, cfg.optimizer_steps)
    log = CsvLog(cfg.out / "loss.csv", LOSS_COLUMNS)
    best, best_step, best_state = _valid_loss(model, valid_batches), 0, None
    model.train()
    step = 0
    for step in range(1, cfg.optimizer_steps + 1):
        if cfg.max_minutes and time.perf_counter() - started > cfg.max_minutes * 60:
            print(f"time budget reached after {step - 1} optimizer steps", flush=True)
            step -= 1
            break
        micro = [sampler.sample(cfg.micro_batch_size) for _ in range(cfg.grad_accum)]
        loss, grad = accumulated_step(
            micro, lambda x: model.loss(x["b"], x["returns"], x["node"], x["limit"], x["windows"])[0],
            opt, params, sched.lr(step - 1), 1.0)
        row = {"step": step, "phase": "offline", "loss": loss, "grad_norm": grad,
               "elapsed_s": time.perf_counter() - started}
        if step % cfg.eval_loss_every == 0 or step == cfg.optimizer_steps:
            row["valid_loss"] = score = _valid_loss(model, valid_batches)
            if score < best:
                best, best_step, row["best"] = score, step, 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k
                              or not k.startswith("backbone.")}
            print(f"step {step} loss {loss:.3f} valid {score:.3f} (best {best:.3f} @ {best_step}) "
                  f"{row['elapsed_s']:.0f}s", flush=True)
        log.write(row)
    log.close()
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    per_job = np.array([e["return_s"] / e["jobs"] for e in pool.meta["episodes"]])
    serving = {"target_return_per_job_s": float(np.quantile(per_job, cfg.target_quantile)),
               "episode_jobs": cfg.pool_jobs, "target_quantile": cfg.target_quantile}
    training = {"best_step": best_step, "valid_loss": best, "steps_run": step, "pool": str(pool_dir),
                "pool_episodes": pool.num_episodes, "pool_decisions": pool.num_decisions,
                "pool_policies": cfg.pool_policies, "encoder_init": info["encoder_init"],
                "train_seed_base": TRAIN_SEED_BASE, "valid_seed_base": VALID_SEED_BASE}
    trainable = sum(p.numel() for p in params)
    save_netllm_cjs(model, cfg.out / "best", info["backbone"], cfg.save_dtype, serving, training)
    return {**training, **serving, "trainable_parameters": trainable, "wall_s": time.perf_counter() - started,
            "checkpoint": str(cfg.out / "best"), "exported_to": _export(cfg, cfg.out / "best")}


# ----------------------------------------------------------------------------------------------- entry
def run(cfg: Config) -> int:
    import torch

    from traces.jobs import JobCatalog

    _check(cfg)
    check_new_out(Path(cfg.out), "train-cjs")
    # a bad --pool fails before the validation pool is simulated
    given_pool = _load_given_pool(Path(cfg.pool)) if cfg.model == "netllm-cjs" and cfg.pool else None
    torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.out)
    catalog = JobCatalog()
    catalog.all_jobs()
    if cfg.model == "decima":
        summary = train_decima(cfg, catalog)
    else:
        summary = train_netllm_cjs(cfg, catalog, given_pool)
    summary = {"model": cfg.model, **summary}
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"results in {cfg.out}")
    return 0
