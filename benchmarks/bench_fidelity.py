"""How faithfully the emulated link delivers a trace: per-chunk measured throughput vs. the trace's mean over
that chunk's download, under a stepped trace (default 1, 3, 0.5, 2 Mbps for 20 s each, looped).

    sudo .venv/bin/python benchmarks/bench_fidelity.py --mode browser --video DIR --out runs/fidelity
    sudo .venv/bin/python benchmarks/bench_fidelity.py --mode http --video DIR --out runs/fidelity-http

`browser`: a real `netllm stream --trace` session (Chromium + dash.js + controller); `http`: the
browser-free downloader `emulation.http_probe` over the same link and DASH server (quick, isolates the
link from the player). Overhead handling and time alignment are described in `emulation.fidelity`.
Prints the median and 90th-percentile absolute relative error and how late the replay loop applied the trace's
rate changes at worst, and writes `fidelity_summary.json`.
Needs root and Mininet.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from emulation.fidelity import chunk_fidelity, error_summary, write_fidelity_csv  # noqa: E402
from emulation.link import EmulatedLink, LinkConfig  # noqa: E402
from emulation.replay_loop import TraceReplayer  # noqa: E402
from emulation.signals import terminate_raises  # noqa: E402
from emulation.trace_schedule import segments_until  # noqa: E402
from netllm.paths import REPO_ROOT, default_video_dir  # noqa: E402
from traces.generators import parse_steps, stepped  # noqa: E402
from traces.readers import write_cooked  # noqa: E402


def run_http(args: argparse.Namespace, link_cfg: LinkConfig, trace: Any, out: Path) -> dict[str, Any]:
    from client.session import player_env
    from emulation.live_session import read_first_line

    link = EmulatedLink(dataclasses.replace(link_cfg, initial_rate_kbps=float(trace.bandwidth_kbps[1]),
                                            rtt_ms=args.rtt_ms))
    with terminate_raises(), link:
        delay = args.rtt_ms if link.rtt_method == "server-first-byte-delay" else 0.0
        argv = [sys.executable, "-m", "server.cli", "--media-root", str(args.video.resolve()),
                "--host", link.cfg.server_ip, "--port", "0", "--first-byte-delay-ms", f"{delay:g}"]
        server = link.popen("server", argv, "dash server", cwd=REPO_ROOT, env=player_env(),
                            stdout=subprocess.PIPE)
        url = read_first_line(server, 60).split()[1]
        replayer = TraceReplayer(trace, 0.0, link.set_rate_kbps, out / "rate_log.csv").begin()
        probe_csv = out / "probe.csv"
        subprocess.run(["ip", "netns", "exec", link.client_ns, sys.executable, "-m", "emulation.http_probe",
                        "--server", url, "--video", str(args.video.resolve()), "--out", str(probe_csv),
                        "--chunks", str(args.chunks)], cwd=REPO_ROOT, env=player_env(), check=True,
                       timeout=1800)
        replayer.stop()
        rtt_method = link.rtt_method
    with open(probe_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    replay_start = float(replayer.start_wall_s or 0.0)
    horizon = max(float(r["finish_time_s"]) for r in rows) - replay_start + 1
    # The probe logs unix times, so the "page epoch" is 0.
    results = chunk_fidelity(rows, segments_until(trace, 0.0, horizon), 0.0, replay_start)
    write_fidelity_csv(results, out / "fidelity.csv")
    return {**error_summary(results), "rtt_method": rtt_method, "rate_changes": replayer.changes,
            "replay_max_lateness_s": replayer.max_lateness_s}


def run_browser(args: argparse.Namespace, link_cfg: LinkConfig, trace_file: Path,
                out: Path) -> dict[str, Any]:
    from client.stream import Config, load_session_video, resolve_config
    from emulation.live_session import emulated_session, load_trace

    video = load_session_video(args.video)
    cfg = resolve_config(Config(video=args.video, policy=args.policy, out=out / "session", trace=trace_file,
                                rtt_ms=args.rtt_ms), video)
    trace = load_trace(trace_file)
    result = emulated_session(cfg, video, trace, float(trace.time_s[0]), link_cfg)
    s = result.summary
    with open(out / "session" / "fidelity.csv", newline="") as fh:
        errors = [abs(float(r["rel_error"])) for r in csv.DictReader(fh)]
    return {"chunks": len(errors), "median_abs_rel_error": s.get("link_fidelity_median_abs_rel_error"),
            "p90_abs_rel_error": s.get("link_fidelity_p90_abs_rel_error"), "rtt_method": s.get("rtt_method"),
            "player_exit_code": result.player_exit_code, "mean_qoe": s.get("mean_qoe"),
            "rate_changes": s.get("rate_changes"), "replay_max_lateness_s": s.get("replay_max_lateness_s")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("browser", "http"), default="browser")
    parser.add_argument("--video", type=Path, default=default_video_dir())
    parser.add_argument("--steps", default="1:20,3:20,0.5:20,2:20",
                        help="Mbps:seconds,... of the stepped trace")
    parser.add_argument("--out", type=Path,
                        default=Path("runs") / f"fidelity-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--policy", default="bba", help="browser mode: the ABR policy")
    parser.add_argument("--chunks", type=int, default=0,
                        help="http mode: chunks to fetch (0 = the whole video)")
    parser.add_argument("--rtt-ms", type=float, default=80.0)
    parser.add_argument("--queue-packets", type=int, default=LinkConfig.queue_packets)
    parser.add_argument("--queue-delay-ms", type=float, default=LinkConfig.queue_delay_ms)
    parser.add_argument("--cwnd-clamp-packets", type=int, default=None, help="None = the link's default")
    parser.add_argument("--congestion-control", default=LinkConfig.congestion_control)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    trace = stepped(parse_steps(args.steps), name="stepped")
    trace_file = write_cooked(trace, args.out / "stepped_trace.txt")
    link_cfg = LinkConfig(queue_packets=args.queue_packets, queue_delay_ms=args.queue_delay_ms,
                          cwnd_clamp_packets=args.cwnd_clamp_packets,
                          congestion_control=args.congestion_control)
    t0 = time.monotonic()
    if args.mode == "http":
        stats = run_http(args, link_cfg, trace, args.out)
    else:
        stats = run_browser(args, link_cfg, trace_file, args.out)
    stats.update(mode=args.mode, steps=args.steps, queue_packets=args.queue_packets,
                 queue_delay_ms=args.queue_delay_ms, cwnd_clamp_packets=args.cwnd_clamp_packets,
                 congestion_control=args.congestion_control, wall_s=time.monotonic() - t0)
    (args.out / "fidelity_summary.json").write_text(json.dumps(stats, indent=2) + "\n")
    median, p90 = (100 * (stats[k] or 0.0) for k in ("median_abs_rel_error", "p90_abs_rel_error"))
    print(f"{args.mode}: {stats['chunks']} chunks, median |rel error| {median:.2f}%, p90 {p90:.2f}% "
          f"(rtt via {stats.get('rtt_method')}; {stats['wall_s']:.0f} s)")
    # How late the trace's rate changes reached the link (the replay loop's worst wake-up delay).
    lateness_s = stats.get("replay_max_lateness_s")
    if lateness_s is not None:
        print(f"{stats.get('rate_changes')} rate changes, the latest {1000 * lateness_s:.1f} ms after its time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
