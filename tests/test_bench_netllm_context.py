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


def test_refuses_two_trace_sources_and_renamed_test_traces(shared_data: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    import shutil

    traces = tmp_path / "traces"
    traces.mkdir()
    with pytest.raises(SystemExit):
        bench.main(["--trace-dir", str(traces), "--split", "valid"])
    assert "--split and --trace-dir both name the traces" in capsys.readouterr().err
    test_trace = sorted((shared_data / "abr" / "traces" / "norway-test").iterdir())[0]
    shutil.copy(test_trace, traces / "my_own_trace")  # renamed: only its content gives it away
    with pytest.raises(SystemExit):
        bench.main(["--trace-dir", str(traces)])
    err = capsys.readouterr().err
    assert f"my_own_trace has the content of norway-test trace {test_trace.resolve()}" in err
    assert "never on a test split" in err


def test_a_single_session_has_no_interval(capsys: pytest.CaptureFixture) -> None:
    [paired] = bench.paired_with_first([{"window": 6, "session_qoe": [0.5]}, {"window": 2, "session_qoe": [0.7]}])
    assert paired["pairs"] == 1 and paired["ci95_low"] is None and paired["ci95_high"] is None
    assert "+0.2000 [no interval: 1 session]" in capsys.readouterr().out
    json.dumps(paired, allow_nan=False)
