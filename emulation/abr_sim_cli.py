"""`netllm sim`: evaluate ABR policies over a trace set in the chunk-level simulator.

Every (policy, trace) session runs in a pool of worker processes, or, with `--ray ADDRESS`, in Ray tasks of
a few traces each (`local`: a private instance of `--workers` CPUs; otherwise a running cluster, see
`netllm.raycluster`), with the same results; results go to `--out`:

- `summary.json`: per policy, under its name, flat keys (see `SUMMARY_KEYS`), plus run-wide keys
  (`policies`, `traces`, `video`, `chunks_per_session`, `default_quality`, `noise`, `seed`, `live_timing`:
  the `emulation.abr_sim.LiveTiming` fields with `--live-timing`, else null);
- `sessions.csv`: one row per session (policy, trace, start_index, mean_qoe, bitrate, rebuffering, ...),
  appended and flushed as each session finishes (so a killed run keeps every finished session), then
  rewritten in policy and trace order at the end (with `--ray`, written when the shards come back);
- `chunks.parquet`: every chunk of every session, columns `netllm.chunklog.COLUMNS`, simulated times
  (unless `--no-chunk-log`);
- `config.json`: the resolved options.

Protocol defaults follow NetLLM's ABR evaluation: traces in sorted file-name order, start at sample 1 or at
the per-trace index of `--start-offsets` (lines `trace_file start_index`, `#` comments), deterministic
downloads unless `--noise`, chunk 0 at `--default-quality` (1 by default; NetLLM's own runner uses 0, which
reproduces its published figures exactly), per-session mean QoE over chunks 1.., then the mean over traces.
Reproduce NetLLM's fcc-test numbers with `--traces <data>/abr/traces/fcc-test --start-offsets
<data>/abr/fcc-test-start-offsets.txt --video <data>/abr/videos/video1_sizes`.
Session ids are `policy:trace-name:start`, so two traces of one name (a JSON list naming a file twice, or two
folders' files of one name) are refused before anything runs. `--chunks` is 0 (the whole video) or at least 2:
chunk 0 is never scored, so a one-chunk session has no QoE.
With `--noise` every policy sees the same noise draws on a given trace (the generator is
seeded from `--seed` and the trace's position), so comparisons are paired.

The policy `optimal` is the offline optimum (`emulation.abr_optimal`): its `mean_qoe` is an upper bound on
every policy's (exact on most sessions: `optimal_exact_sessions`), `plan_mean_qoe` what its plan reaches in
the simulator (its chunk log and bitrate/rebuffer figures are that plan's). When `optimal` is among the
policies, every other policy also gets `qoe_fraction_of_optimal` = its mean QoE / optimal's mean QoE.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from netllm.cli import CommandError
from netllm.config import arg, save_config
from netllm.evaluation import interval_text, map_units, mean_ci95

SUMMARY_KEYS: dict[str, str] = {
    "mean_qoe": "mean over traces of the per-session mean chunk QoE (chunk 0 skipped)",
    "qoe_ci95_low": "95% confidence interval of mean_qoe over traces (Student t), low end (null: one trace)",
    "qoe_ci95_high": "high end of that interval",
    "qoe_std": "standard deviation of the per-session mean QoE over traces",
    "mean_bitrate_kbps": "mean chunk bitrate (all chunks)",
    "rebuffer_ratio": "total stall time / total played video time (startup delay apart)",
    "rebuffer_s_per_session": "mean stall seconds per session (startup delay apart)",
    "startup_delay_s": "mean download time of chunk 0",
    "switches_per_session": "mean number of quality changes per session",
    "traces": "sessions (one per trace)",
    "qoe_fraction_of_optimal": "mean_qoe / optimal's mean_qoe (only when optimal ran)",
    "plan_mean_qoe": "optimal only: mean QoE its plans reach in the simulator (<= the true optimum)",
    "optimal_exact_sessions": "optimal only: sessions where the bound is reached by a real plan",
}
SESSION_COLUMNS: tuple[str, ...] = ("policy", "trace", "start_index", "mean_qoe", "plan_mean_qoe",
                                    "mean_bitrate_kbps", "rebuffer_s", "startup_delay_s", "switches",
                                    "chunks", "exact")
"""Columns of sessions.csv."""


@dataclass
class Config:
    traces: Path = arg(help="trace directory (every file, sorted by name) or a JSON list of trace paths")
    video: Path = arg(help="video: a prepared folder (video.json) or a folder of video_size_L files")
    out: Path = arg(help="results folder")
    policies: list[str] = arg(["bba", "robustmpc"], help="policies to evaluate (registry names, or optimal)")
    start_offsets: Path | None = arg(None, help="file of 'trace_file start_index' lines (NetLLM's protocol)")
    start_index: int = arg(1, help="start sample index for traces without --start-offsets")
    noise: bool = arg(False, help="multiply download delays by U(0.9, 1.1) (seeded, same draws per trace)")
    seed: int = arg(0, help="seed of the delay noise and of --live-spread")
    live_timing: bool = arg(False, help="model the live testbed's request timing (start-up requests, "
                            "request gap, init segment per switch, RTT consuming trace time; "
                            "emulation.abr_sim.measured_live_timing); off: Pensieve's dynamics")
    live_spread: bool = arg(False, help="with --live-timing: also draw request gaps and transfer times "
                                        "from the live testbed's measured spread (seeded by --seed): one "
                                        "plausible live session per seed")
    default_quality: int = arg(1, help="quality of chunk 0 (not asked of the policy); -1: the policy decides")
    chunks: int = arg(0, help="play only the first N chunks of the video (0: all)")
    workers: int = arg(0, help="worker processes (0: one per CPU core)")
    chunk_log: bool = arg(True, help="write every chunk to chunks.parquet")
    ray: str = arg("", help="run trace shards as Ray tasks: `local` (a private instance, --workers CPUs) or "
                   "a running cluster's address (netllm.raycluster); empty: a local process pool")


# ---------------------------------------------------------------------------------------------- inputs

def trace_paths(spec: Path) -> list[Path]:
    """The trace files named by `--traces`, in the order sessions run."""
    spec = Path(spec)
    if spec.is_dir():
        files = sorted((p for p in spec.iterdir() if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: p.name)
        if not files:
            raise CommandError(f"{spec}: no trace files")
        return files
    if spec.is_file() and spec.suffix == ".json":
        try:
            doc = json.loads(spec.read_text())
        except json.JSONDecodeError as exc:
            raise CommandError(f"{spec}: not JSON ({exc})") from None
        if not isinstance(doc, list) or not doc or not all(isinstance(x, str) for x in doc):
            raise CommandError(f"{spec}: expected a non-empty JSON list of trace paths")
        paths = [Path(x) if Path(x).is_absolute() else spec.parent / x for x in doc]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CommandError(f"{spec}: trace files not found: {', '.join(missing[:3])}")
        return paths
    raise CommandError(f"{spec}: neither a trace directory nor a .json list of traces")


def read_start_offsets(path: Path) -> dict[str, int]:
    """`trace_file start_index` per line; blank lines and `#` comments ignored."""
    offsets: dict[str, int] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise CommandError(f"{path}: cannot read ({exc})") from None
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2:
            raise CommandError(f"{path}:{number}: expected 'trace_file start_index', got {line!r}")
        try:
            offsets[parts[0]] = int(parts[1])
        except ValueError:
            raise CommandError(f"{path}:{number}: start index {parts[1]!r} is not an integer") from None
    return offsets


# ---------------------------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _init_worker(paths: list[str], video_path: str, sim_config: Any) -> None:
    # One thread per worker process: the pool already uses every core (torch would start one per core).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from emulation.abr_sim import PreparedTrace, PreparedVideo
    from netllm.video import load_video
    from traces.readers import read_trace

    _WORKER.clear()
    _WORKER["traces"] = [PreparedTrace(read_trace(p)) for p in paths]
    _WORKER["video"] = PreparedVideo(load_video(Path(video_path)), sim_config.horizon, sim_config.chunk_count)
    _WORKER["config"] = sim_config
    _WORKER["policies"] = {}


def _run_unit(policy_name: str, trace_pos: int, start_index: int, seed: int,
              log_rows: bool) -> dict[str, Any]:
    """One session; returns its summary row and (optionally) chunk rows."""
    from emulation.abr_optimal import replay_plan, solve
    from emulation.abr_sim import simulate_session

    trace = _WORKER["traces"][trace_pos]
    video, config = _WORKER["video"], _WORKER["config"]
    extra: dict[str, Any] = {}
    if policy_name == "optimal":
        found = solve(trace, video, start_index, config)
        result = replay_plan(found.plan, trace, video, start_index, config, log_rows=log_rows)
        extra = {"bound_mean_qoe": found.mean_qoe, "exact": found.exact}
    else:
        from controller.policies import make_policy

        policies = _WORKER["policies"]
        if policy_name not in policies:
            policies[policy_name] = make_policy(policy_name)
        result = simulate_session(policies[policy_name], trace, video, start_index, config, seed=seed,
                                  log_rows=log_rows, policy_name=policy_name)
    s = result.summary()
    row = {"policy": policy_name, "trace": trace.name, "trace_pos": trace_pos, "start_index": start_index,
           "mean_qoe": extra.get("bound_mean_qoe", s.mean_qoe), "plan_mean_qoe": s.mean_qoe,
           "mean_bitrate_kbps": s.mean_bitrate_kbps, "rebuffer_s": s.total_rebuffer_s,
           "startup_delay_s": s.startup_delay_s, "switches": s.switches, "chunks": s.chunks,
           "exact": extra.get("exact", True)}
    return {"session": row, "rows": result.rows or []}


def _units(cfg: Config, names: list[str], starts: list[int]) -> Iterator[tuple[str, int, int, int, bool]]:
    for name in names:
        for pos, start in enumerate(starts):
            yield name, pos, start, cfg.seed * 1_000_003 + pos, cfg.chunk_log


def _run_all(cfg: Config, paths: list[Path], starts: list[int], sim_config: Any,
             on_result: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    units = list(_units(cfg, cfg.policies, starts))
    # Slow policies first, so a long optimum does not start last and hold up the pool.
    units.sort(key=lambda u: {"optimal": 0, "robustmpc": 1, "fastmpc": 1}.get(u[0], 2))
    workers = cfg.workers or os.cpu_count() or 1
    args = ([str(p) for p in paths], str(cfg.video), sim_config)
    if cfg.ray:  # a shard = every policy's session on a few traces (results are sorted when written)
        from netllm.evaluation import map_units_ray

        results = map_units_ray(_run_unit, units, _init_worker, args, cfg.ray, workers, "trace shards",
                                shard_key=lambda u: u[1])
        for result in results:
            on_result(result)
        return results
    return map_units(_run_unit, units, _init_worker, args, workers, "sessions", "session", on_result)


# ---------------------------------------------------------------------------------------------- summary

def summarize_sessions(sessions: list[dict[str, Any]], names: list[str],
                       chunk_duration_s: float) -> dict[str, dict[str, Any]]:
    """Per-policy figures (keys documented in SUMMARY_KEYS) from session rows."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = sorted((r for r in sessions if r["policy"] == name), key=lambda r: r["trace_pos"])
        qoe = [r["mean_qoe"] for r in rows]
        mean, low, high = mean_ci95(qoe)
        chunks = sum(r["chunks"] for r in rows)
        rebuf = sum(r["rebuffer_s"] for r in rows)
        fig = {
            "mean_qoe": mean, "qoe_ci95_low": low, "qoe_ci95_high": high,
            "qoe_std": math.sqrt(sum((v - mean) ** 2 for v in qoe) / max(len(qoe) - 1, 1)),
            "mean_bitrate_kbps": sum(r["mean_bitrate_kbps"] * r["chunks"] for r in rows) / chunks,
            "rebuffer_ratio": rebuf / (chunks * chunk_duration_s),
            "rebuffer_s_per_session": rebuf / len(rows),
            "startup_delay_s": sum(r["startup_delay_s"] for r in rows) / len(rows),
            "switches_per_session": sum(r["switches"] for r in rows) / len(rows),
            "traces": len(rows),
        }
        if name == "optimal":
            fig["plan_mean_qoe"] = sum(r["plan_mean_qoe"] for r in rows) / len(rows)
            fig["optimal_exact_sessions"] = sum(1 for r in rows if r["exact"])
        out[name] = fig
    if "optimal" in out:
        best = out["optimal"]["mean_qoe"]
        for name, fig in out.items():
            fig["qoe_fraction_of_optimal"] = fig["mean_qoe"] / best if best > 0 else None
    return out


def _write_outputs(cfg: Config, results: list[dict[str, Any]], figures: dict[str, Any],
                   run_info: dict[str, Any]) -> None:
    """The files written once every session is in: sessions.csv in order, chunks.parquet, summary.json."""
    import pandas as pd

    from netllm.chunklog import COLUMNS, write_csv_atomically, write_summary

    sessions = sorted((r["session"] for r in results), key=lambda r: (cfg.policies.index(r["policy"]),
                                                                      r["trace_pos"]))
    write_csv_atomically(cfg.out / "sessions.csv", SESSION_COLUMNS, sessions)
    if cfg.chunk_log:
        order = {name: i for i, name in enumerate(cfg.policies)}
        rows = [row for r in sorted(results, key=lambda r: (order[r["session"]["policy"]],
                                                            r["session"]["trace_pos"])) for row in r["rows"]]
        pd.DataFrame(rows, columns=list(COLUMNS)).to_parquet(cfg.out / "chunks.parquet", index=False)
    write_summary({**run_info, **{name: _json_safe(fig) for name, fig in figures.items()}}, cfg.out)


def _json_safe(fig: dict[str, Any]) -> dict[str, Any]:
    """NaN figures (the 95% interval of a single trace has no ends) as JSON null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in fig.items()}


# ---------------------------------------------------------------------------------------------- command

def _check_policies(names: list[str]) -> None:
    from controller.policies import available_policies

    known = set(available_policies()) | {"optimal"}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise CommandError(f"unknown policies {unknown}; known: {', '.join(sorted(known))}")
    if len(set(names)) != len(names):
        raise CommandError("a policy is listed twice")
    from controller.policies import make_policy

    for name in names:  # build each once here, so a missing checkpoint is a clear error, not a worker crash
        if name != "optimal":
            try:
                make_policy(name)
            except (OSError, ValueError, ImportError) as exc:
                raise CommandError(f"policy {name}: {exc}") from None


def _starts(cfg: Config, paths: list[Path], samples: list[int]) -> list[int]:
    offsets = read_start_offsets(cfg.start_offsets) if cfg.start_offsets else {}
    starts = []
    for path, n in zip(paths, samples):
        if cfg.start_offsets and path.name not in offsets:
            raise CommandError(f"{cfg.start_offsets}: no start index for trace {path.name}")
        start = offsets.get(path.name, cfg.start_index)
        if not 1 <= start < n:
            raise CommandError(f"{path}: start index {start} outside 1..{n - 1}")
        starts.append(start)
    return starts


def _check_options(cfg: Config) -> None:
    """Option values a worker would only trip over later (each a clear error before anything runs)."""
    if cfg.chunks < 0 or cfg.chunks == 1:
        # One chunk leaves nothing to score (chunk 0 is never scored): every mean QoE would be NaN.
        raise CommandError(f"--chunks must be 0 (the whole video) or >= 2 (chunk 0 is not scored), "
                           f"got {cfg.chunks}")
    if cfg.workers < 0:
        raise CommandError(f"--workers must be >= 0 (0: one per CPU core), got {cfg.workers}")
    if cfg.start_index < 1:
        raise CommandError(f"--start-index must be >= 1, got {cfg.start_index}")


def _load_inputs(cfg: Config, sim_config: Any) -> tuple[Any, list[Path], list[int]]:
    """(video, trace paths, samples per trace), every trace checked against the video as workers use them."""
    from emulation.abr_sim import PreparedTrace, PreparedVideo, check_trace_carries_video
    from netllm.video import VideoError, load_video
    from traces.bandwidth import TraceError
    from traces.readers import read_trace

    paths = trace_paths(cfg.traces)
    try:
        traces = [PreparedTrace(read_trace(path)) for path in paths]
        _refuse_shared_names(cfg.traces, paths, [t.name for t in traces])
        video = load_video(cfg.video)
        prepared_video = PreparedVideo(video, sim_config.horizon, sim_config.chunk_count)
        if prepared_video.chunk_count < 2:
            raise CommandError(f"{cfg.video}: a session needs at least 2 chunks (chunk 0 is not scored); "
                               f"this video has {prepared_video.chunk_count}")
        for trace in traces:
            check_trace_carries_video(trace, prepared_video, sim_config)
    except (VideoError, TraceError) as exc:
        raise CommandError(str(exc)) from None
    return video, paths, [t.samples for t in traces]


def _refuse_shared_names(spec: Path, paths: list[Path], names: list[str]) -> None:
    """Session ids (`policy:trace:start`), start offsets and the report's pairing all go by trace name:
    two traces of one name would be merged into one session downstream."""
    first: dict[str, Path] = {}
    for path, name in zip(paths, names):
        if name in first:
            raise CommandError(f"{spec}: traces {first[name]} and {path} share the name {name!r}; "
                               "give every trace a distinct file name")
        first[name] = path


def run(cfg: Config) -> int:
    from emulation.abr_sim import SimConfig, measured_live_timing
    from netllm.chunklog import CsvRowLog
    from traces.bandwidth import TraceError

    _check_options(cfg)
    _check_policies(cfg.policies)
    if "optimal" in cfg.policies and cfg.noise:
        raise CommandError("policy optimal needs deterministic downloads: drop --noise or drop optimal")
    if cfg.live_spread and not cfg.live_timing:
        raise CommandError("--live-spread needs --live-timing")
    if "optimal" in cfg.policies and cfg.live_timing:
        raise CommandError("policy optimal solves Pensieve's dynamics only: "
                           "drop --live-timing or drop optimal")
    sim_config = SimConfig(noise=cfg.noise, chunk_count=cfg.chunks or None, default_quality=None)
    video, paths, samples = _load_inputs(cfg, sim_config)
    if not -1 <= cfg.default_quality < video.levels:
        raise CommandError(f"--default-quality must be -1 or in 0..{video.levels - 1}")
    starts = _starts(cfg, paths, samples)
    first = None if cfg.default_quality < 0 else cfg.default_quality
    live = measured_live_timing(cfg.video, video.levels, spread=cfg.live_spread) if cfg.live_timing else None
    sim_config = dataclasses.replace(sim_config, default_quality=first, live=live)
    cfg.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.out)
    with CsvRowLog(cfg.out / "sessions.csv", SESSION_COLUMNS) as session_log:
        try:
            results = _run_all(cfg, paths, starts, sim_config, lambda r: session_log.write(r["session"]))
        except TraceError as exc:  # a download or wait that would loop over its trace without end
            raise CommandError(str(exc)) from None
    figures = summarize_sessions([r["session"] for r in results], cfg.policies, video.chunk_duration_s)
    chunks = min(video.chunk_count, cfg.chunks or video.chunk_count)
    run_info = {"policies": cfg.policies, "traces": len(paths), "video": str(cfg.video),
                "chunks_per_session": chunks, "default_quality": cfg.default_quality, "noise": cfg.noise,
                "live_timing": dataclasses.asdict(live) if live is not None else None,
                "seed": cfg.seed}
    _write_outputs(cfg, results, figures, run_info)
    width = max(len(n) for n in cfg.policies)
    for name in cfg.policies:
        f = figures[name]
        interval = interval_text(f["qoe_ci95_low"], f["qoe_ci95_high"], "trace")
        print(f"{name.ljust(width)}  QoE {f['mean_qoe']:.4f} {interval}"
              f"  bitrate {f['mean_bitrate_kbps']:.0f} kbps  rebuffer {100 * f['rebuffer_ratio']:.2f}%"
              f"  switches {f['switches_per_session']:.1f}")
    print(f"results in {cfg.out}")
    return 0
