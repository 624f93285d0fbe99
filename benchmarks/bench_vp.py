"""VP test-split table: MAE and great-circle error of baselines, TRACK and NetLLM-VP, plus NetLLM-VP latency.

Windows follow NetLLM's protocol (2 s history, 4 s horizon, stride 15, trims 30/60) on the TEST splits of
Jin2022 and Wu2017 (`traces.vp_splits`: no video and no user shared with training or validation). The learned
models are the repository's default checkpoints, trained on Jin2022's training split and selected on its
validation split (`netllm train-vp`); on Wu2017 they run unchanged (a cross-dataset test).

Columns: `mae` (wrapped, degrees, mean over windows, steps, roll/pitch/yaw), `gc` (mean great-circle error of
the viewing direction over the 20 steps), `vs_no_motion` (mae minus no-motion's on the same windows),
`windows_per_s` (in-process throughput). Latency: `NetllmVpPolicy.predict` on one window at a time with
torch on ONE thread (`--latency-windows` single-window calls after 5 warm-ups), p50/p99 in milliseconds.

    .venv/bin/python benchmarks/bench_vp.py [--data DIR] [--max-windows N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.vp.policies import make_vp_policy  # noqa: E402
from emulation.vp_replay import evaluate_policy  # noqa: E402
from netllm.paths import REPO_ROOT, shared_data_dir  # noqa: E402
from traces.headmove import WindowBatch, index_vp_dataset, make_windows, read_ref  # noqa: E402
from traces.vp_splits import select_split  # noqa: E402

DATASETS = ("Jin2022", "Wu2017")
BASELINES = ("no-motion", "linear-regression", "velocity")


def test_windows(data: Path, dataset: str, max_windows: int) -> WindowBatch:
    windows = make_windows([read_ref(r) for r in select_split(index_vp_dataset(data / dataset), "test")])
    if 0 < max_windows < len(windows):
        windows = windows.take(np.unique(np.linspace(0, len(windows) - 1, max_windows).round().astype(int)))
    return windows


def policies(track: Path, netllm_vp: Path) -> list[tuple[str, str, dict[str, Any]]]:
    rows: list[tuple[str, str, dict[str, Any]]] = [(name, name, {}) for name in BASELINES]
    rows.append(("track", "track", {"checkpoint": str(track)}))
    rows.append(("netllm-vp (smollm2)", "netllm-vp", {"checkpoint": str(netllm_vp)}))
    return rows


def score_table(data: Path, track: Path, netllm_vp: Path, max_windows: int) -> list[dict[str, Any]]:
    rows = []
    built = {label: make_vp_policy(name, **opts) for label, name, opts in policies(track, netllm_vp)}
    for dataset in DATASETS:
        windows = test_windows(data, dataset, max_windows)
        baseline_mae = None
        for label, policy in built.items():
            scores = evaluate_policy(policy, windows, batch_size=256)
            mae = float(scores.mae_deg.mean())
            baseline_mae = mae if label == "no-motion" else baseline_mae
            rows.append({"dataset": dataset, "split": "test", "policy": label, "windows": len(windows),
                         "mae": mae, "gc": float(scores.great_circle_deg.mean()),
                         "vs_no_motion": mae - baseline_mae if baseline_mae is not None else 0.0,
                         "windows_per_s": len(windows) / max(scores.elapsed_s, 1e-9)})
    return rows


def latency_ms(data: Path, netllm_vp: Path, samples: int) -> dict[str, float]:
    """Single-window NetLLM-VP prediction latency on one torch thread."""
    import torch

    torch.set_num_threads(1)
    policy = make_vp_policy("netllm-vp", checkpoint=str(netllm_vp))
    windows = test_windows(data, "Jin2022", samples + 5)
    times = []
    for i in range(len(windows)):
        started = time.perf_counter()
        policy.predict(windows.history_deg[i], 20)
        if i >= 5:
            times.append((time.perf_counter() - started) * 1000.0)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(np.mean(times)), "calls": len(times), "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=shared_data_dir() / "vp",
                        help="folder holding Jin2022/ and Wu2017/")
    parser.add_argument("--track", type=Path, default=REPO_ROOT / "models" / "track-jin2022",
                        help="TRACK checkpoint folder")
    parser.add_argument("--netllm-vp", type=Path, default=REPO_ROOT / "models" / "netllm-vp-smollm2",
                        help="NetLLM-VP checkpoint folder")
    parser.add_argument("--max-windows", type=int, default=0,
                        help="score at most this many test windows per dataset, evenly spread (0: all)")
    parser.add_argument("--latency-windows", type=int, default=200, help="single-window calls timed")
    parser.add_argument("--json", type=Path, default=None, help="also write rows and latency here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = score_table(args.data, args.track, args.netllm_vp, args.max_windows)
    print(f"{'dataset':8} {'split':5} {'policy':20} {'windows':>7} {'mae':>7} {'gc':>7} {'vs_nm':>7} "
          f"{'win/s':>9}")
    for r in rows:
        print(f"{r['dataset']:8} {r['split']:5} {r['policy']:20} {r['windows']:7d} {r['mae']:7.2f} "
              f"{r['gc']:7.2f} {r['vs_no_motion']:+7.2f} {r['windows_per_s']:9.0f}")
    latency = latency_ms(args.data, args.netllm_vp, args.latency_windows)
    print(f"netllm-vp single-window latency, {latency['threads']} thread: p50 {latency['p50_ms']:.1f} ms, "
          f"p99 {latency['p99_ms']:.1f} ms over {latency['calls']} calls")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "netllm_vp_latency": latency}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
