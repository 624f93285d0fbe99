"""`netllm stream`: play a prepared video once in headless Chromium and log per-chunk QoE.

Without `--trace` everything runs on loopback: the DASH server (in this process, `server.runner`), the
decision service (a child process, `controller.runner.launch_controller`, unless `--controller-url` names a
running one) and the player process (`python -m client.player`). With `--trace FILE` the session runs over an
emulated link that replays the trace (`emulation.live_session.run_emulated_session(cfg)`).

Outputs in `--out` (default runs/stream-<timestamp>):
    config.json        the resolved options (session id and out folder included)
    chunks.csv         one row per chunk as it completes (netllm.chunklog.COLUMNS); chunks.parquet at the end
    events.jsonl       page events (decisions, stalls, start-up, end, errors, console) and player notes
    player.json        how the player process ended; player.log its stderr; player_spec.json its spec
    requests.csv       the DASH server's request log (server.request_log columns)
    decisions.jsonl    the controller's decision log (when this command started the controller);
                       controller.log its stderr
    summary.json       flat session summary; keys documented in client.session
Exit status: 0 when the whole video played with every chunk logged, 1 when the session failed (the logs and
the summary of what was played are still written), 2 for bad options (an unknown --policy included: checked
against the policy registry, or with --controller-url against that controller's GET /v1/policies).
SIGTERM/SIGHUP (143/129) or Ctrl-C (130) stop the player, which closes Chromium, and still write
summary.json and chunks.parquet of what was played; the player also ends if this process is killed outright.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from client.session import PlayerSpec, finalize_session, format_summary, new_session_id, player_page_url, \
    run_player_process
from netllm.cli import CommandError
from netllm.config import arg, save_config
from netllm.paths import default_video_dir
from netllm.video import Video, VideoError, load_video_json


@dataclass
class Config:
    video: Path = arg(default_video_dir(), help="prepared video folder (MPD, segments, video.json)")
    policy: str = arg("robustmpc", help="ABR policy the controller runs for this session")
    policy_options: str = arg("", help='JSON object of constructor options for --policy in the controller '
                              'this command starts, e.g. \'{"checkpoint": "runs/abr/best"}\' for netllm '
                              '(not with --controller-url)')
    controller_url: str = arg("", help="use this running controller (http://HOST:PORT), do not start one")
    out: Path | None = arg(None, help="output folder (default runs/stream-<timestamp>)")
    decision_timeout_ms: float = arg(1000.0, help="deadline of each controller decision; later = fallback")
    session_id: str = arg("", help="session id sent with every observation (default: generated)")
    default_quality: int = arg(1, help="quality assumed before the first chunk (Pensieve: 1)")
    buffer_s: float = arg(60.0, help="buffer target and maximum in seconds (Pensieve: 60)")
    session_timeout_s: float = arg(0.0, help="give up after this long (0 = 3 x video duration + 120 s)")
    trace: Path | None = arg(None, help="bandwidth trace replayed on an emulated link (root + Mininet)")
    trace_offset_s: float = arg(0.0, help="start the trace at this offset (seconds)")
    rtt_ms: float = arg(80.0, help="round-trip time of the emulated link (ms)")


POLICY_QUERY_TIMEOUT_S = 10.0


def check_number(option: str, value: float, low: float, high: float = math.inf,
                 low_inclusive: bool = True) -> None:
    """Refuse a NaN, an infinity or a value outside [low, high] (or (low, high]) as a user error."""
    inside = (low <= value if low_inclusive else low < value) and value <= high
    if not (math.isfinite(value) and inside):
        lower = f">= {low:g}" if low_inclusive else f"> {low:g}"
        upper = f" and <= {high:g}" if math.isfinite(high) else ""
        raise CommandError(f"{option} must be a finite number {lower}{upper}, got {value}")


def check_link_options(rtt_ms: float, decision_timeout_ms: float, buffer_s: float) -> None:
    """The options `netllm stream` and `netllm replay` share, checked before anything starts."""
    from emulation.link import MAX_RTT_MS

    check_number("--rtt-ms", rtt_ms, 0.0, MAX_RTT_MS)
    check_number("--decision-timeout-ms", decision_timeout_ms, 0.0, low_inclusive=False)
    check_number("--buffer-s", buffer_s, 0.0, low_inclusive=False)


def check_policy_names(names: list[str]) -> None:
    """Every name must be a policy of the controller's registry (the controller this command starts uses it):
    otherwise the page would get HTTP 400 for every chunk and silently play its fallback."""
    from controller.policies import OFFLINE_POLICIES, available_policies

    known = available_policies()
    for name in names:
        if name in OFFLINE_POLICIES:
            raise CommandError(f"policy {name!r} needs the whole trace ahead of time: `netllm sim` only")
        if name not in known:
            raise CommandError(f"unknown policy {name!r}; known: {', '.join(known)}")


def controller_policies(url: str, timeout_s: float = POLICY_QUERY_TIMEOUT_S) -> list[str]:
    """The policies a running controller serves (its GET /v1/policies)."""
    query = f"{url.rstrip('/')}/v1/policies"
    try:
        with urllib.request.urlopen(query, timeout=timeout_s) as resp:
            doc = json.loads(resp.read())
    except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors
        raise CommandError(f"--controller-url: cannot list its policies ({query}): {exc}") from None
    available = doc.get("available") if isinstance(doc, dict) else None
    if not isinstance(available, list):
        raise CommandError(f"--controller-url: {query} did not answer a policy list")
    return [str(name) for name in available]


def check_policy(cfg: Config) -> None:
    """--policy must be one the controller will serve: the registry's, or the running controller's."""
    if not cfg.controller_url:
        check_policy_names([cfg.policy])
        return
    available = controller_policies(cfg.controller_url)
    if cfg.policy not in available:
        raise CommandError(f"the controller at {cfg.controller_url} has no policy {cfg.policy!r}; "
                           f"it serves: {', '.join(available)}")


def load_session_video(path: Path) -> Video:
    try:
        return load_video_json(Path(path))
    except VideoError as exc:
        raise CommandError(f"--video: {exc}; prepare one with `netllm prepare-video --out {path}`") from None


def _check_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise CommandError(f"--controller-url must look like http://HOST:PORT, got {url!r}")


def _check_policy_options(cfg: Config) -> None:
    """Refuse bad options here (exit 2) rather than as a controller start-up failure."""
    if not cfg.policy_options.strip():
        return
    if cfg.controller_url:
        raise CommandError("--policy-options configures the controller this command starts; "
                           "a running one (--controller-url) keeps its own options")
    try:
        options = json.loads(cfg.policy_options)
    except ValueError as exc:
        raise CommandError(f"--policy-options is not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise CommandError("--policy-options must be a JSON object")


def controller_extra_args(cfg: Config) -> list[str]:
    """Further `serve-controller` options for the controller started for this session."""
    return ["--policy-options", cfg.policy_options] if cfg.policy_options.strip() else []


def resolve_config(cfg: Config, video: Video) -> Config:
    """Check the options and fill the defaults that depend on the moment or the video."""
    check_link_options(cfg.rtt_ms, cfg.decision_timeout_ms, cfg.buffer_s)
    check_number("--trace-offset-s", cfg.trace_offset_s, 0.0)
    check_number("--session-timeout-s", cfg.session_timeout_s, 0.0)
    if cfg.buffer_s < 2 * video.chunk_duration_s:
        raise CommandError(f"--buffer-s must be at least two chunks ({2 * video.chunk_duration_s:g} s)")
    if not 0 <= cfg.default_quality < video.levels:
        raise CommandError(f"--default-quality must be in 0..{video.levels - 1}")
    if cfg.controller_url:
        _check_url(cfg.controller_url)
    _check_policy_options(cfg)
    out = cfg.out or Path("runs") / f"stream-{time.strftime('%Y%m%d-%H%M%S')}"
    timeout = cfg.session_timeout_s or 3 * video.chunk_count * video.chunk_duration_s + 120
    return dataclasses.replace(cfg, out=Path(out), session_id=cfg.session_id or new_session_id(cfg.policy),
                               session_timeout_s=float(timeout))


def player_spec(cfg: Config, video: Video, server_url: str, controller_url: str,
                trace_name: str = "") -> PlayerSpec:
    """The player-process spec of a resolved config (shared with the emulated session)."""
    url = player_page_url(server_url, controller_url=controller_url, session_id=cfg.session_id,
                          policy=cfg.policy, decision_timeout_ms=cfg.decision_timeout_ms,
                          default_quality=cfg.default_quality, buffer_s=cfg.buffer_s)
    return PlayerSpec(url=url, out_dir=str(Path(cfg.out).resolve()), session_id=cfg.session_id,
                      policy=cfg.policy, trace=trace_name, chunk_count=video.chunk_count,
                      session_timeout_s=cfg.session_timeout_s,
                      progress_timeout_s=max(180.0, cfg.buffer_s + 120.0))


def run_loopback_session(cfg: Config, video: Video) -> tuple[dict[str, Any], int]:
    """Server, controller and player on loopback; returns (summary, player exit status).

    SIGTERM/SIGHUP (and Ctrl-C) raise here as in the emulated session (`emulation.signals`): the player is
    stopped (it writes player.json), the services are stopped, and the session is still finalised
    (summary.json, chunks.parquet) before the exception ends the command."""
    from controller.runner import ControllerLaunchError, launch_controller
    from emulation.signals import terminate_raises
    from server.app import ServerConfig
    from server.runner import BackgroundServer

    out = Path(cfg.out)
    controller = None
    player_started = False
    with terminate_raises():
        try:
            with BackgroundServer(ServerConfig(media_root=Path(cfg.video).resolve(),
                                               request_log=out / "requests.csv")) as server:
                controller_url = cfg.controller_url
                if not controller_url:
                    try:
                        controller = launch_controller(cfg.policy, decision_log=out / "decisions.jsonl",
                                                       stderr_path=out / "controller.log",
                                                       extra_args=controller_extra_args(cfg))
                    except ControllerLaunchError as exc:
                        raise CommandError(f"the controller did not start: {exc}") from None
                    controller_url = controller.url
                player_started = True
                code = run_player_process(player_spec(cfg, video, server.url, controller_url))
        finally:
            if controller is not None:
                controller.stop()
            if player_started:  # also when stopped by a signal: what was played is summarised
                summary = _finalize(cfg)
    return summary, code


def _finalize(cfg: Config) -> dict[str, Any]:
    return finalize_session(Path(cfg.out), policy=cfg.policy, video=str(cfg.video), network="loopback",
                            extra={"controller_url": cfg.controller_url or "started"})


def run_emulated(cfg: Config) -> int:
    try:
        from emulation.live_session import run_emulated_session
    except ImportError:
        raise CommandError("emulated links not available (emulation.live_session is missing)") from None
    return int(run_emulated_session(cfg) or 0)


def run(cfg: Config) -> int:
    video = load_session_video(cfg.video)
    cfg = resolve_config(cfg, video)
    check_policy(cfg)
    # Never mix two sessions' rows in one log: chunks.csv is appended to as the session runs.
    if (Path(cfg.out) / "chunks.csv").exists():
        raise CommandError(f"{cfg.out} already holds a session (chunks.csv); choose another --out")
    if cfg.trace is not None:
        return run_emulated(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    summary, code = run_loopback_session(cfg, video)
    print(format_summary(summary, out))
    if code != 0:
        print(f"netllm stream: the session failed (player exit {code}): {summary.get('error')}",
              file=sys.stderr)
        return 1
    return 0
