"""`netllm vp-eval`: evaluate viewport-prediction policies on head-movement traces.

    netllm vp-eval --dataset ../shared/data/vp/Jin2022 --policies no-motion,linear-regression,velocity \
        --split test --out results/vp [--via-controller http://127.0.0.1:8000]

Each dataset folder (NetLLM or TRACK layout, see `traces.headmove`) is split with `traces.vp_splits` (no
video and no user shared between splits), cut into NetLLM's windows (2 s history, 4 s horizon, stride 15,
first 30 / last 60 samples trimmed; options below), and every policy predicts every window: in process by
default, or through a running controller (`--via-controller URL`, the controller must serve the `vp` task)
with `emulation.vp_replay`. Results in `--out`:

- `windows.parquet` (and `windows.csv`): one row per (dataset, policy, window): dataset, video, user,
  window_start (index of the first history sample), future_start, time_s (playback time of the last history
  sample), policy, mae_deg, gc_mean_deg, gc_deg_1..gc_deg_F (great-circle error per step), latency_ms and
  rtt_ms (controller runs only). windows.csv gets each (dataset, policy)'s rows appended and flushed as soon
  as they are scored, so a killed run keeps them (with `--no-csv` it is removed once windows.parquet is
  written); windows.parquet and summary.json are written at the end;
- `summary.json`: per dataset, the split counts and, per policy: windows, viewers, mae_deg, mae_ci95,
  mae_deg_per_axis, mae_deg_per_step, great_circle_deg, great_circle_ci95, great_circle_deg_per_step, and
  timing. The 95% intervals are percentile bootstraps over viewers ((video, user) pairs): a viewer's windows
  are correlated, so resampling windows would understate the uncertainty;
- `config.json`: the resolved options.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from controller.vp.metrics import AXES, angle_errors_deg
from controller.vp.policies import UnknownVpPolicyError, VpPolicyUnavailableError, make_vp_policy
from emulation.vp_replay import VpReplayError, VpScores, evaluate_policy, replay_via_controller
from netllm.cli import CommandError
from netllm.config import arg, save_config
from traces.headmove import (
    HISTORY_LEN,
    HORIZON_LEN,
    LAYOUTS,
    TRIM_HEAD,
    TRIM_TAIL,
    WINDOW_STRIDE,
    HeadTrace,
    HeadTraceError,
    WindowSpec,
    index_vp_dataset,
    make_windows,
    read_ref,
)
from traces.vp_splits import VpSplitError, select_split, split_report


@dataclass
class Config:
    dataset: list[Path] = arg(help="dataset folder(s), comma-separated (e.g. <shared data>/vp/Jin2022)")
    out: Path = arg(help="results folder")
    policies: list[str] = arg(["no-motion", "linear-regression", "velocity"], help="VP policies to evaluate")
    split: str = arg("test", help="train, valid, test or all")
    split_scheme: str = arg("auto", help="auto, netllm or hash (see traces.vp_splits)")
    layout: str = arg("auto", help="dataset layout: auto, netllm or track")
    via_controller: str = arg("", help="controller URL: predict through POST /v1/vp/predict, not in process")
    policy_options: str = arg("", help='JSON object {"policy": {constructor options}} (in-process runs)')
    history: int = arg(HISTORY_LEN, help="history samples per window (5 Hz: 10 = 2 s)")
    horizon: int = arg(HORIZON_LEN, help="predicted samples per window (20 = 4 s)")
    stride: int = arg(WINDOW_STRIDE, help="samples between window starts")
    trim_head: int = arg(TRIM_HEAD, help="index of the earliest first predicted sample")
    trim_tail: int = arg(TRIM_TAIL, help="trailing samples no window starts in")
    max_windows: int = arg(0, help="evaluate only the leading viewers holding the first N windows (0: all)")
    batch_size: int = arg(4096, help="windows per predict_batch call (in process)")
    concurrency: int = arg(8, help="viewers replayed at once through the controller")
    realtime_speed: float = arg(0.0, help="controller replay pace: 1 = real time, 0 = as fast as answered")
    bootstrap: int = arg(2000, help="bootstrap resamples for the 95%% intervals")
    seed: int = arg(0, help="seed of the bootstrap")
    csv: bool = arg(True, help="also keep windows.csv (it is written as the run goes either way)")


def bootstrap_ci(values: np.ndarray, groups: np.ndarray, resamples: int, seed: int) -> list[float]:
    """95% percentile interval of the mean of `values`, resampling whole groups with replacement."""
    if values.size == 0:
        return [float("nan"), float("nan")]
    _, codes = np.unique(groups, return_inverse=True)
    sums = np.bincount(codes, weights=values)
    counts = np.bincount(codes).astype(np.float64)
    n_groups = sums.size
    if n_groups < 2 or resamples < 1:
        mean = float(values.mean())
        return [mean, mean]
    weights = np.full(n_groups, 1.0 / n_groups)
    draws = np.random.default_rng(seed).multinomial(n_groups, weights, size=resamples)
    means = (draws @ sums) / (draws @ counts)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


def policy_summary(scores: VpScores, resamples: int, seed: int) -> dict[str, Any]:
    windows = scores.windows
    viewers = np.char.add(np.char.add(windows.video_id.astype(str), "/"), windows.user_id.astype(str))
    errors = angle_errors_deg(scores.predictions_deg, windows.future_deg)  # (N, F, 3)
    gc_window = scores.great_circle_deg.mean(axis=1)
    doc: dict[str, Any] = {
        "windows": len(windows), "viewers": int(np.unique(viewers).size),
        "mae_deg": float(scores.mae_deg.mean()),
        "mae_ci95": bootstrap_ci(scores.mae_deg, viewers, resamples, seed),
        "mae_deg_per_axis": {axis: float(errors[..., i].mean()) for i, axis in enumerate(AXES)},
        "mae_deg_per_step": errors.mean(axis=(0, 2)).tolist(),
        "great_circle_deg": float(gc_window.mean()),
        "great_circle_ci95": bootstrap_ci(gc_window, viewers, resamples, seed),
        "great_circle_deg_per_step": scores.great_circle_deg.mean(axis=0).tolist(),
        "elapsed_s": scores.elapsed_s,
        "windows_per_s": len(windows) / scores.elapsed_s if scores.elapsed_s > 0 else None,
    }
    if np.isfinite(scores.latency_ms).any():
        doc["latency_ms_p50"], doc["latency_ms_p95"] = np.percentile(scores.latency_ms, [50, 95]).tolist()
        doc["rtt_ms_p50"], doc["rtt_ms_p95"] = np.percentile(scores.rtt_ms, [50, 95]).tolist()
    return doc


def window_rows(scores: VpScores, history: int) -> pd.DataFrame:
    windows = scores.windows
    frame = pd.DataFrame({
        "dataset": windows.dataset, "video": windows.video_id, "user": windows.user_id,
        "window_start": windows.start, "future_start": windows.start + history,
        "time_s": windows.history_time_s[:, -1], "policy": scores.policy, "mae_deg": scores.mae_deg,
        "gc_mean_deg": scores.great_circle_deg.mean(axis=1),
    })
    steps = pd.DataFrame(scores.great_circle_deg,
                         columns=[f"gc_deg_{k}" for k in range(1, scores.great_circle_deg.shape[1] + 1)])
    extra = pd.DataFrame({"latency_ms": scores.latency_ms, "rtt_ms": scores.rtt_ms})
    return pd.concat([frame, steps, extra], axis=1)


def _policy_options(cfg: Config) -> dict[str, dict[str, Any]]:
    if not cfg.policy_options.strip():
        return {}
    try:
        options = json.loads(cfg.policy_options)
    except ValueError as exc:
        raise CommandError(f"--policy-options is not valid JSON: {exc}") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise CommandError('--policy-options must be a JSON object {"policy": {options}}')
    return options


def _load_split(cfg: Config, folder: Path) -> tuple[list[HeadTrace], dict[str, Any]]:
    try:
        refs = index_vp_dataset(folder, cfg.layout)
        chosen = select_split(refs, cfg.split, cfg.split_scheme)
        report = split_report(refs, cfg.split_scheme)
        return [read_ref(r) for r in chosen], report
    except (FileNotFoundError, HeadTraceError, VpSplitError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def _score(cfg: Config, name: str, options: dict[str, Any], traces: list[HeadTrace],
           spec: WindowSpec) -> VpScores:
    if cfg.via_controller:
        try:
            return asyncio.run(replay_via_controller(cfg.via_controller, name, traces, spec, cfg.concurrency,
                                                     cfg.realtime_speed))
        except VpReplayError as exc:
            raise CommandError(str(exc)) from None
    try:
        policy = make_vp_policy(name, **options)
    except (UnknownVpPolicyError, VpPolicyUnavailableError) as exc:
        raise CommandError(str(exc)) from None
    except TypeError as exc:
        raise CommandError(f"policy {name!r}: bad options {options}: {exc}") from None
    return evaluate_policy(policy, make_windows(traces, spec), cfg.batch_size, name=name)


def _check_options(cfg: Config) -> WindowSpec:
    """Every option value, before anything is read or written; the window spec they make."""
    if cfg.layout not in LAYOUTS:
        raise CommandError(f"--layout must be one of {', '.join(LAYOUTS)}")
    if not cfg.dataset or not cfg.policies:
        raise CommandError("give at least one --dataset folder and one policy")
    if len(set(cfg.policies)) != len(cfg.policies):
        raise CommandError("a policy is listed twice")
    names = [Path(folder).name for folder in cfg.dataset]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # results are keyed by the folder's name, so one would overwrite the other
        raise CommandError(f"--dataset folders must have different names; {', '.join(twice)} is given twice")
    if cfg.batch_size < 1 or cfg.concurrency < 1:
        raise CommandError("need --batch-size >= 1 and --concurrency >= 1")
    if cfg.bootstrap < 0 or cfg.max_windows < 0:
        raise CommandError("need --bootstrap >= 0 and --max-windows >= 0")
    if not (math.isfinite(cfg.realtime_speed) and cfg.realtime_speed >= 0):
        raise CommandError(f"--realtime-speed must be a finite number >= 0, got {cfg.realtime_speed}")
    try:
        return WindowSpec(cfg.history, cfg.horizon, cfg.stride, cfg.trim_head, cfg.trim_tail)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _load_dataset(cfg: Config, folder: Path, spec: WindowSpec) -> tuple[list[HeadTrace], dict[str, Any]]:
    """The viewers of `folder`'s split (at most `--max-windows`' worth) and its split counts; CommandError
    when they hold no window, which would leave every result NaN."""
    traces, report = _load_split(cfg, folder)
    if cfg.max_windows > 0:
        traces = _first_traces(traces, spec, cfg.max_windows)
    if not any(len(spec.future_starts(len(t))) for t in traces):
        raise CommandError(f"{folder}: the {cfg.split} split ({len(traces)} viewers) holds no window with "
                           f"history {spec.history}, horizon {spec.horizon}, trim head {spec.trim_head} and "
                           f"tail {spec.trim_tail}")
    return traces, report


def run(cfg: Config) -> int:
    spec = _check_options(cfg)
    options = _policy_options(cfg)
    loaded = [(Path(folder), *_load_dataset(cfg, Path(folder), spec)) for folder in cfg.dataset]
    save_config(cfg, cfg.out)
    frames: list[pd.DataFrame] = []
    summary: dict[str, Any] = {"split": cfg.split, "window": dataclasses.asdict(spec),
                               "via_controller": cfg.via_controller or None, "datasets": {}}
    csv_path = cfg.out / "windows.csv"
    with open(csv_path, "w", newline="") as csv_log:
        for folder, traces, report in loaded:
            entry: dict[str, Any] = {"folder": str(folder), "split_counts": report, "viewers": len(traces),
                                     "policies": {}}
            for name in cfg.policies:
                scores = _score(cfg, name, options.get(name, {}), traces, spec)
                entry["policies"][name] = policy_summary(scores, cfg.bootstrap, cfg.seed)
                frames.append(window_rows(scores, spec.history))
                frames[-1].to_csv(csv_log, header=len(frames) == 1, index=False)
                csv_log.flush()
                doc = entry["policies"][name]
                print(f"{folder.name:>10} {name:>18}: MAE {doc['mae_deg']:7.3f} deg, "
                      f"great-circle {doc['great_circle_deg']:7.3f} deg ({len(scores.windows)} windows)",
                      flush=True)
            summary["datasets"][folder.name] = entry
    table = pd.concat(frames, ignore_index=True)
    table.to_parquet(cfg.out / "windows.parquet", index=False)
    if not cfg.csv:
        csv_path.unlink()
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _first_traces(traces: list[HeadTrace], spec: WindowSpec, max_windows: int) -> list[HeadTrace]:
    """The leading traces that hold the first `max_windows` windows (whole viewers, so replays stay whole)."""
    kept, total = [], 0
    for trace in traces:
        if total >= max_windows:
            break
        kept.append(trace)
        total += len(spec.future_starts(len(trace)))
    return kept
