"""Smoke test of the served-context benchmark: the real script on a tiny checkpoint and two traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_netllm_context as bench
from tests.test_netllm_support import synthetic_sessions, synthetic_video, tiny_checkpoint


def test_scores_each_served_window_and_refuses_test_splits(tmp_path: Path) -> None:
    from traces.readers import write_cooked

    traces = tmp_path / "traces"
    for s in synthetic_sessions(2, seed=7):
        write_cooked(s.trace, traces / s.trace.name)
    video = tmp_path / "video"
    video.mkdir()
    for level, sizes in enumerate(synthetic_video().chunk_sizes_bytes):
        (video / f"video_size_{level}").write_text("\n".join(map(str, sizes)) + "\n")
    ckpt = tiny_checkpoint(tmp_path / "tiny")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ckpt), "--trace-dir", str(traces), "--video", str(video), "--windows", "6,2",
            "--starts", "2", "--out", str(out)]
    assert bench.main(argv) == 0
    doc = json.loads((out / "context.json").read_text())
    assert [r["window"] for r in doc["windows"]] == [6, 2]
    for row in doc["windows"]:
        assert len(row["session_qoe"]) == 4 and row["mean_qoe"] == pytest.approx(sum(row["session_qoe"]) / 4)
    assert doc["best_window"] in (6, 2)
    [paired] = doc["paired_with_first"]
    first, second = (r["session_qoe"] for r in doc["windows"])
    assert (paired["window"], paired["reference_window"], paired["pairs"]) == (2, 6, 4)
    assert paired["mean_diff"] == pytest.approx(sum(b - a for a, b in zip(first, second)) / 4)
    with pytest.raises(SystemExit):
        bench.main(["--checkpoint", str(ckpt), "--split", "fcc-test"])
