"""The player process's spec file and the session helpers that need no browser: spec validation (errors name
the file and the field, exit status 2), the page URL, the player command, and the session summary written
from a chunk log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest

from client.player import EXIT_BAD_SPEC, PlayerSpec, SpecError, load_spec
from client.session import finalize_session, format_summary, player_command, player_page_url
from client.stream import Config, resolve_config
from netllm.chunklog import COLUMNS, ChunkLogWriter
from netllm.cli import CommandError
from netllm.paths import REPO_ROOT
from netllm.qoe import chunk_qoe
from netllm.video import Video


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(doc))
    return path


def test_spec_round_trip(tmp_path: Path) -> None:
    spec = PlayerSpec(url="http://127.0.0.1:1/player/index.html?x=1", out_dir=str(tmp_path / "o"),
                      session_id="s", policy="bba", trace="t.txt", chunk_count=8, session_timeout_s=60,
                      extra_browser_args=["--a"])
    assert load_spec(spec.write(tmp_path / "spec.json")) == spec


@pytest.mark.parametrize("doc, field", [
    ({"out_dir": "/tmp/x"}, "'url' is required"),
    ({"url": "http://x", "out_dir": "/tmp/x", "policy": 3}, "'policy' must be str"),
    ({"url": "http://x", "out_dir": "/tmp/x", "chunk_count": True}, "'chunk_count' must be int"),
    ({"url": "http://x", "out_dir": "/tmp/x", "speed": 2}, "unknown field(s) ['speed']"),
    ({"url": "http://x", "out_dir": "/tmp/x", "session_timeout_s": 0}, "'session_timeout_s' must be > 0"),
    ({"url": "http://x", "out_dir": "/tmp/x", "extra_browser_args": [1]}, "list of strings"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_specs_name_the_field(tmp_path: Path, doc: object, field: str) -> None:
    path = write(tmp_path, doc)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_player_process_refuses_a_bad_spec_with_status_2(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text("{not json")
    done = subprocess.run(player_command(path), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_BAD_SPEC and str(path) in done.stderr


def test_page_url_carries_the_session_settings() -> None:
    url = player_page_url("http://127.0.0.1:8000/", controller_url="http://127.0.0.1:9000", session_id="s 1",
                          policy="robustmpc", decision_timeout_ms=250, default_quality=2, buffer_s=30)
    parsed = urlparse(url)
    assert parsed.path == "/player/index.html"
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    assert query == {"mpd": "/media/manifest.mpd", "controller": "http://127.0.0.1:9000", "session_id": "s 1",
                     "policy": "robustmpc", "timeout_ms": "250", "default_quality": "2", "buffer_s": "30"}


def test_stream_options_are_checked(tmp_path: Path) -> None:
    import numpy as np

    video = Video((300.0, 750.0), np.full((2, 4), 1000, dtype=np.int64))
    cfg = resolve_config(Config(video=tmp_path, policy="bba"), video)
    assert cfg.session_id.startswith("bba-") and cfg.out is not None and cfg.session_timeout_s == 3 * 16 + 120
    for bad, message in [({"decision_timeout_ms": 0}, "decision-timeout"), ({"default_quality": 2}, "0..1"),
                         ({"controller_url": "localhost:9"}, "http://HOST:PORT"),
                         ({"buffer_s": 4}, "two chunks")]:
        with pytest.raises(CommandError, match=message):
            resolve_config(Config(video=tmp_path, **bad), video)


def test_stream_without_a_prepared_video_is_a_clear_error(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "netllm", "stream", "--video", str(tmp_path / "none"),
           "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "prepare-video" in done.stderr and "none" in done.stderr


def test_finalize_writes_summary_and_parquet_from_the_logs(tmp_path: Path) -> None:
    ladder = [300.0, 750.0, 1200.0]
    qualities, rebuffers, latencies = [1, 2, 2, 0], [0.0, 0.0, 0.5, 0.0], [10.0, 20.0, 30.0, 1000.0]
    with ChunkLogWriter(tmp_path / "chunks.csv") as writer:
        previous = ladder[1]
        for i, (q, rb, lat) in enumerate(zip(qualities, rebuffers, latencies)):
            writer.write({"session_id": "s", "policy": "bba", "trace": "", "chunk_index": i, "quality": q,
                          "bitrate_kbps": ladder[q], "chunk_bytes": 1000, "request_time_s": i,
                          "first_byte_time_s": i, "finish_time_s": i + 0.1, "download_time_s": 0.1,
                          "throughput_kbps": 80.0, "buffer_before_s": 1.0, "buffer_after_s": 5.0,
                          "rebuffer_s": rb, "decision_latency_ms": lat, "fallback": i == 3,
                          "qoe": chunk_qoe(ladder[q], previous, rb)})
            previous = ladder[q]
    (tmp_path / "player.json").write_text(json.dumps({"startup_delay_s": 0.4, "ended": True, "error": None,
                                                      "exit_code": 0, "chunk_count": 4, "wall_s": 20.0}))
    summary = finalize_session(tmp_path, policy="bba", video="v", network="loopback")
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["chunks"] == 4 and summary["fallback_chunks"] == 1 and summary["switches"] == 2
    assert summary["total_rebuffer_s"] == 0.5 and summary["startup_delay_s"] == 0.4
    assert summary["decision_latency_p50_ms"] == 20.0, "fallback chunks are left out of the latency figures"
    assert summary["controller_latency_p50_ms"] is None and summary["error"] is None
    assert list(pd.read_parquet(tmp_path / "chunks.parquet").columns) == list(COLUMNS)
    text = format_summary(summary, tmp_path)
    assert "mean QoE" in text and "summary.json" in text
