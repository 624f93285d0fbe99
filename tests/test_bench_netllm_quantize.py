"""Smoke test of the quantisation benchmark: the real script on a tiny checkpoint and one validation trace."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import bench_netllm_quantize as bench
from tests.test_netllm_support import tiny_checkpoint


def test_quantize_benchmark_reports_both_measures(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny")
    argv = ["--checkpoint", str(ckpt), "--schemes", "none,int8-split", "--max-traces", "1", "--threads", "1",
            "--out", str(tmp_path / "out")]
    assert bench.main(argv) == 0
    doc = json.loads((tmp_path / "out" / "quantize.json").read_text())
    assert doc["sessions"] == 1 and doc["teacher_forced_steps"] > 20
    none, split = doc["schemes"]["none"], doc["schemes"]["int8-split"]
    assert none["teacher_forced_kl"] < 1e-6 and none["teacher_forced_same_level"] == 1.0
    assert none["sessions_changed"] == 0.0
    assert split["teacher_forced_kl"] >= 0.0 and 0.0 <= split["teacher_forced_same_level"] <= 1.0
    assert len(split["session_qoe"]) == 1
