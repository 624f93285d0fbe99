"""MAE and great-circle error of every classic VP baseline on the reference data sets' splits.

Windows follow NetLLM's protocol (2 s history, 4 s horizon, stride 15, trims 30/60) on NetLLM's video/user
splits (`traces.vp_splits`). Each extrapolator runs twice: as the project ships it (roll and yaw unwrapped
over the history, pitch kept within [-90, 90]) and as NetLLM ran it (`unwrap=False, clip_pitch=False`).
Columns:

- `mae`: the project's MAE (every difference wrapped into [-180, 180]);
- `mae_netllm_metric`: NetLLM's own formula, min(|d|, |d + 360|, |d - 360|), which does not fully wrap
  differences beyond +-540 degrees (raw extrapolations through +-180 produce them); it is the figure to hold
  against the published ones (read off NetLLM's charts: Jin2022 LR ~18.9, velocity ~17.0, no-motion ~9.8);
- `gc`: mean great-circle error (degrees) over the 20 steps; `windows_per_s`: in-process throughput.

    .venv/bin/python benchmarks/bench_vp_baselines.py [--data DIR] [--splits test,valid] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.vp.policies import make_vp_policy  # noqa: E402
from emulation.vp_replay import evaluate_policy  # noqa: E402
from netllm.paths import shared_data_dir  # noqa: E402
from traces.headmove import index_vp_dataset, make_windows, read_ref  # noqa: E402
from traces.vp_splits import select_split  # noqa: E402

DATASETS = ("Jin2022", "Wu2017")
VARIANTS: list[tuple[str, str, dict]] = [
    ("no-motion", "no-motion", {}),
    ("linear-regression", "linear-regression", {}),
    ("velocity", "velocity", {}),
    ("linear-regression (netllm)", "linear-regression", {"unwrap": False, "clip_pitch": False}),
    ("velocity (netllm)", "velocity", {"unwrap": False, "clip_pitch": False}),
]
PUBLISHED_JIN2022 = {"no-motion": 9.8, "linear-regression (netllm)": 18.9, "velocity (netllm)": 17.0}


def netllm_metric_mae(pred_deg: np.ndarray, true_deg: np.ndarray) -> float:
    """NetLLM's `compute_mae(..., rotation=True)` formula, reproduced for comparison only."""
    error = np.abs(true_deg - pred_deg)
    error = np.minimum(error, np.abs(true_deg + 360 - pred_deg))
    return float(np.minimum(error, np.abs(true_deg - 360 - pred_deg)).mean())


def raw_predictions(windows_history: np.ndarray, name: str, horizon: int) -> np.ndarray:
    """NetLLM's baselines' outputs as NetLLM scored them: raw extrapolations of the raw angles, not wrapped
    back into range (the policies wrap theirs, which the NetLLM metric would score differently)."""
    history = windows_history
    length = history.shape[1]
    if name == "velocity":
        velocity = (history[:, -1] - history[:, 0]) / (length - 1)
        steps = np.arange(1, horizon + 1, dtype=np.float64)
        return history[:, -1:] + velocity[:, None, :] * steps[None, :, None]
    index = np.arange(length, dtype=np.float64)
    centred = index - index.mean()
    mean = history.mean(axis=1, keepdims=True)
    slope = np.einsum("h,nha->na", centred, history - mean) / np.sum(centred ** 2)
    ahead = np.arange(length, length + horizon) - index.mean()
    return mean + slope[:, None, :] * ahead[None, :, None]


def run(data: Path, splits: list[str]) -> list[dict]:
    rows = []
    for dataset in DATASETS:
        refs = index_vp_dataset(data / dataset)
        for split in splits:
            windows = make_windows([read_ref(r) for r in select_split(refs, split)])
            for label, name, options in VARIANTS:
                scores = evaluate_policy(make_vp_policy(name, **options), windows)
                raw = raw_predictions(windows.history_deg, name, windows.future_deg.shape[1]) if options \
                    else scores.predictions_deg
                rows.append({
                    "dataset": dataset, "split": split, "policy": label, "windows": len(windows),
                    "mae": float(scores.mae_deg.mean()),
                    "mae_netllm_metric": netllm_metric_mae(raw, windows.future_deg),
                    "gc": float(scores.great_circle_deg.mean()),
                    "windows_per_s": len(windows) / max(scores.elapsed_s, 1e-9),
                    "published": PUBLISHED_JIN2022.get(label) if (dataset, split) == ("Jin2022", "test")
                    else None,
                })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=shared_data_dir() / "vp",
                        help="folder holding Jin2022/ and Wu2017/")
    parser.add_argument("--splits", default="test", help="comma-separated: train, valid, test")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    rows = run(args.data, [s for s in args.splits.split(",") if s])
    print(f"{'dataset':8} {'split':5} {'policy':27} {'windows':>7} {'mae':>7} {'mae_netllm':>10} {'gc':>7} "
          f"{'published':>9} {'win/s':>9}")
    for r in rows:
        published = f"{r['published']:.1f}" if r["published"] is not None else "-"
        print(f"{r['dataset']:8} {r['split']:5} {r['policy']:27} {r['windows']:7d} {r['mae']:7.2f} "
              f"{r['mae_netllm_metric']:10.2f} {r['gc']:7.2f} {published:>9} {r['windows_per_s']:9.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
