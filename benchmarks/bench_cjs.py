"""Cluster job scheduling: every baseline at NetLLM's setting with 95% CIs, and the simulator's speed.

Part 1 runs `netllm cjs-eval` (50 executors, 200 jobs, first at t=0, then exponential gaps of mean 25 s) over
`--seeds` seeds for every implemented policy and prints mean JCT, its 95% CI over seeds and the published
figure. Part 2 times, in this process on one core: a whole episode (simulated jobs and events per CPU
second), each policy's `schedule` on real events (microseconds per decision), `encode_event` (the arrays a
learned scheduler reads) and Gymnasium environment steps.

    .venv/bin/python benchmarks/bench_cjs.py [--seeds 20] [--workers 2] [--out DIR]

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


def quality(seeds: int, workers: int, out: Path, policies: list[str]) -> dict:
    run(Config(out=out, policies=policies, seeds=seeds, workers=workers))
    return json.loads((out / "summary.json").read_text())


def speed(catalog: JobCatalog, policies: list[str], seed: int = 0) -> dict:
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
    out["schedule_us"] = {}
    for name in policies:
        policy = make_policy(name)
        started = time.perf_counter()
        for e in events:
            policy.schedule(e)
        out["schedule_us"][name] = (time.perf_counter() - started) / len(events) * 1e6
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    order = ["fifo", "fifo-cap25", "fair", "random"]
    default = order + [p for p in implemented_policies() if p not in order]
    parser.add_argument("--policies", default=",".join(default))
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: a temporary one)")
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-cjs-"))
    summary = quality(args.seeds, args.workers, out, policies)
    catalog = JobCatalog()
    catalog.all_jobs()  # load the DAGs before timing anything
    timing = speed(catalog, policies)
    print(f"\nmean JCT over {args.seeds} seeds (50 executors, 200 jobs, 25 s mean gap):")
    print(f"{'policy':12s} {'mean JCT s':>10s} {'95% CI':>18s} {'published':>9s} {'jobs/cpu-s':>10s}")
    for name in policies:
        s = summary[name]
        ref = PUBLISHED_MEAN_JCT_S.get(name)
        print(f"{name:12s} {s['mean_jct_s']:10.2f} [{s['jct_ci95_low']:7.2f}, {s['jct_ci95_high']:7.2f}] "
              f"{(f'~{ref}' if ref else '-'):>9s} {s['jobs_per_cpu_s']:10.0f}")
    ep = timing["episode"]
    print(f"\nsimulator: {ep['jobs_per_cpu_s']:.0f} jobs/cpu-s, "
          f"{ep['events_per_cpu_s'] / 1e3:.0f}k events/cpu-s "
          f"({ep['events']} events, {ep['decisions']} decisions per 200-job episode)")
    print("schedule() us/decision: " + ", ".join(f"{k} {v:.1f}" for k, v in timing["schedule_us"].items())
          + f"; encode_event {timing['encode_event_us']:.0f} us"
          + f"; env {timing['env']['steps_per_s']:.0f} steps/s")
    (out / "bench_cjs.json").write_text(json.dumps({"summary": summary, "speed": timing}, indent=2) + "\n")
    print(f"written {out / 'bench_cjs.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
