"""Pieces of a live session that the loopback runner (`netllm stream`) and the emulated one share.

- `player_page_url(...)`: the player page URL with its query (what the page reads: client/static/player.js);
- `PlayerSpec` (re-exported from client.player), `player_command(spec_path)`: the argv that runs the player
  process (an emulated session hands it to `host.popen`), `start_player` / `run_player_process` locally;
- `finalize_session(out_dir, ...)`: reads `chunks.csv` + `player.json` (+ `events.jsonl`) of a finished (or
  killed) session and writes `summary.json` and `chunks.parquet`; returns the summary dict;
- `format_summary(summary)`: the short human-readable QoE summary.

summary.json is one flat object:
    session_id, policy, trace, video, network        what ran (network: "loopback" or the emulated link)
    chunks                                            chunk rows logged
    chunk_count                                       chunks the video has (as the player saw it)
    mean_qoe                                          mean per-chunk QoE, first chunk skipped (NetLLM)
    mean_qoe_all_chunks, mean_bitrate_kbps, total_rebuffer_s, rebuffer_ratio, switches
                                                      see netllm.chunklog.summarize
    startup_delay_s                                   session start (page script start) to first frame played
    fallback_chunks                                   chunks whose quality came from the page's fallback
    decision_latency_p50_ms, decision_latency_p99_ms  round trip of controller-answered decisions as the page
                                                      measured it (fallback chunks excluded); null if none
    controller_latency_p50_ms, controller_latency_p99_ms
                                                      the controller's own latency_ms, same chunks
    ended, player_exit_code, error                    how the player process ended (error null when fine)
    wall_s                                            player process wall time
Values that do not exist (no chunk, no playback) are null.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

import numpy as np

from client.player import PlayerSpec
from netllm.chunklog import read_chunk_log, summarize, write_parquet, write_summary
from netllm.paths import REPO_ROOT

__all__ = ["PlayerSpec", "player_page_url", "player_command", "start_player", "run_player_process",
           "finalize_session", "format_summary", "new_session_id", "read_events", "wait_for_rows"]

SPEC_NAME = "player_spec.json"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def new_session_id(policy: str) -> str:
    return f"{policy or 'session'}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def player_page_url(server_url: str, *, controller_url: str, session_id: str, policy: str,
                    decision_timeout_ms: float = 1000, default_quality: int = 1, buffer_s: float = 60.0,
                    mpd_path: str = "/media/manifest.mpd") -> str:
    """URL of the player page on the DASH server at `server_url` (http://HOST:PORT)."""
    query = urlencode({
        "mpd": mpd_path, "controller": controller_url, "session_id": session_id, "policy": policy,
        "timeout_ms": f"{decision_timeout_ms:g}", "default_quality": str(default_quality),
        "buffer_s": f"{buffer_s:g}",
    })
    return f"{server_url.rstrip('/')}/player/index.html?{query}"


def player_command(spec_path: Path, python: str | None = None) -> list[str]:
    """argv of the player process; run it with the repository root as working directory or on PYTHONPATH."""
    return [python or sys.executable, "-m", "client.player", "--spec", str(Path(spec_path).resolve())]


def player_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def end_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel send the child SIGTERM when this process dies (PR_SET_PDEATHSIG),
    so a killed `netllm stream` leaves no player and no Chromium behind (on SIGTERM the player closes its
    browser and writes player.json). None where prctl is missing (not Linux).

    prctl is looked up here, in the parent: between fork and exec (where the hook runs, with other threads
    possibly holding locks) the child only makes the call."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent_pid = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect: no signal would come
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def start_player(spec: PlayerSpec, log_path: Path | None = None) -> subprocess.Popen:
    """Write the spec into its out_dir and start the player process (stdout/stderr to `player.log`); it ends
    when this process ends, however that happens (see `end_with_parent_hook`)."""
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec.write(out_dir / SPEC_NAME)
    log = open(log_path or out_dir / "player.log", "ab")
    try:
        return subprocess.Popen(player_command(spec_path), cwd=REPO_ROOT, env=player_env(),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=end_with_parent_hook())
    finally:
        log.close()  # the child holds its own descriptor


def stop_player(proc: subprocess.Popen, grace_s: float = 15.0) -> int:
    """SIGTERM (the player closes Chromium and writes player.json), SIGKILL after `grace_s`; exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def run_player_process(spec: PlayerSpec, grace_s: float = 30.0) -> int:
    """Run the player to its end; its own timeouts bound it, `grace_s` more and it is terminated. Whatever
    interrupts the wait (Ctrl-C, a signal turned into an exception) stops the player before propagating."""
    proc = start_player(spec)
    try:
        return proc.wait(timeout=spec.session_timeout_s + grace_s)
    except subprocess.TimeoutExpired:
        return stop_player(proc)
    finally:
        stop_player(proc)  # no-op when it has ended; never leave a browser behind


def wait_for_rows(chunks_csv: Path, rows: int, timeout_s: float, proc: subprocess.Popen | None = None) -> int:
    """Wait until chunks.csv has at least `rows` rows (or the process ended, or the timeout); rows seen."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        if Path(chunks_csv).exists():
            seen = len(read_chunk_log(chunks_csv))
            if seen >= rows:
                return seen
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    return seen


def read_events(out_dir: Path) -> list[dict[str, Any]]:
    """events.jsonl as a list; a truncated last line (killed mid-write) is skipped."""
    path = Path(out_dir) / "events.jsonl"
    events = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def _percentile(values: Sequence[float], q: float) -> float | None:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else None


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def finalize_session(out_dir: Path, *, policy: str, trace: str = "", video: str = "",
                     network: str = "loopback", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write summary.json and chunks.parquet from the session's logs; returns the summary."""
    out_dir = Path(out_dir)
    csv_path = out_dir / "chunks.csv"
    rows = read_chunk_log(csv_path) if csv_path.exists() else []
    player_path = out_dir / "player.json"
    player = json.loads(player_path.read_text()) if player_path.exists() else {}
    events = read_events(out_dir)
    ready = next((e for e in events if e.get("kind") == "ready"), {})
    chunk_s = float(ready.get("chunk_duration_s") or 4.0)
    startup = player.get("startup_delay_s")
    base = summarize(rows, policy, startup_delay_s=float(startup) if startup is not None else float("nan"),
                     chunk_duration_s=chunk_s).to_json()
    answered = [r for r in rows if not r["fallback"]]
    answered_idx = {r["chunk_index"] for r in answered}
    ctrl_ms = [e.get("controller_latency_ms") for e in events
               if e.get("kind") == "chunk" and e.get("chunk_index") in answered_idx]
    summary: dict[str, Any] = {
        **base,
        "session_id": rows[0]["session_id"] if rows else player.get("session_id", ""),
        "trace": trace, "video": video, "network": network,
        "chunk_count": player.get("chunk_count") or ready.get("total_chunks"),
        "decision_latency_p50_ms": _percentile([r["decision_latency_ms"] for r in answered], 50),
        "decision_latency_p99_ms": _percentile([r["decision_latency_ms"] for r in answered], 99),
        "controller_latency_p50_ms": _percentile([v for v in ctrl_ms if isinstance(v, (int, float))], 50),
        "controller_latency_p99_ms": _percentile([v for v in ctrl_ms if isinstance(v, (int, float))], 99),
        "ended": bool(player.get("ended", False)),
        "player_exit_code": player.get("exit_code"),
        "error": player.get("error") if player else "the player wrote no player.json",
        "wall_s": player.get("wall_s"),
        **(extra or {}),
    }
    summary = {k: _finite_or_none(v) for k, v in summary.items()}
    write_summary(summary, out_dir)
    write_parquet(rows, out_dir / "chunks.parquet")
    return summary


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_summary(summary: dict[str, Any], out_dir: Path | None = None) -> str:
    lines = [
        f"policy {summary['policy']} | {summary['chunks']}/{summary.get('chunk_count') or '?'} chunks | "
        f"network {summary['network']}" + (f" | trace {summary['trace']}" if summary.get("trace") else ""),
        f"  mean QoE {_fmt(summary['mean_qoe'], '.3f')} (first chunk skipped; all chunks "
        f"{_fmt(summary['mean_qoe_all_chunks'], '.3f')})",
        f"  mean bitrate {_fmt(summary['mean_bitrate_kbps'], '.0f')} kbps | rebuffering "
        f"{_fmt(summary['total_rebuffer_s'], '.2f')} s | "
        f"startup {_fmt(summary['startup_delay_s'], '.2f')} s | "
        f"switches {summary['switches']} | fallback chunks {summary['fallback_chunks']}",
        f"  decision latency p50 {_fmt(summary['decision_latency_p50_ms'], '.1f')} ms, "
        f"p99 {_fmt(summary['decision_latency_p99_ms'], '.1f')} ms (page round trip)",
    ]
    if summary.get("error"):
        lines.append(f"  session error: {summary['error']}")
    if out_dir is not None:
        names = sorted(p.name for p in Path(out_dir).iterdir() if p.is_file())
        lines.append(f"  logs in {out_dir}/: {', '.join(names)}")
    return "\n".join(lines)
