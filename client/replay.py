"""`netllm replay`: stream a trace set with several policies over the emulated link, one live session per
(trace, policy), one after another.

    netllm replay --traces DIR --policies bba,robustmpc --video DIR --out runs/replay [--rtt-ms 80]
                  [--trace-offset-s S | --start-offsets FILE] [--limit N] [--resume]

Traces are read with `traces.readers.read_trace_dir` (sorted file-name order); for each trace every policy
runs in turn (so policies see the same link conditions close together in time). `--start-offsets` takes a
NetLLM-style file (`trace_file start_index` per line, `#` comments; e.g. abr/fcc-test-start-offsets.txt):
that trace starts at that sample index; traces it does not list start at `--trace-offset-s`.

Outputs in `--out`:
    sessions/<trace>__<policy>/   each session's folder (see emulation.live_session)
    chunks.parquet                every chunk row of every session (netllm.chunklog.COLUMNS)
    summary.json                  {"sessions": [one row per session], "policies": {policy: aggregates}, ...}
                                  aggregates: sessions, failed, and the mean over sessions of mean_qoe (the
                                  NetLLM figure: mean over traces of the per-session mean per-chunk QoE), of
                                  mean_bitrate_kbps, total_rebuffer_s, rebuffer_ratio, startup_delay_s,
                                  switches, fallback_chunks, link_fidelity_median_abs_rel_error
    config.json
A failed session is recorded (error, player_exit_code) and the run goes on; Ctrl-C or SIGTERM stops it after
writing the summary of the sessions done.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netllm.cli import CommandError
from netllm.config import arg, save_config
from netllm.paths import default_video_dir

AGGREGATED_KEYS = ("mean_qoe", "mean_qoe_all_chunks", "mean_bitrate_kbps", "total_rebuffer_s",
                   "rebuffer_ratio", "startup_delay_s", "switches", "fallback_chunks",
                   "decision_latency_p50_ms", "link_fidelity_median_abs_rel_error")
SESSION_KEYS = ("trace", "policy", "session_id", "chunks", "player_exit_code", "error", "trace_start_time_s",
                "rtt_method", *AGGREGATED_KEYS)


@dataclass
class Config:
    traces: Path = arg(help="folder of bandwidth traces (cooked, Mahimahi or Sabre; see traces.readers)")
    policies: list[str] = arg(["bba", "robustmpc"], help="ABR policies, comma separated")
    video: Path = arg(default_video_dir(), help="prepared video folder")
    out: Path | None = arg(None, help="output folder (default runs/replay-<timestamp>)")
    pattern: str = arg("*", help="file-name pattern of the traces in --traces")
    limit: int = arg(0, help="use only the first N traces (0 = all)")
    trace_offset_s: float = arg(0.0, help="start every trace at this offset (seconds)")
    start_offsets: Path | None = arg(None, help="NetLLM start-index file: `trace_file start_index` per line")
    rtt_ms: float = arg(80.0, help="round-trip time of the emulated link (ms)")
    decision_timeout_ms: float = arg(1000.0, help="deadline of each controller decision")
    buffer_s: float = arg(60.0, help="player buffer target and maximum (s)")
    resume: bool = arg(False, help="skip sessions whose folder already has a summary.json")


def read_start_offsets(path: Path) -> dict[str, int]:
    """`trace_file start_index` lines; errors name the file and line."""
    offsets: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise CommandError(f"{path}:{number}: expected `trace_file start_index`, got {line.strip()!r}")
        offsets[parts[0]] = int(parts[1])
    return offsets


def _folder_name(trace: str, policy: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{trace}__{policy}")


def _mean(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v))]
    return sum(nums) / len(nums) if nums else None


def aggregate(rows: list[dict[str, Any]], policies: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        failed = sum(1 for r in mine if r.get("player_exit_code"))
        agg: dict[str, Any] = {"sessions": len(mine), "failed": failed}
        agg.update({key: _mean([r.get(key) for r in mine]) for key in AGGREGATED_KEYS})
        out[policy] = agg
    return out


def _write_results(out: Path, rows: list[dict[str, Any]], cfg: Config, started: float,
                   complete: bool) -> None:
    from netllm.chunklog import read_chunk_log, write_parquet, write_summary

    chunk_rows = []
    for r in rows:
        path = out / "sessions" / r["folder"] / "chunks.csv"
        if path.exists():
            chunk_rows += read_chunk_log(path)
    write_parquet(chunk_rows, out / "chunks.parquet")
    write_summary({"policies": aggregate(rows, cfg.policies), "sessions": rows, "complete": complete,
                   "traces_dir": str(cfg.traces), "video": str(cfg.video), "rtt_ms": cfg.rtt_ms,
                   "wall_s": time.monotonic() - started}, out)


def _session_row(summary: dict[str, Any], folder: str) -> dict[str, Any]:
    row = {key: summary.get(key) for key in SESSION_KEYS}
    row["folder"] = folder
    return row


def run(cfg: Config) -> int:
    from tqdm import tqdm

    from client.stream import Config as StreamConfig, load_session_video, resolve_config
    from emulation.live_session import emulated_session, trace_start_time
    from emulation.signals import terminate_raises
    from emulation.trace_schedule import start_time_for_index
    from traces.bandwidth import TraceError
    from traces.readers import read_trace_dir

    if not cfg.policies:
        raise CommandError("--policies names no policy")
    try:
        traces = read_trace_dir(cfg.traces, cfg.pattern)
    except TraceError as exc:
        raise CommandError(f"--traces: {exc}") from None
    traces = traces[: cfg.limit] if cfg.limit > 0 else traces
    offsets = read_start_offsets(cfg.start_offsets) if cfg.start_offsets else {}
    video = load_session_video(cfg.video)
    out = Path(cfg.out or Path("runs") / f"replay-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = dataclasses.replace(cfg, out=out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    jobs = [(t, p) for t in traces for p in cfg.policies]
    complete = False
    try:
        with terminate_raises(), tqdm(total=len(jobs), unit="session", desc="replay") as bar:
            for trace, policy in jobs:
                folder = _folder_name(trace.name, policy)
                session_out = out / "sessions" / folder
                bar.set_postfix_str(folder[-40:])
                if cfg.resume and (session_out / "summary.json").exists():
                    import json

                    rows.append(_session_row(json.loads((session_out / "summary.json").read_text()), folder))
                    bar.update(1)
                    continue
                if trace.name in offsets:
                    try:
                        start_s = start_time_for_index(trace, offsets[trace.name])
                    except ValueError as exc:
                        raise CommandError(f"--start-offsets: {exc}") from None
                else:
                    start_s = trace_start_time(trace, cfg.trace_offset_s)
                stream_cfg = resolve_config(StreamConfig(
                    video=cfg.video, policy=policy, out=session_out, trace=Path(trace.source or trace.name),
                    trace_offset_s=start_s - float(trace.time_s[0]), rtt_ms=cfg.rtt_ms,
                    decision_timeout_ms=cfg.decision_timeout_ms, buffer_s=cfg.buffer_s,
                    session_id=f"{policy}-{folder}"), video)
                save_config(stream_cfg, session_out)
                result = emulated_session(stream_cfg, video, trace, start_s)
                rows.append(_session_row(result.summary, folder))
                bar.update(1)
        complete = True
    finally:
        _write_results(out, rows, cfg, started, complete)
    _print_table(aggregate(rows, cfg.policies), out)
    return 0 if all(not r.get("player_exit_code") for r in rows) else 1


def _print_table(agg: dict[str, dict[str, Any]], out: Path) -> None:
    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    print(f"{'policy':<16} {'sessions':>8} {'failed':>6} {'mean QoE':>9} {'bitrate':>8} {'rebuf s':>8}")
    for policy, a in agg.items():
        print(f"{policy:<16} {a['sessions']:>8} {a['failed']:>6} {fmt(a['mean_qoe'], '9.3f')} "
              f"{fmt(a['mean_bitrate_kbps'], '8.0f')} {fmt(a['total_rebuffer_s'], '8.2f')}")
    print(f"results in {out}/ (summary.json, chunks.parquet, sessions/)")
