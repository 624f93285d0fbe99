"""Simulator speed: chunk decisions per second on one core, simulator and policy together.

Runs whole sessions of video1 over the fcc-test traces (start sample 1, deterministic) with each policy for
about `--seconds` of CPU time, in this process (one core), with and without building chunk-log rows.
Targets from the project brief: >= 100,000 decisions/s with bba, >= 2,000/s with robustmpc (without chunk-log
rows); each measured policy with a target is marked PASS or FAIL, and the exit status is 1 if any fails.

    .venv/bin/python benchmarks/bench_sim_speed.py [--policies bba,robustmpc] [--seconds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.policies import make_policy  # noqa: E402
from emulation.abr_sim import PreparedTrace, PreparedVideo, SimConfig, simulate_session  # noqa: E402
from netllm.paths import shared_data_dir  # noqa: E402
from netllm.video import load_video  # noqa: E402
from traces.readers import read_trace_dir  # noqa: E402


TARGET_DECISIONS_PER_S: dict[str, float] = {"bba": 100_000, "robustmpc": 2_000}


def decisions_per_second(policy_name: str, traces: list[PreparedTrace], video: PreparedVideo, seconds: float,
                         log_rows: bool) -> tuple[float, int]:
    policy = make_policy(policy_name)
    cfg = SimConfig()
    decisions = 0
    started = time.process_time()
    while True:
        for trace in traces:
            result = simulate_session(policy, trace, video, 1, cfg, log_rows=log_rows)
            decisions += len(result.qoe) - 1  # chunk 0 is not a decision
            if time.process_time() - started >= seconds:
                return decisions / (time.process_time() - started), decisions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="bba,robustmpc", help="comma-separated policy names")
    parser.add_argument("--seconds", type=float, default=5.0, help="CPU seconds per measurement")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    abr = shared_data_dir() / "abr"
    traces = [PreparedTrace(t) for t in read_trace_dir(abr / "traces" / "fcc-test")]
    video = PreparedVideo(load_video(abr / "videos" / "video1_sizes"))
    figures: dict[str, dict] = {}
    failed = []
    for name in args.policies.split(","):
        for log_rows in (False, True):
            rate, n = decisions_per_second(name, traces, video, args.seconds, log_rows)
            key = f"{name}{'+rows' if log_rows else ''}"
            target = None if log_rows else TARGET_DECISIONS_PER_S.get(name)
            verdict = "" if target is None else ("PASS" if rate >= target else "FAIL")
            if verdict == "FAIL":
                failed.append(key)
            figures[key] = {"decisions_per_s": round(rate), "decisions": n, "target_decisions_per_s": target,
                            "verdict": verdict or None}
            mark = f"  {verdict} (target {target:,.0f})" if target else ""
            print(f"{key:22s} {rate:12,.0f} decisions/s  ({n} decisions, {args.seconds:g} CPU s){mark}",
                  flush=True)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    if failed:
        print(f"below target: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
