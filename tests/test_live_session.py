"""Acceptance tests of the live stack: real Chromium + dash.js, the real DASH server and the real controller
process, on loopback. One 8-chunk video is prepared once; each session plays it in real time (about 35 s).

(a) `netllm stream` with bba and robustmpc: every chunk logged once, every quality is the controller's answer
    for that chunk (its decision log), nothing fell back, and all log files have their columns/keys;
(b) the controller is SIGKILLed after two chunks: playback finishes on the page's fallback, every chunk is
    logged, the later ones marked fallback;
(c) one chunk's response is delayed past the buffer: the stall is measured and charged to that chunk; then
    the player process gets SIGTERM mid-session: it stops, the rows written so far stay intact.
(b) and (c) use a small buffer target (8 s) so that chunks are fetched in step with playback instead of all
in the first second, which leaves time to act between chunks.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from client.session import finalize_session, read_events, start_player, wait_for_rows
from client.stream import Config, player_spec, resolve_config, run
from netllm.chunklog import COLUMNS, read_chunk_log
from netllm.paths import REPO_ROOT, chromium_executable
from netllm.qoe import chunk_qoe
from netllm.video import load_video_json

pytestmark = pytest.mark.browser

CHUNKS = 8
SUMMARY_KEYS = {
    "session_id", "policy", "trace", "video", "network", "chunks", "chunk_count", "mean_qoe",
    "mean_qoe_all_chunks", "mean_bitrate_kbps", "total_rebuffer_s", "rebuffer_ratio", "startup_delay_s",
    "switches", "fallback_chunks", "decision_latency_p50_ms", "decision_latency_p99_ms",
    "controller_latency_p50_ms", "controller_latency_p99_ms", "ended", "player_exit_code", "error", "wall_s",
}
SMALL_LADDER = "160x90,192x108,256x144,320x180,384x216,448x252"


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8-chunk, 6-level video from `netllm prepare-video` (small pictures and the fastest preset keep the
    encoding to seconds; the bitrates, hence the chunk sizes, are the real ladder's)."""
    if not chromium_executable().exists():
        pytest.skip(f"Chromium not found at {chromium_executable()}")
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    out = tmp_path_factory.mktemp("live") / "video"
    cmd = [sys.executable, "-m", "netllm", "prepare-video", "--chunks", str(CHUNKS), "--out", str(out),
           "--preset", "ultrafast", "--noise", "0", "--resolutions", SMALL_LADDER]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def check_chunk_log(out: Path) -> list[dict]:
    """chunks.csv has the shared columns, one row per chunk 0..7 in order, and each row's QoE is right."""
    header = (out / "chunks.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == COLUMNS
    rows = read_chunk_log(out / "chunks.csv")
    assert [r["chunk_index"] for r in rows] == list(range(CHUNKS))
    ready = next(e for e in read_events(out) if e["kind"] == "ready")
    previous = ready["ladder_kbps"][ready["default_quality"]]
    for r in rows:
        assert r["bitrate_kbps"] == ready["ladder_kbps"][r["quality"]]
        assert r["qoe"] == pytest.approx(chunk_qoe(r["bitrate_kbps"], previous, r["rebuffer_s"]), abs=1e-5)
        assert r["request_time_s"] <= r["first_byte_time_s"] <= r["finish_time_s"]
        assert r["chunk_bytes"] > 0 and r["throughput_kbps"] > 0
        previous = r["bitrate_kbps"]
    return rows


def decision_log(out: Path, session_id: str) -> list[dict]:
    lines = (out / "decisions.jsonl").read_text().splitlines()
    return [d for d in map(json.loads, lines) if d.get("session_id") == session_id]


@pytest.mark.parametrize("policy", ["bba", "robustmpc"])
def test_stream_plays_every_chunk_at_the_controllers_quality(video_dir: Path, tmp_path: Path,
                                                             policy: str) -> None:
    out = tmp_path / "run"
    assert run(Config(video=video_dir, policy=policy, out=out, session_id=f"t-{policy}")) == 0

    rows = check_chunk_log(out)
    assert not any(r["fallback"] for r in rows)
    assert {r["session_id"] for r in rows} == {f"t-{policy}"} and {r["policy"] for r in rows} == {policy}

    decisions = decision_log(out, f"t-{policy}")
    assert sorted(d["chunk_index"] for d in decisions) == list(range(CHUNKS)), "one decision per chunk"
    by_chunk = {d["chunk_index"]: d for d in decisions}
    assert [r["quality"] for r in rows] == [by_chunk[i]["quality"] for i in range(CHUNKS)]
    assert {d["policy"] for d in decisions} == {policy}

    # The scheduler waited for each answer: no chunk was requested before its decision arrived.
    events = read_events(out)
    answered_at = {e["chunk_index"]: e["t_s"] for e in events if e["kind"] == "decision"}
    assert not any(e["kind"] == "warning" for e in events), [e for e in events if e["kind"] == "warning"]
    for r in rows:
        assert r["request_time_s"] >= answered_at[r["chunk_index"]] - 1e-3

    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["chunks"] == CHUNKS and summary["fallback_chunks"] == 0 and summary["ended"] is True
    assert summary["error"] is None and summary["network"] == "loopback" and summary["policy"] == policy
    assert summary["startup_delay_s"] > 0 and summary["decision_latency_p50_ms"] > 0
    assert summary["mean_qoe"] == pytest.approx(sum(r["qoe"] for r in rows[1:]) / (CHUNKS - 1))

    table = pd.read_parquet(out / "chunks.parquet")
    assert list(table.columns) == list(COLUMNS) and len(table) == CHUNKS
    assert json.loads((out / "config.json").read_text())["policy"] == policy
    media = [line for line in (out / "requests.csv").read_text().splitlines() if "/media/chunk-" in line]
    assert len(media) == CHUNKS


def start_paced_session(video_dir: Path, out: Path, policy: str, controller_url: str, server_url: str
                        ) -> subprocess.Popen:
    video = load_video_json(video_dir)
    cfg = Config(video=video_dir, policy=policy, out=out, buffer_s=8.0, session_id=f"p-{policy}")
    cfg = resolve_config(cfg, video)
    return start_player(player_spec(cfg, video, server_url, controller_url))


def test_playback_finishes_on_the_fallback_when_the_controller_dies(video_dir: Path, tmp_path: Path) -> None:
    from controller.runner import launch_controller
    from server.app import ServerConfig
    from server.runner import BackgroundServer

    out = tmp_path / "run"
    with BackgroundServer(ServerConfig(media_root=video_dir)) as server, \
            launch_controller("bba", decision_log=out / "decisions.jsonl") as controller:
        proc = start_paced_session(video_dir, out, "bba", controller.url, server.url)
        try:
            assert wait_for_rows(out / "chunks.csv", 2, timeout_s=60, proc=proc) >= 2
            controller.kill()
            assert proc.wait(timeout=120) == 0, (out / "player.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()

    rows = check_chunk_log(out)
    flags = [r["fallback"] for r in rows]
    assert flags[:2] == [False, False], "the first two chunks were decided by the controller"
    assert all(flags[3:]), f"chunks decided after the kill must be fallback: {flags}"
    assert flags == sorted(flags), "fallback only after the controller died"
    reasons = {e["fallback_reason"] for e in read_events(out) if e["kind"] == "chunk" and e["fallback"]}
    assert reasons and reasons <= {"network_error", "timeout"}
    summary = finalize_session(out, policy="bba")
    assert summary["fallback_chunks"] == sum(flags) and summary["chunks"] == CHUNKS and summary["ended"]


def test_stall_is_charged_to_its_chunk_and_sigterm_keeps_the_rows(video_dir: Path, tmp_path: Path) -> None:
    """Chunk 2's response is held back 6 s while the buffer holds about 4 s: playback stalls about 2 s, which
    is charged to chunk 2. Then SIGTERM stops the player mid-session."""
    from controller.runner import launch_controller
    from server.app import ServerConfig
    from server.runner import BackgroundServer

    out = tmp_path / "run"
    with BackgroundServer(ServerConfig(media_root=video_dir)) as server, \
            launch_controller("bba") as controller:
        proc = start_paced_session(video_dir, out, "bba", controller.url, server.url)
        try:
            assert wait_for_rows(out / "chunks.csv", 2, timeout_s=60, proc=proc) >= 2
            server.hold_next_media_response_ms(6000)
            assert wait_for_rows(out / "chunks.csv", 3, timeout_s=60, proc=proc) >= 3
            assert wait_for_rows(out / "chunks.csv", 4, timeout_s=60, proc=proc) >= 4
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()

    text = (out / "chunks.csv").read_text()
    assert text.endswith("\n"), "no half-written row"
    rows = read_chunk_log(out / "chunks.csv")
    assert 4 <= len(rows) < CHUNKS
    assert [r["chunk_index"] for r in rows] == list(range(len(rows)))
    assert all(set(r) == set(COLUMNS) for r in rows)

    stalls = [e for e in read_events(out) if e["kind"] == "stall_end"]
    assert len(stalls) == 1 and 1.0 < stalls[0]["duration_s"] < 3.5, stalls
    # Charged from the previous chunk's completion to this one's (append included); the few ms between
    # the append and the `playing` event fall to the next chunk.
    assert rows[0]["rebuffer_s"] == rows[1]["rebuffer_s"] == 0.0
    assert rows[2]["rebuffer_s"] == pytest.approx(stalls[0]["duration_s"], abs=0.1)
    assert sum(r["rebuffer_s"] for r in rows) == pytest.approx(stalls[0]["duration_s"], abs=1e-3)
    assert rows[2]["download_time_s"] > 5.5 and rows[2]["first_byte_time_s"] - rows[2]["request_time_s"] > 5.5

    player = json.loads((out / "player.json").read_text())
    assert player["ended"] is False and "signal 15" in player["error"]
    assert player["chunks_logged"] == len(rows)
    summary = finalize_session(out, policy="bba")
    assert summary["chunks"] == len(rows) and summary["ended"] is False and "signal" in summary["error"]
    assert summary["total_rebuffer_s"] == pytest.approx(stalls[0]["duration_s"], abs=1e-3)
