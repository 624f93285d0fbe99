"""Does the chunk-level simulator predict the live testbed? Same trace, video and policy in both.

    sudo .venv/bin/python benchmarks/bench_sim_vs_live.py --out runs/sim-vs-live

For each policy: one live session (`netllm stream --trace FILE --video DIR --policy P --rtt-ms R`, real
Chromium + dash.js + Mininet link; about 3.5 minutes for 48 chunks), then `emulation.abr_sim.simulate_session`
on the same trace file, the same chunk sizes (`netllm.video.load_video` of the same folder) and the same
policy, deterministic (no delay noise). Simulator knobs matched to the live link:
- `rtt_s` = the live `--rtt-ms` (netem delay, or the server's first-byte delay when the kernel has no netem);
- `payload_fraction` = `emulation.fidelity.payload_factor()` (1448/1514 = 0.956: TCP payload per byte the HTB
  shaper meters at MTU 1500 with TCP timestamps) instead of Pensieve's 0.95;
- trace start at offset 0 (sample index 1), as the live replay, which starts when the page has loaded;
- chunk 0: the live player asks the controller for chunk 0 too (empty history, buffer 0, last quality = its
  default 1), so the simulator runs with `default_quality=None` and chunk 0's observation carries last
  quality 1 (`FirstDecisionAdapter`);
- buffer: the live player (`--buffer-s 60`) requests the next chunk only once buffer + one chunk < 60 s,
  polling every 20 ms; the simulator sleeps while the buffer after an append exceeds its cap, so the
  matching cap is 60 s - chunk duration (56 s) with a 0.02 s drain step (`--sim-buffer-cap-s` overrides).
Not modelled by the simulator (and so the expected sources of disagreement): TCP slow start after idle
periods and per-request HTTP headers, browser/dash.js scheduling and decision latency, the live buffer
being measured by the media element rather than computed.

Prints a table per policy (live vs sim mean QoE with chunk 0 skipped, relative difference, share of chunks
with the same quality, total rebuffer, mean bitrate) and writes `summary.json` (flat keys per policy),
`config.json`, `trace.txt` (when generated) and `compare-<policy>.csv` (per chunk, side by side).
`--reuse-live` re-analyses existing `live-<policy>` folders without new live sessions. Needs root and Mininet
unless `--reuse-live`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from controller.policies import make_policy  # noqa: E402
from controller.policies.base import AbrPolicy  # noqa: E402
from emulation.abr_sim import SessionResult, SimConfig, simulate_session  # noqa: E402
from emulation.fidelity import payload_factor  # noqa: E402
from netllm.abr_state import AbrObservation  # noqa: E402
from netllm.chunklog import read_chunk_log, summarize  # noqa: E402
from netllm.paths import REPO_ROOT, default_video_dir  # noqa: E402
from netllm.video import Video, load_video  # noqa: E402
from traces.bandwidth import BandwidthTrace  # noqa: E402
from traces.generators import parse_steps, stepped  # noqa: E402
from traces.readers import read_trace, write_cooked  # noqa: E402

DEFAULT_STEPS = "3:30,1.2:30,4.5:30,0.8:30"
LIVE_DEFAULT_QUALITY = 1
"""`netllm stream --default-quality` default: the last quality the player reports before chunk 0."""
LIVE_BUFFER_S = 60.0
LIVE_POLL_S = 0.02
"""The live player's buffer target (`netllm stream --buffer-s`) and its buffer polling period."""
QOE_TARGET_REL = 0.10
SAME_QUALITY_TARGET = 0.5


class FirstDecisionAdapter(AbrPolicy):
    """Shows the policy chunk 0's observation as the live player sends it (last quality = the player's
    default), since the simulator's `default_quality=None` mode starts its observation at quality 0."""

    def __init__(self, inner: AbrPolicy, first_last_quality: int) -> None:
        self.inner = inner
        self.first_last_quality = first_last_quality
        self.name = getattr(inner, "name", type(inner).__name__)

    def reset(self) -> None:
        self.inner.reset()

    def select_quality(self, obs: AbrObservation) -> int:
        if obs.chunk_index == 0:
            obs.last_quality = self.first_last_quality
        return self.inner.select_quality(obs)


@dataclass
class PolicyComparison:
    policy: str
    chunks: int
    live_mean_qoe: float
    sim_mean_qoe: float
    qoe_rel_diff: float
    same_quality_frac: float
    live_rebuffer_s: float
    sim_rebuffer_s: float
    live_mean_bitrate_kbps: float
    sim_mean_bitrate_kbps: float
    live_startup_s: float
    sim_startup_s: float
    live_mean_download_s: float
    sim_mean_download_s: float
    live_first_request_trace_s: float
    """Trace time of the live chunk 0 request (MPD + init segments come first; the simulator's is 0)."""
    live_mean_request_gap_s: float
    """Mean time from one chunk's last byte to the next request (append, decision, scheduling, cap wait)."""
    sim_mean_request_gap_s: float

    @property
    def meets_targets(self) -> bool:
        return abs(self.qoe_rel_diff) <= QOE_TARGET_REL and self.same_quality_frac > SAME_QUALITY_TARGET


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", type=Path, default=default_video_dir(), help="prepared video folder")
    p.add_argument("--trace", type=Path, default=None,
                   help=f"trace file (default: a stepped trace {DEFAULT_STEPS} Mbps:s written to OUT)")
    p.add_argument("--policies", default="bba,robustmpc", help="comma-separated policy names")
    p.add_argument("--rtt-ms", type=float, default=80.0, help="round-trip time of the live link and the sim")
    p.add_argument("--out", type=Path, default=Path("runs/sim-vs-live"), help="output folder")
    p.add_argument("--reuse-live", action="store_true",
                   help="use existing OUT/live-<policy> sessions instead of running new ones")
    p.add_argument("--sim-buffer-cap-s", type=float, default=None,
                   help="simulator buffer cap (default: 60 s - chunk duration, the live player's rule)")
    p.add_argument("--live-timeout-s", type=float, default=900.0, help="limit per live session")
    return p.parse_args(argv)


def resolve_trace(args: argparse.Namespace, out: Path) -> Path:
    if args.trace is not None:
        return args.trace.resolve()
    path = out / "trace.txt"
    if not path.exists():
        write_cooked(stepped(parse_steps(DEFAULT_STEPS), name="sim-vs-live-stepped"), path)
    return path.resolve()


def run_live(policy: str, trace_path: Path, args: argparse.Namespace, live_dir: Path) -> None:
    """One `netllm stream --trace` session; its chunks.csv is what we compare."""
    if args.reuse_live and (live_dir / "chunks.csv").exists():
        return
    argv = [sys.executable, "-m", "netllm", "stream", "--trace", str(trace_path), "--trace-offset-s", "0",
            "--rtt-ms", f"{args.rtt_ms:g}", "--policy", policy, "--video", str(args.video.resolve()),
            "--default-quality", str(LIVE_DEFAULT_QUALITY), "--buffer-s", f"{LIVE_BUFFER_S:g}",
            "--out", str(live_dir)]
    print("live:", " ".join(argv), flush=True)
    proc = subprocess.run(argv, cwd=REPO_ROOT, timeout=args.live_timeout_s)
    if proc.returncode != 0:
        print(f"warning: live session for {policy} exited {proc.returncode}; comparing what it logged",
              file=sys.stderr)


def sim_config(rtt_ms: float, chunks: int, buffer_cap_s: float) -> SimConfig:
    return SimConfig(buffer_cap_s=buffer_cap_s, drain_step_s=LIVE_POLL_S, rtt_s=rtt_ms / 1000.0,
                     payload_fraction=payload_factor(), noise=False, default_quality=None,
                     chunk_count=chunks)


def run_sim(policy: str, trace: BandwidthTrace, video: Video, cfg: SimConfig) -> SessionResult:
    adapted = FirstDecisionAdapter(make_policy(policy), LIVE_DEFAULT_QUALITY)
    return simulate_session(adapted, trace, video, start_index=1, config=cfg, seed=0, log_rows=True,
                            policy_name=policy)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def mean_request_gap_s(rows: Sequence[dict[str, Any]]) -> float:
    return _mean([b["request_time_s"] - a["finish_time_s"] for a, b in zip(rows, rows[1:])])


def compare(policy: str, live_rows: list[dict[str, Any]], sim: SessionResult,
            live_summary: dict[str, Any]) -> PolicyComparison:
    n = min(len(live_rows), len(sim.qualities))
    live_rows = live_rows[:n]
    live = summarize(live_rows, policy, chunk_duration_s=sim.chunk_duration_s)
    sim_qoe = sim.qoe[1:n]
    sim_mean = _mean(sim_qoe)
    same = sum(1 for r, q in zip(live_rows, sim.qualities) if r["quality"] == q) / n if n else float("nan")
    rel = (live.mean_qoe - sim_mean) / abs(sim_mean) if sim_mean else float("nan")
    epoch, replay = live_summary.get("page_epoch_s"), live_summary.get("replay_start_wall_s")
    first_req = live_rows[0]["request_time_s"] - (replay - epoch) if epoch and replay else float("nan")
    assert sim.rows is not None
    return PolicyComparison(
        policy=policy, chunks=n, live_mean_qoe=live.mean_qoe, sim_mean_qoe=sim_mean, qoe_rel_diff=rel,
        same_quality_frac=same, live_rebuffer_s=live.total_rebuffer_s, sim_rebuffer_s=sum(sim.rebuffers_s[:n]),
        live_mean_bitrate_kbps=live.mean_bitrate_kbps, sim_mean_bitrate_kbps=_mean(sim.bitrates_kbps[:n]),
        live_startup_s=float(live_summary.get("startup_delay_s") or float("nan")),
        sim_startup_s=sim.startup_delay_s,
        live_mean_download_s=_mean([r["download_time_s"] for r in live_rows]),
        sim_mean_download_s=_mean(sim.download_times_s[:n]), live_first_request_trace_s=first_req,
        live_mean_request_gap_s=mean_request_gap_s(live_rows),
        sim_mean_request_gap_s=mean_request_gap_s(sim.rows[:n]))


def write_side_by_side(live_rows: list[dict[str, Any]], sim: SessionResult, path: Path) -> None:
    """Per chunk: quality, request time, download time, throughput, buffer, stall, live vs sim."""
    assert sim.rows is not None
    fields = ("quality", "request_time_s", "download_time_s", "throughput_kbps", "buffer_before_s",
              "buffer_after_s", "rebuffer_s", "qoe")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["chunk_index"] + [f"{side}_{f}" for f in fields for side in ("live", "sim")])
        for live, simr in zip(live_rows, sim.rows):
            w.writerow([live["chunk_index"]] + [_fmt(row[f]) for f in fields for row in (live, simr)])


def _fmt(x: Any) -> Any:
    return f"{x:.4f}" if isinstance(x, float) else x


def print_table(c: PolicyComparison) -> None:
    ok = "MEETS" if c.meets_targets else "MISSES"
    print(f"\n== {c.policy} ({c.chunks} chunks) — {ok} targets (|QoE diff| <= {QOE_TARGET_REL:.0%}, "
          f"same quality > {SAME_QUALITY_TARGET:.0%})")
    print(f"{'':28s}{'live':>10s}{'sim':>10s}")
    print(f"{'mean QoE (chunk 0 skipped)':28s}{c.live_mean_qoe:10.3f}{c.sim_mean_qoe:10.3f}"
          f"   rel diff {c.qoe_rel_diff:+.1%}")
    print(f"{'same quality (share)':28s}{c.same_quality_frac:20.1%}")
    print(f"{'total rebuffer (s)':28s}{c.live_rebuffer_s:10.2f}{c.sim_rebuffer_s:10.2f}")
    print(f"{'mean bitrate (kbps)':28s}{c.live_mean_bitrate_kbps:10.0f}{c.sim_mean_bitrate_kbps:10.0f}")
    print(f"{'startup delay (s)':28s}{c.live_startup_s:10.2f}{c.sim_startup_s:10.2f}")
    print(f"{'mean download time (s)':28s}{c.live_mean_download_s:10.3f}{c.sim_mean_download_s:10.3f}")
    print(f"{'mean finish->request gap (s)':28s}{c.live_mean_request_gap_s:10.3f}{c.sim_mean_request_gap_s:10.3f}")
    print(f"{'first request, trace time (s)':28s}{c.live_first_request_trace_s:10.3f}{0.0:10.3f}")


def _clean(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    video = load_video(args.video)
    trace_path = resolve_trace(args, out)
    trace = read_trace(trace_path)
    cap_s = args.sim_buffer_cap_s if args.sim_buffer_cap_s is not None else \
        LIVE_BUFFER_S - video.chunk_duration_s
    cfg = sim_config(args.rtt_ms, video.chunk_count, cap_s)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    config = {"video": str(args.video.resolve()), "trace": str(trace_path), "policies": policies,
              "rtt_ms": args.rtt_ms, "trace_offset_s": 0.0, "live_default_quality": LIVE_DEFAULT_QUALITY,
              "sim_config": asdict(cfg), "reuse_live": args.reuse_live}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    summary: dict[str, Any] = {"trace": str(trace_path), "video": str(args.video), "rtt_ms": args.rtt_ms,
                               "sim_payload_fraction": cfg.payload_fraction}
    for policy in policies:
        live_dir = out / f"live-{policy}"
        run_live(policy, trace_path, args, live_dir)
        rows = sorted(read_chunk_log(live_dir / "chunks.csv"), key=lambda r: r["chunk_index"])
        if not rows:
            print(f"{policy}: the live session logged no chunk", file=sys.stderr)
            continue
        live_summary = json.loads((live_dir / "summary.json").read_text())
        sim = run_sim(policy, trace, video, cfg)
        write_side_by_side(rows, sim, out / f"compare-{policy}.csv")
        c = compare(policy, rows, sim, live_summary)
        print_table(c)
        for key, value in asdict(c).items():
            if key != "policy":
                summary[f"{policy}_{key}"] = _clean(value)
        summary[f"{policy}_meets_targets"] = c.meets_targets
        summary[f"{policy}_live_rtt_method"] = live_summary.get("rtt_method")
        summary[f"{policy}_live_link_fidelity_median_abs_rel_error"] = live_summary.get(
            "link_fidelity_median_abs_rel_error")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
