"""`netllm cjs-eval`: evaluate cluster job schedulers in the Spark-cluster simulator.

Every (policy, seed) episode runs in a pool of worker processes; seed s draws the job stream (the same for
every policy) and the task durations. Defaults are NetLLM's CJS setting (spark-sched-sim as NetLLM ran it):
50 executors, 200 jobs of which the first arrives at t=0 and the next 199 after exponential gaps of mean
25 s, moving delay 2 s, warm-up 1 s, TPC-H queries uniform over 22 queries x 7 sizes.

Results in `--out`:
- `jobs.csv` and `jobs.parquet`: one row per job: seed, policy, job_id, query, size, arrival_s,
  completion_s, jct_s;
- `episodes.csv`: one row per episode: policy, seed, mean_jct_s, decisions, events, wall_s, cpu_s,
  jobs_per_wall_s;
  both CSVs get each episode's rows appended and flushed as it finishes (a killed run keeps every finished
  episode) and are rewritten in policy and seed order at the end, when jobs.parquet is written;
- `summary.json`: per policy (see `SUMMARY_KEYS`) plus the run-wide settings and the published reference
  figures; `config.json`: the resolved options.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from netllm.cli import CommandError
from netllm.config import arg, save_config
from netllm.evaluation import interval_text, mean_ci95

JOB_COLUMNS: tuple[str, ...] = ("seed", "policy", "job_id", "query", "size", "arrival_s", "completion_s",
                                "jct_s")
EPISODE_COLUMNS: tuple[str, ...] = ("policy", "seed", "mean_jct_s", "jobs", "decisions", "events", "wall_s",
                                    "cpu_s", "end_time_s", "jobs_per_wall_s")
SUMMARY_KEYS: dict[str, str] = {
    "mean_jct_s": "mean job completion time over every job of every seed",
    "jct_ci95_low": "95% confidence interval of mean_jct_s over seeds (Student t on per-seed means), low end",
    "jct_ci95_high": "high end of that interval",
    "jct_std_over_seeds": "standard deviation of the per-seed mean JCT",
    "median_jct_s": "median JCT over every job",
    "p95_jct_s": "95th percentile JCT over every job",
    "seeds": "episodes (one per seed)",
    "jobs": "jobs completed in all",
    "decisions_per_episode": "mean scheduler decisions per episode",
    "jobs_per_wall_s": "simulated jobs per wall-clock second (scheduler time included)",
    "events_per_wall_s": "simulator events per wall-clock second",
    "jobs_per_cpu_s": "simulated jobs per CPU second of the worker (less sensitive to a busy machine)",
}
PUBLISHED_MEAN_JCT_S: dict[str, float] = {"fifo-cap25": 82.5, "fair": 58.5, "decima": 52.0,
                                          "netllm-cjs": 48.5}
"""NetLLM (SIGCOMM'24) Fig. CJS, read off the chart: FIFO (cap 25), Fair, Decima, NetLLM (Llama2-7B)."""


@dataclass
class Config:
    out: Path = arg(help="results folder")
    policies: list[str] = arg(["fifo", "fifo-cap25", "fair"],
                              help="CJS policies (controller.cjs registry names)")
    seeds: int = arg(10, help="episodes per policy: seeds seed_base .. seed_base+seeds-1")
    seed_base: int = arg(0, help="first seed")
    executors: int = arg(50, help="executors in the cluster")
    jobs: int = arg(200, help="jobs per episode, the initial ones included")
    initial_jobs: int = arg(1, help="jobs present at t=0 (NetLLM/spark-sched-sim: 1; Decima's paper: 10)")
    mean_gap_s: float = arg(25.0, help="mean gap between job arrivals after the initial ones (Poisson)")
    moving_delay_s: float = arg(2.0, help="delay for an executor to move between jobs")
    warmup_delay_s: float = arg(1.0, help="warm-up added to a fresh executor's first task when no fresh "
                                          "measurement exists")
    runnable_rule: str = arg("decima", help="when a stage may get executors: decima (every parent has all "
                                            "its tasks started or promised) or parents-finished")
    tpch_dir: Path | None = arg(None, help="TPC-H DAG folder (default: <shared data>/cjs/tpch)")
    policy_options: str = arg("", help='JSON object: policy name -> constructor options, e.g. '
                                       '{"decima": {"checkpoint": "model.safetensors"}}')
    workers: int = arg(0, help="worker processes (0: one per CPU core)")
    job_log: bool = arg(True, help="write jobs.csv/jobs.parquet")


# ---------------------------------------------------------------------------------------------- workers
_WORKER: dict[str, Any] = {}
_CATALOGS: dict[str | None, Any] = {}
"""Loaded job catalogs by TPC-H folder: `_check` loads it once and an in-process run reuses it."""


def load_catalog(tpch_dir: str | None) -> Any:
    """The `traces.jobs.JobCatalog` of `tpch_dir` with every DAG loaded (JobDataError on bad data)."""
    from traces.jobs import JobCatalog

    if tpch_dir not in _CATALOGS:
        catalog = JobCatalog(Path(tpch_dir) if tpch_dir else None)
        catalog.all_jobs()  # every DAG up front: bad data shows here, and episode timings measure simulation
        _CATALOGS[tpch_dir] = catalog
    return _CATALOGS[tpch_dir]


def _init_worker(tpch_dir: str | None, sim_kwargs: dict[str, Any], options: dict[str, dict]) -> None:
    from emulation.cluster_sim import ClusterSim, SimConfig

    _WORKER.clear()
    catalog = load_catalog(tpch_dir)
    _WORKER["sim"] = ClusterSim(SimConfig(**sim_kwargs), catalog)
    _WORKER["options"] = options
    _WORKER["policies"] = {}


def _run_unit(policy_name: str, seed: int) -> dict[str, Any]:
    from controller.cjs.policies import make_policy

    policies = _WORKER["policies"]
    if policy_name not in policies:
        policies[policy_name] = make_policy(policy_name, **_WORKER["options"].get(policy_name, {}))
    started, cpu_started = time.perf_counter(), time.process_time()
    result = _WORKER["sim"].run(policies[policy_name], seed)
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    rows = [{"seed": seed, "policy": policy_name, "job_id": j.job_id, "query": j.query, "size": j.size,
             "arrival_s": j.arrival_s, "completion_s": j.completion_s, "jct_s": j.jct_s} for j in result.jobs]
    episode = {"policy": policy_name, "seed": seed, "mean_jct_s": result.mean_jct_s, "jobs": len(result.jobs),
               "decisions": result.decisions, "events": result.events, "wall_s": wall_s, "cpu_s": cpu_s,
               "end_time_s": result.end_time_s, "jobs_per_wall_s": len(result.jobs) / wall_s}
    return {"episode": episode, "rows": rows}


def _run_all(cfg: Config, options: dict[str, dict],
             on_result: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    from netllm.evaluation import map_units

    sim_kwargs = {"num_executors": cfg.executors, "num_jobs": cfg.jobs, "initial_jobs": cfg.initial_jobs,
                  "mean_gap_s": cfg.mean_gap_s, "moving_delay_s": cfg.moving_delay_s,
                  "warmup_delay_s": cfg.warmup_delay_s, "runnable_rule": cfg.runnable_rule}
    units = [(p, cfg.seed_base + k) for p in cfg.policies for k in range(cfg.seeds)]
    workers = min(cfg.workers or os.cpu_count() or 1, len(units))
    args = (_tpch_key(cfg), sim_kwargs, options)
    results = map_units(_run_unit, units, _init_worker, args, workers, "episodes", "episode", on_result)
    results.sort(key=lambda r: (cfg.policies.index(r["episode"]["policy"]), r["episode"]["seed"]))
    return results


# ---------------------------------------------------------------------------------------------- summary
def summarize(results: list[dict[str, Any]], policies: list[str]) -> dict[str, dict[str, Any]]:
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    for name in policies:
        mine = [r for r in results if r["episode"]["policy"] == name]
        episodes = [r["episode"] for r in mine]
        jcts = np.array([row["jct_s"] for r in mine for row in r["rows"]])
        per_seed = [e["mean_jct_s"] for e in episodes]
        _, low, high = mean_ci95(per_seed)
        # One seed has no interval: null in summary.json (NaN is not JSON).
        low, high = (None, None) if math.isnan(low) else (low, high)
        wall = sum(e["wall_s"] for e in episodes)
        out[name] = {
            "mean_jct_s": float(jcts.mean()), "jct_ci95_low": low, "jct_ci95_high": high,
            "jct_std_over_seeds": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
            "median_jct_s": float(np.median(jcts)), "p95_jct_s": float(np.percentile(jcts, 95)),
            "seeds": len(episodes), "jobs": int(jcts.size),
            "decisions_per_episode": float(np.mean([e["decisions"] for e in episodes])),
            "jobs_per_wall_s": float(jcts.size / wall),
            "events_per_wall_s": sum(e["events"] for e in episodes) / wall,
            "jobs_per_cpu_s": float(jcts.size / max(sum(e["cpu_s"] for e in episodes), 1e-9)),
        }
    return out


def _tpch_key(cfg: Config) -> str | None:
    return str(cfg.tpch_dir) if cfg.tpch_dir else None


def _write_tables(out: Path, results: list[dict[str, Any]], job_log: bool) -> None:
    """The tables in policy and seed order once every episode is in (replacing the streamed copies)."""
    from netllm.chunklog import write_csv_atomically

    write_csv_atomically(out / "episodes.csv", EPISODE_COLUMNS, [r["episode"] for r in results])
    if not job_log:
        return
    rows = [row for r in results for row in r["rows"]]
    write_csv_atomically(out / "jobs.csv", JOB_COLUMNS, rows)
    import pandas as pd

    pd.DataFrame(rows, columns=list(JOB_COLUMNS)).to_parquet(out / "jobs.parquet", index=False)


def _check(cfg: Config) -> dict[str, dict]:
    from controller.cjs.policies import PolicyUnavailableError, UnknownPolicyError, policy_class
    from traces.jobs import JobDataError

    if not cfg.policies or cfg.seeds < 1 or cfg.executors < 1 or cfg.jobs < 1:
        raise CommandError("need at least one policy, --seeds >= 1, --executors >= 1 and --jobs >= 1")
    if len(set(cfg.policies)) != len(cfg.policies):
        raise CommandError("a policy is listed twice")
    if cfg.seed_base < 0 or cfg.workers < 0:
        raise CommandError("need --seed-base >= 0 and --workers >= 0 (0: one per CPU core)")
    times = {"--mean-gap-s": cfg.mean_gap_s, "--moving-delay-s": cfg.moving_delay_s,
             "--warmup-delay-s": cfg.warmup_delay_s}
    for flag, value in times.items():
        if not math.isfinite(value):
            raise CommandError(f"{flag} must be a finite number of seconds, got {value}")
    if not 0 <= cfg.initial_jobs <= cfg.jobs or not cfg.mean_gap_s > 0:
        raise CommandError("need 0 <= --initial-jobs <= --jobs and --mean-gap-s > 0")
    if cfg.moving_delay_s < 0 or cfg.warmup_delay_s < 0:
        raise CommandError("delays must be >= 0")
    from emulation.cluster_sim import RUNNABLE_RULES

    if cfg.runnable_rule not in RUNNABLE_RULES:
        raise CommandError(f"--runnable-rule must be one of {', '.join(RUNNABLE_RULES)}")
    for name in cfg.policies:
        try:
            policy_class(name)
        except (UnknownPolicyError, PolicyUnavailableError) as exc:
            raise CommandError(str(exc.args[0])) from None
    try:
        options = json.loads(cfg.policy_options) if cfg.policy_options.strip() else {}
    except ValueError as exc:
        raise CommandError(f"--policy-options is not valid JSON: {exc}") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise CommandError("--policy-options must be a JSON object of policy name -> object of options")
    try:
        load_catalog(_tpch_key(cfg))  # the whole catalog: bad data is a clear error here, not a dead worker
    except JobDataError as exc:
        raise CommandError(str(exc)) from None
    if "netllm-cjs" in cfg.policies:  # its return-to-go target is per job: scale it to this episode's length
        options.setdefault("netllm-cjs", {}).setdefault("episode_jobs", cfg.jobs)
    for name in cfg.policies:  # build each once here: a missing or bad checkpoint is a user error, not a crash
        try:
            policy_class(name)(**options.get(name, {}))
        except (ValueError, OSError, TypeError) as exc:
            raise CommandError(f"policy {name}: {exc}") from None
    return options


def run(cfg: Config) -> int:
    from netllm.chunklog import CsvRowLog

    options = _check(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.out)
    started = time.perf_counter()
    episode_log = CsvRowLog(cfg.out / "episodes.csv", EPISODE_COLUMNS)
    job_log = CsvRowLog(cfg.out / "jobs.csv", JOB_COLUMNS) if cfg.job_log else None

    def record(result: dict[str, Any]) -> None:
        episode_log.write(result["episode"])
        if job_log is not None:
            job_log.write_rows(result["rows"])

    try:
        results = _run_all(cfg, options, record)
    except Exception as exc:  # a policy's invalid answer or a data error inside a worker
        from controller.cjs.observation import InvalidDecision
        from emulation.cluster_sim import SchedulerStall
        from traces.jobs import JobDataError

        if isinstance(exc, (InvalidDecision, SchedulerStall, JobDataError)):
            raise CommandError(f"{type(exc).__name__}: {exc}") from None
        raise
    finally:
        episode_log.close()
        if job_log is not None:
            job_log.close()
    _write_tables(cfg.out, results, cfg.job_log)
    per_policy = summarize(results, cfg.policies)
    summary = {
        **per_policy, "policies": cfg.policies,
        "seeds": list(range(cfg.seed_base, cfg.seed_base + cfg.seeds)),
        "executors": cfg.executors, "jobs_per_episode": cfg.jobs, "initial_jobs": cfg.initial_jobs,
        "mean_gap_s": cfg.mean_gap_s, "moving_delay_s": cfg.moving_delay_s,
        "warmup_delay_s": cfg.warmup_delay_s,
        "runnable_rule": cfg.runnable_rule, "wall_s": time.perf_counter() - started, "keys": SUMMARY_KEYS,
        "published_mean_jct_s": PUBLISHED_MEAN_JCT_S,
    }
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    width = max(len(p) for p in cfg.policies)
    for name in cfg.policies:
        s = per_policy[name]
        ref = PUBLISHED_MEAN_JCT_S.get(name)
        interval = interval_text(s["jct_ci95_low"], s["jct_ci95_high"], "seed", digits=2)
        print(f"{name.ljust(width)}  mean JCT {s['mean_jct_s']:7.2f} s  95% CI {interval}  "
              f"{s['jobs_per_wall_s']:.0f} jobs/s"
              + (f"  (published ~{ref})" if ref else ""))
    print(f"results in {cfg.out}")
    return 0
