"""A real `netllm stream --trace` session (Chromium + dash.js + controller + DASH server in Mininet hosts)
under a stepped trace: its outputs, and how closely each chunk's throughput follows the trace."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netllm.chunklog import COLUMNS, read_chunk_log
from netllm.paths import REPO_ROOT, chromium_executable
from traces.generators import stepped
from traces.readers import write_cooked

pytestmark = [pytest.mark.emulation, pytest.mark.browser, pytest.mark.slow]

SMALL_LADDER = "160x90,192x108,256x144,320x180,384x216,448x252"
CHUNKS = 12


def prepare_small_video(out: Path, chunks: int) -> Path:
    """A `chunks`-chunk, 6-level video: tiny pictures and the fastest preset keep encoding to seconds, while
    the bitrates (hence the chunk sizes) are the real ladder's."""
    cmd = [sys.executable, "-m", "netllm", "prepare-video", "--chunks", str(chunks), "--out", str(out),
           "--preset", "ultrafast", "--noise", "0", "--resolutions", SMALL_LADDER]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def emulation_prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not chromium_executable().exists():
        return f"Chromium not found at {chromium_executable()}"
    if shutil.which("ffmpeg") is None:
        return "ffmpeg not installed"
    from emulation.mininet_compat import MininetMissing, import_mininet

    try:
        import_mininet()
    except MininetMissing as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = emulation_prerequisites()
    if reason:
        pytest.skip(reason)
    return prepare_small_video(tmp_path_factory.mktemp("fidelity") / "video", CHUNKS)


def test_stream_under_stepped_trace(video_dir: Path, tmp_path: Path) -> None:
    trace_file = write_cooked(stepped([(12, 1.0), (12, 3.0), (12, 0.5), (12, 2.0)]), tmp_path / "stepped.txt")
    out = tmp_path / "session"
    run_dir = tmp_path / "runstate"
    env = {**os.environ, "NETLLM_RUN_DIR": str(run_dir)}
    done = subprocess.run([sys.executable, "-m", "netllm", "stream", "--video", str(video_dir),
                           "--policy", "bba", "--trace", str(trace_file), "--rtt-ms", "80",
                           "--out", str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = read_chunk_log(out / "chunks.csv")
    assert [r["chunk_index"] for r in rows] == list(range(CHUNKS))
    assert all(r["trace"] == "stepped.txt" for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["network"] == "emulated" and summary["trace"] == "stepped.txt"
    assert summary["rtt_method"] in ("netem", "server-first-byte-delay")
    assert summary["trace_offset_s"] == 0.0 and summary["chunks"] == CHUNKS
    assert summary["fallback_chunks"] == 0  # every decision reached the controller over the control veth
    assert summary["rate_changes"] >= 4 and summary["replay_max_lateness_s"] >= 0.0  # bench_fidelity reports it
    assert summary["emulation_setup_s"] > 0
    # The replay starts when the page has loaded, so trace time 0 is the session's start.
    assert 0 <= summary["replay_start_wall_s"] - summary["page_epoch_s"] < 1.0
    decisions = (out / "decisions.jsonl").read_text().splitlines()
    assert len(decisions) >= CHUNKS

    if summary["rtt_method"] == "server-first-byte-delay":
        delays = [float(r["first_byte_delay_ms"]) for r in csv.DictReader(open(out / "requests.csv"))]
        assert delays and all(d == 80.0 for d in delays)

    rate_log = list(csv.DictReader(open(out / "rate_log.csv")))
    assert [float(r["rate_kbps"]) for r in rate_log[:4]] == [1000.0, 3000.0, 500.0, 2000.0]

    fidelity = list(csv.DictReader(open(out / "fidelity.csv")))
    errors = np.abs([float(r["rel_error"]) for r in fidelity])
    assert len(errors) >= CHUNKS - 2
    print(f"fidelity: median {np.median(errors):.4f}, p90 {np.percentile(errors, 90):.4f}")
    assert np.median(errors) < 0.05
    assert np.percentile(errors, 90) < 0.25
    assert summary["link_fidelity_median_abs_rel_error"] == pytest.approx(np.median(errors), abs=1e-4)

    assert list(run_dir.glob("*.json")) == []  # the link is gone
    assert set(COLUMNS) <= set(rows[0])
