"""`netllm report` on simulator results and on live-style session folders: PNGs and a summary."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from controller.policies import make_policy
from emulation.abr_sim import SimConfig, simulate_session
from netllm.chunklog import ChunkLogWriter
from netllm.cli import CommandError
from netllm.video import Video
from traces.bandwidth import BandwidthTrace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, path


def _sessions(policies=("bba", "rb"), traces=3):
    rng = np.random.default_rng(0)
    ladder = (300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0)
    video = Video(ladder, (np.array(ladder)[:, None] * 500 * rng.uniform(0.8, 1.2, (6, 20))).astype(np.int64))
    out = []
    for t in range(traces):
        trace = BandwidthTrace(f"trace{t}", np.arange(0, 100.0), rng.uniform(300, 4000, 100))
        for name in policies:
            out.append(simulate_session(make_policy(name), trace, video, config=SimConfig(), log_rows=True,
                                        policy_name=name))
    return out


def test_report_on_live_style_session_folders(tmp_path):
    results = tmp_path / "runs"
    for k, session in enumerate(_sessions()):
        with ChunkLogWriter(results / f"session{k}" / "chunks.csv") as writer:
            for row in session.rows:
                writer.write(row)
    out = tmp_path / "plots"
    proc = subprocess.run([sys.executable, "-m", "netllm", "report", "--results", str(results),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policies"] == ["bba", "rb"] and summary["sessions"] == 6
    for name in summary["plots"]:
        _check_png(out / name)
    assert summary["bba"]["sessions"] == 3
    expected = np.mean([s.mean_qoe for s in _sessions() if s.policy == "bba"])
    assert summary["bba"]["mean_qoe"] == pytest.approx(expected)


def test_report_on_sim_results_with_chosen_session(tmp_path):
    import pandas as pd

    from emulation.report import Config, run

    results = tmp_path / "sim"
    results.mkdir()
    sessions = _sessions(("bba", "robustmpc"), traces=2)
    pd.DataFrame([r for s in sessions for r in s.rows]).to_parquet(results / "chunks.parquet")
    chosen = sessions[-1].rows[0]["session_id"]
    out = tmp_path / "plots"
    assert run(Config(results=results, out=out, session=chosen, policies=["robustmpc", "bba"])) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policies"] == ["robustmpc", "bba"] and summary["timeline_session"] == chosen
    assert any(name.startswith("timeline_robustmpc") for name in summary["plots"])
    for name in summary["plots"]:
        _check_png(out / name)
    with pytest.raises(CommandError, match="no session"):
        run(Config(results=results, out=out, session="nope"))
    with pytest.raises(CommandError, match="no chunks"):
        run(Config(results=tmp_path / "plots", out=out))
