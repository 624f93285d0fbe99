"""Scale-out: live sessions per hour with `netllm replay --parallel N`, and simulator decisions per second
with `netllm sim --ray local` on 1 vs 2 workers.

Live part: the same `--sessions` sessions (bba, a short `--chunks`-chunk video, every trace a constant
`--mbps` link, i.e. effectively unshaped) are replayed at each N of `--parallel-list` (N = 1 is the default
serial path: a fresh network, server and controller per session; N > 1 shares one network, server and
controller, see emulation.parallel). Reported per N: wall time of the whole command, sessions per hour,
failed sessions, and stalls (chunks with rebuffering, and total rebuffer seconds). On such a fast link a
stall is the machine's fault (CPU starved browsers), so the first N with stalls marks where this machine
stops keeping up; that N (minus one) is the largest safe --parallel here.

Simulator part: `netllm sim` over `--sim-traces` traces of fcc-test (video1, bba + robustmpc) with a private
Ray instance of 1 and of 2 CPUs; decisions per second over the whole command (Ray's start-up included) and
over the tasks alone (in a started, warmed-up instance).

    .venv/bin/python benchmarks/bench_scaleout.py [--parallel-list 1,2,4] [--sessions 4] [--chunks 4]
                                                  [--sim-traces 100] [--skip-live] [--skip-sim] [--out FILE]
Needs root, Mininet and Chromium for the live part, `ray` for the simulator part. Load from other
processes changes every figure: note it (the script prints the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netllm.paths import REPO_ROOT, shared_data_dir  # noqa: E402

SMALL_LADDER = "160x90,192x108,256x144,320x180,384x216,448x252"
SIM_POLICIES = ["bba", "robustmpc"]


def prepare_video(out: Path, chunks: int) -> Path:
    cmd = [sys.executable, "-m", "netllm", "prepare-video", "--chunks", str(chunks), "--out", str(out),
           "--preset", "ultrafast", "--noise", "0", "--resolutions", SMALL_LADDER]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=600)
    return out


def write_traces(folder: Path, count: int, mbps: float) -> Path:
    from traces.generators import constant
    from traces.readers import write_cooked

    for k in range(count):
        write_cooked(constant(mbps, duration_s=600), folder / f"fast_{k:03d}")
    return folder


def live_point(parallel: int, traces: Path, video: Path, work: Path) -> dict:
    import pandas as pd

    out = work / f"replay-n{parallel}"
    env = {**os.environ, "NETLLM_RUN_DIR": str(work / "runstate")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "netllm", "replay", "--traces", str(traces), "--policies",
                           "bba", "--video", str(video), "--out", str(out), "--parallel", str(parallel)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3600)
    wall_s = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"replay --parallel {parallel} failed: {done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    chunks = pd.read_parquet(out / "chunks.parquet")
    stalled = chunks[chunks["rebuffer_s"] > 0]
    sessions = len(summary["sessions"])
    return {"parallel": parallel, "sessions": sessions, "wall_s": round(wall_s, 1),
            "sessions_per_hour": round(sessions / wall_s * 3600, 1),
            "failed": sum(1 for s in summary["sessions"] if s.get("player_exit_code")),
            "stalled_chunks": int(len(stalled)), "rebuffer_s": round(float(chunks["rebuffer_s"].sum()), 3),
            "mean_bitrate_kbps": round(float(chunks["bitrate_kbps"].mean()), 1)}


def sim_point(workers: int, traces: Path, work: Path) -> dict:
    """The whole `netllm sim --ray local` command, and the tasks alone inside an already started instance
    (the command's own sharding: every policy of a trace in one task, about four tasks per CPU)."""
    from emulation.abr_sim import SimConfig
    from emulation.abr_sim_cli import Config, _init_worker, _run_unit, run
    from netllm.evaluation import _run_shard
    from netllm.raycluster import ray_session, run_remote

    video = shared_data_dir() / "abr" / "videos" / "video1_sizes"
    out = work / f"sim-ray{workers}"
    started = time.monotonic()
    run(Config(traces=traces, video=video, out=out, policies=SIM_POLICIES, workers=workers, ray="local",
               chunk_log=False))
    command_s = time.monotonic() - started
    summary = json.loads((out / "summary.json").read_text())
    decisions = len(SIM_POLICIES) * summary["traces"] * (summary["chunks_per_session"] - 1)
    paths = sorted(str(p) for p in traces.iterdir())
    count = min(len(paths), 4 * workers)
    shards = [[(policy, pos, 1, pos, False) for policy in SIM_POLICIES for pos in range(k, len(paths), count)]
              for k in range(count)]
    init = (paths, str(video), SimConfig())
    with ray_session("local", num_cpus=workers) as ray:
        warm_up = [(_run_unit, _init_worker, init, shards[0][:1])] * workers
        run_remote(ray, _run_shard, warm_up, "warm-up", "task")
        started = time.monotonic()
        tasks = [(_run_unit, _init_worker, init, shard) for shard in shards]
        run_remote(ray, _run_shard, tasks, "sim", "shard")
        tasks_s = time.monotonic() - started
    return {"ray_workers": workers, "decisions": decisions, "command_wall_s": round(command_s, 2),
            "decisions_per_s_command": round(decisions / command_s, 1), "tasks_wall_s": round(tasks_s, 2),
            "decisions_per_s_tasks": round(decisions / tasks_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel-list", default="1,2,4", help="values of --parallel to measure")
    parser.add_argument("--sessions", type=int, default=4, help="sessions replayed at every N")
    parser.add_argument("--chunks", type=int, default=4, help="chunks of the test video")
    parser.add_argument("--mbps", type=float, default=50.0, help="constant link rate of every trace")
    parser.add_argument("--sim-traces", type=int, default=100, help="fcc-test traces for the simulator part")
    parser.add_argument("--skip-live", action="store_true")
    parser.add_argument("--skip-sim", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    figures: dict = {"load_before": os.getloadavg(), "cpus": os.cpu_count()}
    work = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    try:
        if not args.skip_live:
            video = prepare_video(work / "video", args.chunks)
            traces = write_traces(work / "traces", args.sessions, args.mbps)
            live = []
            for n in [int(x) for x in args.parallel_list.split(",") if x.strip()]:
                live.append(point := live_point(n, traces, video, work))
                print(json.dumps(point), flush=True)
            figures["live"] = live
            figures["first_parallel_with_stalls"] = next((p["parallel"] for p in live if p["stalled_chunks"]),
                                                         None)
        if not args.skip_sim:
            traces = work / "sim-traces"
            traces.mkdir()
            fcc = sorted((shared_data_dir() / "abr" / "traces" / "fcc-test").iterdir())
            for path in fcc[:args.sim_traces]:
                shutil.copy(path, traces / path.name)
            sim = []
            for workers in (1, 2):
                sim.append(point := sim_point(workers, traces, work))
                print(json.dumps(point), flush=True)
            figures["sim_ray"] = sim
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["load_after"] = os.getloadavg()
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
