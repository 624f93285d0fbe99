"""`netllm stream` on loopback without a browser: its option and policy checks, and what a signal does to it.

The signal tests run the real command (DASH server, controller process, the player's process handling) with a
stand-in player: a small script that logs one chunk row and then waits, handling SIGTERM as the real player
does (player.json written, then exit 128 + signal). So they check the command's side in seconds: SIGTERM
still writes summary.json and chunks.parquet and ends the player; SIGKILL of the command ends the player too.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest

from client.stream import Config, check_policy, resolve_config
from netllm.cli import CommandError
from netllm.paths import REPO_ROOT
from netllm.video import load_video_json

FAKE_PLAYER = '''
import json, os, signal, sys, time
from pathlib import Path
from client.player import load_spec
from netllm.chunklog import ChunkLogWriter

spec = load_spec(Path(sys.argv[1]))
out = Path(spec.out_dir)

def stop(signum, frame):
    doc = {"session_id": spec.session_id, "exit_code": 128 + signum, "ended": False,
           "error": f"stopped by signal {signum}", "chunk_count": 3}
    (out / "player.json").write_text(json.dumps(doc))
    (out / "fake_player_signal").write_text(str(signum))
    os._exit(128 + signum)

signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
writer = ChunkLogWriter(out / "chunks.csv")
writer.write({"session_id": spec.session_id, "policy": spec.policy, "trace": "", "chunk_index": 0,
              "quality": 1, "bitrate_kbps": 750.0, "chunk_bytes": 375000, "request_time_s": 0.1,
              "first_byte_time_s": 0.2, "finish_time_s": 0.5, "download_time_s": 0.4,
              "throughput_kbps": 7500.0, "buffer_before_s": 0.0, "buffer_after_s": 4.0, "rebuffer_s": 0.0,
              "decision_latency_ms": 3.0, "fallback": False, "qoe": 0.75})
writer.close()
(out / "fake_player.pid").write_text(str(os.getpid()))
while True:
    time.sleep(0.1)
'''

RUN_WITH_FAKE_PLAYER = '''
import sys
import client.session as session

fake = sys.argv[1]
session.player_command = lambda spec_path, python=None: [sys.executable, fake, str(spec_path)]
from netllm.cli import main

sys.exit(main(sys.argv[2:]))
'''


@pytest.fixture
def video_dir(tmp_path: Path) -> Path:
    """video.json only: enough for the command; the stand-in player fetches nothing."""
    folder = tmp_path / "video"
    folder.mkdir()
    (folder / "video.json").write_text(json.dumps({
        "ladder_kbps": [300, 750, 1200], "chunk_duration_s": 4.0, "chunk_count": 3,
        "chunk_sizes_bytes": [[150000] * 3, [375000] * 3, [600000] * 3], "mpd": "manifest.mpd",
        "representations": ["0", "1", "2"]}))
    return folder


@pytest.fixture
def fake_controller() -> Iterator[str]:
    """A running 'controller' that only lists its policies (GET /v1/policies)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = json.dumps({"default": "bba", "available": ["bba", "custom"], "loaded": ["bba"]}).encode()
            self.send_response(200 if self.path == "/v1/policies" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _stream(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netllm", "stream", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_unknown_policy_is_refused_with_exit_2(video_dir: Path, tmp_path: Path) -> None:
    done = _stream("--video", str(video_dir), "--policy", "nosuchpolicy", "--out", str(tmp_path / "o"))
    assert done.returncode == 2, done.stderr
    assert "unknown policy 'nosuchpolicy'; known: bba" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_policy_is_checked_against_a_running_controller(video_dir: Path, tmp_path: Path,
                                                        fake_controller: str) -> None:
    done = _stream("--video", str(video_dir), "--policy", "nosuchpolicy", "--controller-url", fake_controller,
                   "--out", str(tmp_path / "o"))
    assert done.returncode == 2, done.stderr
    assert f"the controller at {fake_controller} has no policy 'nosuchpolicy'; it serves: bba, custom" \
        in done.stderr
    check_policy(Config(policy="custom", controller_url=fake_controller))  # its own policies are fine
    with pytest.raises(CommandError, match="cannot list its policies"):
        check_policy(Config(policy="bba", controller_url=fake_controller + "/nothing-here"))


@pytest.mark.parametrize(("option", "value"), [
    ("rtt_ms", -10.0), ("rtt_ms", math.nan), ("rtt_ms", math.inf), ("rtt_ms", 1e9),
    ("decision_timeout_ms", math.nan), ("decision_timeout_ms", math.inf), ("buffer_s", math.nan),
    ("buffer_s", math.inf), ("trace_offset_s", math.nan), ("session_timeout_s", math.nan),
])
def test_numbers_must_be_finite_and_in_range(option: str, value: float, video_dir: Path) -> None:
    flag = "--" + option.replace("_", "-")
    with pytest.raises(CommandError, match=f"^{flag} must be a finite number"):
        resolve_config(Config(video=video_dir, **{option: value}), load_video_json(video_dir))


def test_rtt_out_of_range_exits_2(video_dir: Path, tmp_path: Path) -> None:
    done = _stream("--video", str(video_dir), "--rtt-ms", "inf", "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert "--rtt-ms must be a finite number >= 0 and <= 10000, got inf" in done.stderr


# --- signals ------------------------------------------------------------------------------------------------

def _start_stream(tmp_path: Path, video_dir: Path) -> tuple[subprocess.Popen, Path]:
    fake, runner = tmp_path / "fake_player.py", tmp_path / "run_stream.py"
    fake.write_text(FAKE_PLAYER)
    runner.write_text(RUN_WITH_FAKE_PLAYER)
    out = tmp_path / "session"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, str(runner), str(fake), "stream", "--video", str(video_dir),
                             "--policy", "bba", "--out", str(out)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (out / "fake_player.pid").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the stand-in player did not start: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    return proc, out


def _ended(pid: int, timeout_s: float) -> bool:
    """The process is gone or a zombie (ended, not yet reaped) within the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def _kill_if_alive(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_sigterm_stops_the_player_and_still_writes_the_summary(tmp_path: Path, video_dir: Path) -> None:
    proc, out = _start_stream(tmp_path, video_dir)
    player_pid = int((out / "fake_player.pid").read_text())
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM, proc.communicate()[1][-3000:]
        assert _ended(player_pid, 10), "the player outlived `netllm stream`"
    finally:
        _kill_if_alive(player_pid)
    assert (out / "fake_player_signal").read_text() == str(signal.SIGTERM)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chunks"] == 1 and summary["player_exit_code"] == 128 + signal.SIGTERM
    assert summary["network"] == "loopback" and summary["controller_url"] == "started"
    assert len(pd.read_parquet(out / "chunks.parquet")) == 1


def test_the_player_ends_when_the_command_is_killed(tmp_path: Path, video_dir: Path) -> None:
    proc, out = _start_stream(tmp_path, video_dir)
    player_pid = int((out / "fake_player.pid").read_text())
    try:
        proc.kill()  # SIGKILL: nothing in the command runs; the kernel tells the player (PR_SET_PDEATHSIG)
        proc.wait(timeout=30)
        assert _ended(player_pid, 10), "the player outlived a killed `netllm stream`"
    finally:
        _kill_if_alive(player_pid)
        proc.communicate()
    assert (out / "fake_player_signal").read_text() == str(signal.SIGTERM)  # a clean stop: player.json
    assert (out / "chunks.csv").exists()
