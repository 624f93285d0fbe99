"""Cluster job scheduling: every baseline at NetLLM's setting with 95% CIs, and the simulator's speed.

Part 1 runs `netllm cjs-eval` (50 executors, 200 jobs, first at t=0, then exponential gaps of mean 25 s) over
`--seeds` seeds for every implemented policy except the LLM one (Decima's GNN included) and prints mean JCT,
its 95% CI over seeds, the published figure and simulated jobs per wall-clock second. Part 2 does the same
for `netllm-cjs` on `--llm-seeds` seeds of `--llm-jobs` jobs (one SmolLM2 forward per decision, ~20
decisions per job, does not afford the full setting on a CPU) and reruns every other policy on exactly those
seeds, so the LLM is compared like for like. Evaluation seeds start at 0; training (100000+) and validation
(50000+) seeds of `netllm train-cjs` are disjoint from them. Part 3 times, in this process on one core: a
whole episode (simulated jobs and events per CPU second), each policy's `schedule` on real events (decision
latency p50/p99), `encode_event` and Gymnasium environment steps.

    .venv/bin/python benchmarks/bench_cjs.py [--seeds 20] [--llm-seeds 3] [--llm-jobs 50] [--workers 2]

Why the figures differ from NetLLM's: NetLLM's chart gives one number per scheduler with no seed count or
interval, its simulator (spark-sched-sim) draws task durations from Python's unseeded global `random`, and
the per-seed spread is large (a few heavy 80g/100g jobs dominate an episode), so a mean over a handful of
seeds moves by +-10 s. Our simulator follows the same rules (see emulation.cluster_sim) but is a separate
implementation: executor accounting (an executor parked in the common pool stops counting for its old job),
tie-breaking among simultaneous events and the backup choice for an executor whose stage filled up differ
in detail.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.cjs.encoding import encode_event  # noqa: E402
from controller.cjs.policies import implemented_policies, make_policy  # noqa: E402
from emulation.cjs_eval import PUBLISHED_MEAN_JCT_S, Config, run  # noqa: E402
from emulation.cluster_sim import ClusterSim, SimConfig  # noqa: E402
from traces.jobs import JobCatalog  # noqa: E402


LLM_POLICY = "netllm-cjs"
LLM_OPTIONS = {LLM_POLICY: {"threads": 1}, "decima": {"threads": 1}}
"""Model policies run on one thread per worker (more only add overhead for one decision at a time)."""


def quality(seeds: int, workers: int, out: Path, policies: list[str], jobs: int = 200) -> dict:
    run(Config(out=out, policies=policies, seeds=seeds, workers=workers, jobs=jobs,
               policy_options=json.dumps({k: v for k, v in LLM_OPTIONS.items() if k in policies})))
    return json.loads((out / "summary.json").read_text())


def latency_ms(policy: object, events: list, limit: int) -> dict:
    """Per-decision wall time of `policy.schedule` on recorded events (p50, p99, mean), in ms."""
    times = []
    policy.reset()
    for e in events[:limit]:
        started = time.perf_counter()
        policy.schedule(e)
        times.append((time.perf_counter() - started) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(np.mean(times)), "decisions": len(times)}


def speed(catalog: JobCatalog, policies: list[str], seed: int = 0, llm_events: int = 300) -> dict:
    import torch

    torch.set_num_threads(1)
    sim = ClusterSim(SimConfig(), catalog)
    out: dict = {}
    cpu = time.process_time()
    result = sim.run(make_policy("fair"), seed)
    cpu = time.process_time() - cpu
    out["episode"] = {"policy": "fair", "jobs": len(result.jobs), "events": result.events,
                      "decisions": result.decisions, "cpu_s": cpu, "jobs_per_cpu_s": len(result.jobs) / cpu,
                      "events_per_cpu_s": result.events / cpu}
    # real events of an episode, replayed to each policy
    events, event = [], sim.reset(seed)
    fair = make_policy("fair")
    while event is not None:
        events.append(event)
        event = sim.step(fair.schedule(event))
    out["events_sampled"] = len(events)
    out["jobs_per_event_mean"] = float(np.mean([len(e.jobs) for e in events]))
    out["latency"] = {}
    for name in policies:
        policy = make_policy(name, **LLM_OPTIONS.get(name, {}))
        out["latency"][name] = latency_ms(policy, events, llm_events if name == LLM_POLICY else len(events))
    started = time.perf_counter()
    for e in events:
        encode_event(e, 64, 20)
    out["encode_event_us"] = (time.perf_counter() - started) / len(events) * 1e6
    out["env"] = env_speed(catalog)
    return out


def env_speed(catalog: JobCatalog) -> dict:
    from emulation.cluster_env import ClusterSchedulingEnv

    env = ClusterSchedulingEnv(SimConfig(num_jobs=50), catalog=catalog)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    steps, done = 0, False
    started = time.perf_counter()
    while not done:
        k = int(rng.choice(np.flatnonzero(obs["runnable_mask"])))
        obs, _, done, _, _ = env.step([k, env.sim.cfg.num_executors - 1])
        steps += 1
    wall = time.perf_counter() - started
    return {"steps": steps, "steps_per_s": steps / wall, "jobs": 50, "wall_s": wall}


def print_table(title: str, summary: dict, policies: list[str], latency: dict) -> None:
    print(f"\n{title}")
    print(f"{'policy':12s} {'mean JCT s':>10s} {'95% CI':>18s} {'published':>9s} {'jobs/wall-s':>11s} "
          f"{'p50 ms':>8s} {'p99 ms':>8s}")
    for name in policies:
        s, lat = summary[name], latency.get(name, {})
        ref = PUBLISHED_MEAN_JCT_S.get(name)
        low, high = (float("nan") if v is None else v for v in (s["jct_ci95_low"], s["jct_ci95_high"]))
        print(f"{name:12s} {s['mean_jct_s']:10.2f} [{low:7.2f}, {high:7.2f}] "
              f"{(f'~{ref}' if ref else '-'):>9s} {s['jobs_per_wall_s']:11.1f} "
              f"{lat.get('p50_ms', float('nan')):8.3f} {lat.get('p99_ms', float('nan')):8.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds of the full setting (every policy but the LLM)")
    parser.add_argument("--llm-seeds", type=int, default=3, help="seeds of the LLM comparison (0: skip it)")
    parser.add_argument("--llm-jobs", type=int, default=50, help="jobs per episode in the LLM comparison")
    parser.add_argument("--workers", type=int, default=2)
    order = ["fifo", "fifo-cap25", "fair", "random", "decima", LLM_POLICY]
    default = [p for p in order if p in implemented_policies()]
    default += [p for p in implemented_policies() if p not in default]
    parser.add_argument("--policies", default=",".join(default))
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: a temporary one)")
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    cheap = [p for p in policies if p != LLM_POLICY]
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-cjs-"))
    summary = quality(args.seeds, args.workers, out / "full", cheap) if cheap else {}
    llm_summary = {}
    if LLM_POLICY in policies and args.llm_seeds > 0:
        llm_summary = quality(args.llm_seeds, args.workers, out / "llm", policies, jobs=args.llm_jobs)
    catalog = JobCatalog()
    catalog.all_jobs()  # load the DAGs before timing anything
    timing = speed(catalog, policies)
    if cheap:
        print_table(f"mean JCT over {args.seeds} seeds (0..{args.seeds - 1}; 50 executors, 200 jobs, 25 s mean gap):",
                    summary, cheap, timing["latency"])
    if llm_summary:
        print_table(f"mean JCT over {args.llm_seeds} seeds (0..{args.llm_seeds - 1}) of {args.llm_jobs} jobs "
                    "(same seeds for every policy; published figures are for 200 jobs):",
                    llm_summary, policies, timing["latency"])
    ep = timing["episode"]
    print(f"\nsimulator: {ep['jobs_per_cpu_s']:.0f} jobs/cpu-s, "
          f"{ep['events_per_cpu_s'] / 1e3:.0f}k events/cpu-s "
          f"({ep['events']} events, {ep['decisions']} decisions per 200-job episode)")
    print("decision latency p50/p99 (ms, one thread, events of a Fair episode): "
          + ", ".join(f"{k} {v['p50_ms']:.3f}/{v['p99_ms']:.3f}" for k, v in timing["latency"].items())
          + f"; encode_event {timing['encode_event_us']:.0f} us"
          + f"; env {timing['env']['steps_per_s']:.0f} steps/s")
    result = {"summary": summary, "llm_summary": llm_summary, "speed": timing,
              "llm_setting": {"seeds": args.llm_seeds, "jobs": args.llm_jobs}}
    (out / "bench_cjs.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out / 'bench_cjs.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
