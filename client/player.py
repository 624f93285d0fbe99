"""The player process: Playwright drives Debian's Chromium through one session of the player page, logging
every chunk as it completes.

Run it as its own process (the emulated sessions start it inside a Mininet host namespace):

    python -m client.player --spec SPEC.json

SPEC.json is a JSON object (see `PlayerSpec`; unknown keys are an error):
    url                  player page URL with its query (mpd, controller, session_id, policy, timeout_ms,
                         default_quality, buffer_s; see client/static/player.js). Required.
    out_dir              folder for chunks.csv, events.jsonl, player.json. Required.
    session_id, policy, trace
                         copied into every chunks.csv row (the page's query decides what is sent to the
                         controller; `client.session.player_page_url` builds both from the same values)
    chunk_count          chunks expected (0 = whatever the video has, as the page reports it)
    session_timeout_s    the whole session, browser start to `ended` (default 900)
    progress_timeout_s   longest time without any chunk completing or playback ending (default 180; keep it
                         above the buffer target, since a full buffer means no chunk for that long)
    headless             default true
    extra_browser_args   further Chromium switches
    chromium             Chromium executable; "" = netllm.paths.chromium_executable()

Outputs, in out_dir:
    chunks.csv     netllm.chunklog.COLUMNS, one row per chunk appended and flushed as it completes;
                   qoe = netllm.qoe.chunk_qoe against the previous chunk (the first against the default
                   quality's bitrate)
    events.jsonl   every page event (kind + payload + wall_ts), console messages, and the process's own
                   notes; chunk events there also carry controller_latency_ms, fallback_reason, timings source
    player.json    written at the end whatever happened: startup_delay_s, ended, error, exit_code,
                   chunks_logged, chunk_count, total_stall_s, fallback_chunks, wall_s, browser, dashjs_version

Exit status: 0 the video played to its end with every chunk logged; 1 page/browser error or crash (or ended
with chunks missing); 2 bad spec; 3 timeout; 143 stopped by SIGTERM (or SIGINT: 130). Rows already written
stay intact in every case.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from netllm.chunklog import ChunkLogWriter
from netllm.paths import chromium_executable
from netllm.qoe import chunk_qoe

CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic",
)
"""Switches every session uses: root in a network namespace needs --no-sandbox; QUIC off keeps the transport
TCP as in Pensieve; no background traffic disturbs the measured link."""

EXIT_OK, EXIT_ERROR, EXIT_BAD_SPEC, EXIT_TIMEOUT = 0, 1, 2, 3
EXIT_SIGNAL_BASE = 128
POLL_S = 0.2


class SpecError(ValueError):
    """A spec file that cannot be used; the message names the file and the field."""


@dataclass
class PlayerSpec:
    url: str
    out_dir: str
    session_id: str = ""
    policy: str = ""
    trace: str = ""
    chunk_count: int = 0
    session_timeout_s: float = 900.0
    progress_timeout_s: float = 180.0
    headless: bool = True
    extra_browser_args: list[str] = field(default_factory=list)
    chromium: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


_SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "url": (str,), "out_dir": (str,), "session_id": (str,), "policy": (str,), "trace": (str,),
    "chunk_count": (int,), "session_timeout_s": (int, float), "progress_timeout_s": (int, float),
    "headless": (bool,), "extra_browser_args": (list,), "chromium": (str,),
}


def load_spec(path: Path) -> PlayerSpec:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read a JSON spec ({exc})") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: the spec must be a JSON object")
    unknown = sorted(set(doc) - set(_SPEC_TYPES))
    if unknown:
        raise SpecError(f"{path}: unknown field(s) {unknown}; known: {sorted(_SPEC_TYPES)}")
    for name in ("url", "out_dir"):
        if not doc.get(name):
            raise SpecError(f"{path}: field {name!r} is required")
    for name, value in doc.items():
        types = _SPEC_TYPES[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise SpecError(f"{path}: field {name!r} must be {'/'.join(t.__name__ for t in types)}, "
                            f"got {type(value).__name__}")
    if not all(isinstance(a, str) for a in doc.get("extra_browser_args", [])):
        raise SpecError(f"{path}: field 'extra_browser_args' must be a list of strings")
    spec = PlayerSpec(**doc)
    for name in ("session_timeout_s", "progress_timeout_s"):
        if not getattr(spec, name) > 0:
            raise SpecError(f"{path}: field {name!r} must be > 0")
    if spec.chunk_count < 0:
        raise SpecError(f"{path}: field 'chunk_count' must be >= 0")
    return spec


class _Stop(Exception):
    """Raised inside the session loop to end it with an exit status."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class SessionRecorder:
    """Turns page events into chunks.csv rows and events.jsonl lines, and keeps the session state."""

    def __init__(self, spec: PlayerSpec) -> None:
        self.spec = spec
        self.out_dir = Path(spec.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.writer = ChunkLogWriter(self.out_dir / "chunks.csv")
        self._events = open(self.out_dir / "events.jsonl", "a", buffering=1)
        self.ladder_kbps: list[float] = []
        self.default_quality = 0
        self.chunk_count = spec.chunk_count
        self.logged: set[int] = set()
        self.previous_kbps: float | None = None
        self.last_progress = time.monotonic()
        self.startup_delay_s: float | None = None
        self.total_stall_s = 0.0
        self.fallback_chunks = 0
        self.ended = False
        self.fatal_error: str | None = None
        self.dashjs_version = ""

    def note(self, kind: str, **payload: Any) -> None:
        doc = {"kind": kind, "wall_ts": time.time(), **payload}
        self._events.write(json.dumps(doc, default=str, allow_nan=False, separators=(",", ":")) + "\n")

    def on_event(self, kind: str, payload: Any) -> None:
        """Called by the page (through the Playwright binding) for every event it reports."""
        if not isinstance(payload, dict):
            payload = {"value": payload}
        payload = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                   for k, v in payload.items()}
        try:
            self.note(str(kind), **{k: v for k, v in payload.items() if k not in ("kind", "wall_ts")})
            handler = getattr(self, f"_on_{kind}", None)
            if handler is not None:
                handler(payload)
        except Exception as exc:  # a bad event must not kill the session silently: record and fail it
            self.fatal_error = f"handling page event {kind!r} failed: {type(exc).__name__}: {exc}"
            self.note("error", message=self.fatal_error, fatal=True)

    def _on_ready(self, p: dict) -> None:
        self.ladder_kbps = [float(x) for x in p["ladder_kbps"]]
        self.default_quality = int(p["default_quality"])
        self.dashjs_version = str(p.get("dashjs_version", ""))
        total = int(p["total_chunks"])
        if self.spec.chunk_count and self.spec.chunk_count != total:
            self.note("warning",
                      message=f"spec expects {self.spec.chunk_count} chunks, the video has {total}")
        self.chunk_count = self.spec.chunk_count or total

    def _on_startup(self, p: dict) -> None:
        self.startup_delay_s = float(p["startup_delay_s"])
        self.last_progress = time.monotonic()

    def _on_ended(self, p: dict) -> None:
        self.ended = True
        self.total_stall_s = float(p.get("total_stall_s") or 0.0)

    def _on_stall_end(self, p: dict) -> None:
        self.total_stall_s = float(p.get("total_stall_s") or self.total_stall_s)

    def _on_error(self, p: dict) -> None:
        if p.get("fatal"):
            self.fatal_error = str(p.get("message", "page error"))

    def _on_chunk(self, p: dict) -> None:
        index = int(p["chunk_index"])
        if index in self.logged:
            self.note("duplicate_chunk", chunk_index=index, message="chunk completed twice; first row kept")
            return
        bitrate = float(p["bitrate_kbps"])
        previous = self.previous_kbps
        if previous is None:
            previous = self.ladder_kbps[self.default_quality] if self.ladder_kbps else bitrate
        rebuffer = float(p["rebuffer_s"])
        row = {
            "session_id": self.spec.session_id, "policy": self.spec.policy, "trace": self.spec.trace,
            "chunk_index": index, "quality": int(p["quality"]), "bitrate_kbps": bitrate,
            "chunk_bytes": int(p["chunk_bytes"]), "qoe": chunk_qoe(bitrate, previous, rebuffer),
            "fallback": bool(p["fallback"]), "rebuffer_s": rebuffer,
        }
        for name in ("request_time_s", "first_byte_time_s", "finish_time_s", "download_time_s",
                     "throughput_kbps", "buffer_before_s", "buffer_after_s", "decision_latency_ms"):
            value = p.get(name)
            row[name] = float(value) if value is not None else float("nan")
        self.writer.write(row)
        self.logged.add(index)
        self.previous_kbps = bitrate
        self.fallback_chunks += int(row["fallback"])
        self.last_progress = time.monotonic()

    def all_chunks_logged(self) -> bool:
        return bool(self.chunk_count) and len(self.logged) >= self.chunk_count

    def close(self) -> None:
        self.writer.close()
        self._events.close()


class _Signals:
    """SIGTERM/SIGINT only set a flag: the loop notices within POLL_S and shuts the browser down itself."""

    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum


def _check(rec: SessionRecorder, spec: PlayerSpec, started: float, signals: _Signals,
           crashed: list[str]) -> None:
    if signals.received is not None:
        raise _Stop(EXIT_SIGNAL_BASE + signals.received, f"stopped by signal {signals.received}")
    if crashed:
        raise _Stop(EXIT_ERROR, crashed[0])
    if rec.fatal_error:
        raise _Stop(EXIT_ERROR, rec.fatal_error)
    if rec.ended:
        if rec.all_chunks_logged():
            raise _Stop(EXIT_OK, "")
        raise _Stop(EXIT_ERROR, f"playback ended with {len(rec.logged)} of {rec.chunk_count} chunks logged")
    now = time.monotonic()
    if now - started > spec.session_timeout_s:
        raise _Stop(EXIT_TIMEOUT, f"session did not end within {spec.session_timeout_s} s")
    if now - rec.last_progress > spec.progress_timeout_s:
        raise _Stop(EXIT_TIMEOUT, f"no chunk completed for {spec.progress_timeout_s} s")


def _drive(spec: PlayerSpec, rec: SessionRecorder, signals: _Signals,
           info: dict[str, Any]) -> tuple[int, str]:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    profile = Path(tempfile.mkdtemp(prefix="netllm-chromium-"))
    crashed: list[str] = []
    started = time.monotonic()
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(profile), executable_path=spec.chromium or str(chromium_executable()),
                headless=spec.headless, args=[*CHROMIUM_ARGS, *spec.extra_browser_args])
            try:
                info["browser"] = context.browser.version if context.browser else ""
                context.expose_function("netllmReport", rec.on_event)
                page = context.pages[0] if context.pages else context.new_page()
                page.on("console", lambda m: rec.note("console", level=m.type, text=m.text[:2000]))
                page.on("crash", lambda _p: crashed.append("the page crashed"))
                context.on("close", lambda _c: crashed.append("the browser closed"))
                rec.last_progress = time.monotonic()
                page.goto(spec.url, wait_until="commit", timeout=60_000)
                while True:
                    _check(rec, spec, started, signals, crashed)
                    page.wait_for_timeout(POLL_S * 1000)
            except _Stop as stop:
                return stop.code, stop.reason
            except PlaywrightError as exc:
                if signals.received is not None:
                    return EXIT_SIGNAL_BASE + signals.received, f"stopped by signal {signals.received}"
                return EXIT_ERROR, f"browser error: {exc.message.splitlines()[0] if exc.message else exc}"
            finally:
                try:
                    context.close()
                except Exception:  # the browser may already be gone (crash, killed process group)
                    pass
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def run_player(spec: PlayerSpec) -> int:
    """One session; returns the exit status (see the module docstring)."""
    signals = _Signals()
    signals.install()
    rec = SessionRecorder(spec)
    t0 = time.monotonic()
    info: dict[str, Any] = {"browser": ""}
    code, reason = EXIT_ERROR, "not started"
    rec.note("player_start", spec=spec.to_json())
    try:
        code, reason = _drive(spec, rec, signals, info)
    except Exception as exc:  # launching the browser failed, or a bug: still write player.json
        code, reason = EXIT_ERROR, f"{type(exc).__name__}: {exc}"
    finally:
        result = {
            "session_id": spec.session_id, "policy": spec.policy, "trace": spec.trace, "url": spec.url,
            "startup_delay_s": rec.startup_delay_s, "ended": rec.ended, "error": reason or None,
            "exit_code": code, "chunks_logged": len(rec.logged), "chunk_count": rec.chunk_count,
            "total_stall_s": rec.total_stall_s, "fallback_chunks": rec.fallback_chunks,
            "wall_s": time.monotonic() - t0, "browser": info.get("browser", ""),
            "dashjs_version": rec.dashjs_version,
        }
        rec.note("player_end", **result)
        rec.close()
        tmp = Path(spec.out_dir) / "player.json.tmp"
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        tmp.replace(Path(spec.out_dir) / "player.json")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.player", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, required=True, help="JSON spec of the session (see module doc)")
    ns = parser.parse_args(argv)
    try:
        spec = load_spec(ns.spec)
    except SpecError as exc:
        print(f"client.player: error: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    code = run_player(spec)
    if code != EXIT_OK:
        result = json.loads((Path(spec.out_dir) / "player.json").read_text())
        print(f"client.player: session failed (exit {code}): {result.get('error')}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
