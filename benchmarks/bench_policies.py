"""Decisions per second of each ABR policy on realistic observations, on one CPU core.

Observations follow whole 48-chunk sessions of Pensieve's video1 (from the reference data when present,
otherwise a synthetic ladder-proportional video), with throughputs drawn from a log-normal around 1.5 Mbps
and buffers that move as a session's would; each policy is reset at every session start and called in order,
as the simulator calls it. The timing is of `select_quality` alone.

    .venv/bin/python benchmarks/bench_policies.py [--sessions 60] [--repeats 5] [--policies bba,robustmpc]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.policies import make_policy  # noqa: E402
from netllm.abr_state import AbrObservation  # noqa: E402
from netllm.paths import shared_data_dir  # noqa: E402
from netllm.video import PENSIEVE_LADDER_KBPS, Video, load_pensieve_sizes  # noqa: E402

DEFAULT_POLICIES = ["bba", "rb", "bola", "fastmpc", "robustmpc", "robustmpc-pm1"]
HORIZON = 5


def benchmark_video(rng: np.random.Generator) -> Video:
    folder = shared_data_dir() / "abr" / "videos" / "video1_sizes"
    if (folder / "video_size_0").exists():
        return load_pensieve_sizes(folder)
    ladder = np.asarray(PENSIEVE_LADDER_KBPS, dtype=np.float64)
    sizes = (ladder[:, None] * 500.0 * rng.uniform(0.8, 1.2, size=(len(ladder), 48))).astype(np.int64)
    return Video(PENSIEVE_LADDER_KBPS, sizes, 4.0, "synthetic")


def session_observations(video: Video, rng: np.random.Generator, session: int) -> list[AbrObservation]:
    """One session's observations, chunk 0..N-1; the quality history is a plausible random walk."""
    ladder = [float(b) for b in video.ladder_kbps]
    chunks = video.chunk_count
    throughputs = rng.lognormal(mean=np.log(1500.0), sigma=0.7, size=chunks).tolist()
    buffer_s, quality, out = 0.0, 1, []
    for index in range(chunks):
        ahead = range(index, min(index + HORIZON, chunks))
        rows = [[int(x) for x in video.chunk_sizes_bytes[:, k]] for k in ahead]
        history = throughputs[max(0, index - 8):index]
        out.append(AbrObservation(index, chunks, quality, buffer_s, history, [4.0] * len(history), rows,
                                  ladder, chunk_duration_s=video.chunk_duration_s,
                                  session_id=f"bench-{session}"))
        quality = int(np.clip(quality + rng.integers(-1, 2), 0, len(ladder) - 1))
        buffer_s = float(np.clip(buffer_s + rng.normal(1.0, 3.0), 0.0, 60.0))
    return out


def time_policy(name: str, sessions: list[list[AbrObservation]], repeats: int) -> list[float]:
    """Seconds per decision for each repeat."""
    policy = make_policy(name)
    per_decision = []
    decisions = sum(len(s) for s in sessions)
    for _ in range(repeats + 1):  # the first pass warms caches and is discarded
        elapsed = 0.0
        for session in sessions:
            policy.reset()
            started = time.perf_counter()
            for obs in session:
                policy.select_quality(obs)
            elapsed += time.perf_counter() - started
        per_decision.append(elapsed / decisions)
    return per_decision[1:]


def pin_to_one_core() -> int | None:
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return cpu
    except (AttributeError, OSError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=60, help="48-chunk sessions per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes (median reported)")
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES), help="comma-separated policy names")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    cpu = pin_to_one_core()
    rng = np.random.default_rng(args.seed)
    video = benchmark_video(rng)
    sessions = [session_observations(video, rng, s) for s in range(args.sessions)]
    decisions = sum(len(s) for s in sessions)
    print(f"video {video.name} ({video.levels} rungs, {video.chunk_count} chunks), "
          f"{args.sessions} sessions = "
          f"{decisions} decisions per pass, {args.repeats} passes, pinned to CPU {cpu}")
    print(f"{'policy':<16}{'median us/decision':>20}{'min us':>10}{'decisions/s':>14}")
    results = {}
    for name in args.policies.split(","):
        times = time_policy(name.strip(), sessions, args.repeats)
        median_us, min_us = statistics.median(times) * 1e6, min(times) * 1e6
        results[name] = {"median_us": median_us, "min_us": min_us, "decisions_per_s": 1e6 / median_us}
        print(f"{name:<16}{median_us:>20.2f}{min_us:>10.2f}{1e6 / median_us:>14,.0f}")
    if args.json is not None:
        doc = {"decisions_per_pass": decisions, "policies": results}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
