"""One live streaming session over the emulated link (`netllm stream --trace FILE`).

Where everything runs (see `emulation.link` for the topology):
- the decision service (`controller.runner.launch_controller`) in the root namespace, bound to the root end
  of the client's unshaped control veth, so decisions never cross the shaped link;
- the DASH server (`python -m server.cli`) in the server host, bound to the data address; when the kernel has
  no netem it applies the RTT as a per-request first-byte delay (`rtt_method` in the summary);
- the player (`python -m client.player`, Playwright + Chromium) in the client host;
- the replay loop (a thread here) re-rating the client's downlink at each trace timestamp. It starts when the
  page reports `page_loaded` (polled from events.jsonl every 20 ms): until then the link runs at
  PAGE_LOAD_RATE_KBPS so that Chromium's start and the page + dash.js download (about 1 MB) take no trace
  time, and trace time 0 is the session's start as in the chunk-level simulator.

Outputs in `--out`: those of a plain session (client.session.finalize_session: chunks.csv/.parquet,
events.jsonl, player.json/.log, requests.csv, decisions.jsonl, controller.log, summary.json, config.json) plus
`rate_log.csv` (every rate change, see emulation.replay_loop), `server.log`, `fidelity.csv` (per chunk:
measured vs. trace throughput, see emulation.fidelity) and these summary.json keys:
    trace, trace_file, trace_offset_s, trace_start_time_s   which trace and where in it the replay started
    rtt_ms, rtt_method                                      "netem" | "server-first-byte-delay" | "none"
    link_queue_packets, link_min_rate_kbit                  shaper settings
    replay_start_wall_s, page_epoch_s                       unix times of the replay start and the page's t0
                                                            (the replay starts a few tens of ms after t0)
    rate_changes, replay_max_lateness_s                     replay loop statistics
    link_fidelity_median_abs_rel_error, link_fidelity_p90_abs_rel_error
    emulation_setup_s                                       link + services start-up time
Whatever ends the session (its end, an error, Ctrl-C, SIGTERM, a crashed browser) the link and every process
are removed before returning; rows already in chunks.csv stay.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from emulation.fidelity import chunk_fidelity, error_summary, write_fidelity_csv
from emulation.link import EmulatedLink, LinkConfig, LinkError, run_cmd
from emulation.mininet_compat import MininetMissing
from emulation.replay_loop import TraceReplayer
from emulation.signals import terminate_raises
from emulation.trace_schedule import segments_until, start_time_for_offset
from netllm.chunklog import read_chunk_log
from netllm.cli import CommandError
from netllm.config import save_config
from netllm.paths import REPO_ROOT
from traces.bandwidth import BandwidthTrace, TraceError
from traces.readers import read_trace

SERVER_START_TIMEOUT_S = 60.0
PLAYER_GRACE_S = 30.0
PAGE_LOAD_RATE_KBPS = 1_000_000.0
"""Downlink rate while Chromium starts and loads the player page and dash.js (about 1 MB): the trace replay
starts when the page reports `page_loaded`, so trace time 0 is the session's start, as in the simulator."""
REPLAY_START_EVENT = "page_loaded"


@dataclass
class EmulatedResult:
    summary: dict[str, Any]
    player_exit_code: int


def run_emulated_session(cfg: Any) -> int:
    """Entry point of `netllm stream --trace` (cfg: client.stream.Config, already resolved)."""
    from client.session import format_summary
    from client.stream import load_session_video

    video = load_session_video(cfg.video)
    trace = load_trace(cfg.trace)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    start = trace_start_time(trace, cfg.trace_offset_s)
    result = emulated_session(cfg, video, trace, start)
    print(format_summary(result.summary, out))
    if result.player_exit_code != 0:
        print(f"netllm stream: the session failed (player exit {result.player_exit_code}): "
              f"{result.summary.get('error')}", file=sys.stderr)
        return 1
    return 0


def load_trace(path: Path) -> BandwidthTrace:
    try:
        return read_trace(path)
    except TraceError as exc:
        raise CommandError(f"--trace: {exc}") from None


def trace_start_time(trace: BandwidthTrace, offset_s: float) -> float:
    try:
        return start_time_for_offset(trace, offset_s)
    except ValueError as exc:
        raise CommandError(f"--trace-offset-s: {exc}") from None


def emulated_session(cfg: Any, video: Any, trace: BandwidthTrace, start_trace_time_s: float,
                     link_cfg: LinkConfig | None = None) -> EmulatedResult:
    """Run one session (cfg: a resolved client.stream.Config) and finalise its folder."""
    from client.session import finalize_session

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    link_cfg = dataclasses.replace(link_cfg or LinkConfig(), initial_rate_kbps=PAGE_LOAD_RATE_KBPS,
                                   rtt_ms=cfg.rtt_ms)
    link = EmulatedLink(link_cfg)
    info: dict[str, Any] = {}
    code = 1
    with terminate_raises():
        try:
            code = _run(cfg, video, trace, start_trace_time_s, link, info)
        except (LinkError, MininetMissing) as exc:
            raise CommandError(f"emulated link: {exc}") from None
        finally:
            link.down()
            if info.get("player_started"):  # a session that never started has nothing to summarise
                extra = _extra_summary(cfg, trace, start_trace_time_s, link, info)
                summary = finalize_session(out, policy=cfg.policy, trace=trace.name, video=str(cfg.video),
                                           network="emulated", extra=extra)
    return EmulatedResult(summary, code)


def _run(cfg: Any, video: Any, trace: BandwidthTrace, start_s: float, link: EmulatedLink,
         info: dict[str, Any]) -> int:
    from client.session import end_with_parent_hook, player_command, player_env
    from client.stream import player_spec

    out = Path(cfg.out)
    t0 = time.monotonic()
    link.up()
    controller_url = _controller(cfg, link, out, info)
    server_url = _start_server(cfg, link, out)
    spec = player_spec(cfg, video, server_url, controller_url, trace_name=trace.name)
    spec_path = spec.write(out / "player_spec.json")
    replayer = TraceReplayer(trace, start_s, link.set_rate_kbps, out / "rate_log.csv")
    info["replayer"] = replayer
    info["emulation_setup_s"] = time.monotonic() - t0
    with open(out / "player.log", "ab") as log:
        # Ends with this process even on SIGKILL (a session runs on its caller's main thread, and the
        # kernel's parent-death signal follows the thread that started the child).
        player = link.popen("client", player_command(spec_path), "player", cwd=REPO_ROOT, env=player_env(),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=end_with_parent_hook())
    info["player_started"] = True
    try:
        return _wait_player(player, replayer, EventWatcher(out / "events.jsonl"),
                            spec.session_timeout_s + PLAYER_GRACE_S)
    finally:
        replayer.stop()
        _stop_process(player)
        if info.get("controller") is not None:
            info["controller"].stop()


def _controller(cfg: Any, link: EmulatedLink, out: Path, info: dict[str, Any]) -> str:
    """The controller URL the player can reach over the unshaped control veth."""
    from client.stream import controller_extra_args
    from controller.runner import ControllerLaunchError, launch_controller

    if cfg.controller_url:
        host = urlparse(cfg.controller_url).hostname or ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise CommandError("with --trace, --controller-url must name an IP address of this machine"
                               ) from None
        if address.is_loopback:
            raise CommandError("with --trace, --controller-url cannot be a loopback address (the player runs "
                               "in its own network namespace); bind the controller to another local address")
        # Decisions to that address leave the client host by the unshaped control veth too.
        run_cmd(["ip", "netns", "exec", link.client_ns, "ip", "route", "add", f"{address}/32",
                 "via", link.control_ip])
        return cfg.controller_url
    try:
        controller = launch_controller(cfg.policy, host=link.control_ip, decision_log=out / "decisions.jsonl",
                                       stderr_path=out / "controller.log", extra_args=controller_extra_args(cfg))
    except ControllerLaunchError as exc:
        raise CommandError(f"the controller did not start: {exc}") from None
    info["controller"] = controller
    link.record_process(controller.pid, "controller")
    return controller.url


def _start_server(cfg: Any, link: EmulatedLink, out: Path) -> str:
    from client.session import end_with_parent_hook, player_env

    delay_ms = cfg.rtt_ms if link.rtt_method == "server-first-byte-delay" else 0.0
    argv = [sys.executable, "-m", "server.cli", "--media-root", str(Path(cfg.video).resolve()),
            "--host", link.cfg.server_ip, "--port", "0",
            "--request-log", str((out / "requests.csv").resolve()),
            "--first-byte-delay-ms", f"{delay_ms:g}"]
    with open(out / "server.log", "ab") as log:
        server = link.popen("server", argv, "dash server", cwd=REPO_ROOT, env=player_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                            preexec_fn=end_with_parent_hook())
    line = read_first_line(server, SERVER_START_TIMEOUT_S)
    if not line.startswith("serving http://"):
        server.kill()
        tail = (out / "server.log").read_text(errors="replace")[-1000:]
        raise CommandError(f"the DASH server did not start in the server host: {line!r} {tail}")
    return line.split()[1]


def read_first_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The first stdout line of `proc` (e.g. `serving http://...`), or what it wrote before exiting."""
    deadline = time.monotonic() + timeout_s
    buffer = b""
    stdout = proc.stdout
    assert stdout is not None
    while time.monotonic() < deadline and b"\n" not in buffer:
        ready, _, _ = select.select([stdout], [], [], 0.2)
        if ready:
            chunk = stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                break
            buffer += chunk
        elif proc.poll() is not None:
            break
    return buffer.decode(errors="replace").split("\n")[0].strip()


class EventWatcher:
    """Reads events.jsonl incrementally (complete lines only) and says when an event kind has appeared."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.seen: set[str] = set()

    def poll(self) -> set[str]:
        if not self.path.exists():
            return self.seen
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                kind = json.loads(line).get("kind")
            except (ValueError, AttributeError):
                continue
            if isinstance(kind, str):
                self.seen.add(kind)
        return self.seen


def _wait_player(player: subprocess.Popen, replayer: TraceReplayer, events: EventWatcher,
                 timeout_s: float) -> int:
    """Start the replay once the page has loaded, then wait for the player to end."""
    deadline = time.monotonic() + timeout_s
    while player.poll() is None:
        if not replayer.is_alive() and replayer.start_wall_s is None and REPLAY_START_EVENT in events.poll():
            replayer.begin()
        if replayer.error is not None:
            raise LinkError(f"replay loop failed: {replayer.error}")
        if time.monotonic() > deadline:
            return _stop_process(player)
        time.sleep(0.02 if replayer.start_wall_s is None else 0.2)
    return int(player.returncode)


def _stop_process(proc: subprocess.Popen, grace_s: float = 15.0) -> int:
    """SIGTERM (the player then writes player.json and closes Chromium), SIGKILL after `grace_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return int(proc.returncode)


def page_epoch_s(out: Path) -> float | None:
    """Unix time of the page's t0: the smallest (wall_ts - t_s) over page events (their delivery to Python
    only adds delay, so the minimum is the best estimate)."""
    from client.session import read_events

    offsets = [e["wall_ts"] - e["t_s"] for e in read_events(out)
               if isinstance(e.get("wall_ts"), (int, float)) and isinstance(e.get("t_s"), (int, float))]
    return min(offsets) if offsets else None


def _fidelity(out: Path, trace: BandwidthTrace, start_s: float, replay_start: float | None) -> dict[str, Any]:
    epoch = page_epoch_s(out)
    csv_path = out / "chunks.csv"
    if epoch is None or replay_start is None or not csv_path.exists():
        return {}
    rows = read_chunk_log(csv_path)
    if not rows:
        return {}
    last_finish_s = max(r["finish_time_s"] for r in rows if math.isfinite(r["finish_time_s"]))
    horizon = epoch + last_finish_s - replay_start
    segs = segments_until(trace, start_s, horizon + 1.0)
    results = chunk_fidelity(rows, segs, epoch, replay_start)
    write_fidelity_csv(results, out / "fidelity.csv")
    stats = error_summary(results)
    return {"page_epoch_s": epoch, "link_fidelity_median_abs_rel_error": stats["median_abs_rel_error"],
            "link_fidelity_p90_abs_rel_error": stats["p90_abs_rel_error"]}


def _extra_summary(cfg: Any, trace: BandwidthTrace, start_s: float, link: EmulatedLink,
                   info: dict[str, Any]) -> dict[str, Any]:
    replayer: TraceReplayer | None = info.get("replayer")
    replay_start = replayer.start_wall_s if replayer else None
    extra: dict[str, Any] = {
        "trace_file": str(cfg.trace), "trace_offset_s": float(cfg.trace_offset_s),
        "trace_start_time_s": start_s,
        "rtt_ms": float(cfg.rtt_ms), "rtt_method": link.rtt_method,
        "link_queue_packets": link.cfg.queue_packets, "link_min_rate_kbit": link.cfg.min_rate_kbit,
        "replay_start_wall_s": replay_start, "rate_changes": replayer.changes if replayer else 0,
        "replay_max_lateness_s": replayer.max_lateness_s if replayer else None,
        "emulation_setup_s": info.get("emulation_setup_s"),
        "controller_url": cfg.controller_url or "started",
    }
    try:
        extra.update(_fidelity(Path(cfg.out), trace, start_s, replay_start))
    except Exception as exc:  # the fidelity figures are a diagnostic; never lose the session summary for them
        extra["link_fidelity_error"] = f"{type(exc).__name__}: {exc}"
    return extra
