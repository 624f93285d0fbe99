"""Smoke test of the decision-latency benchmark: the real script, a tiny body, a handful of decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_netllm_latency as bench


@pytest.mark.parametrize("extra", [[], ["--transformers-forward"]])
def test_latency_benchmark_times_int8_kv_decisions(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "latency.json"
    argv = ["--backbone", "tiny", "--device", "cpu", "--quantize", "int8", "--sessions", "2", "--chunks", "6",
            "--window", "4", "--schemes", "recompute,kv,kv-paced", "--gap-ms", "1", "--threads", "1",
            "--out", str(out)] + extra
    assert bench.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["lean_decoder"] == (not extra) and doc["quantize"] == "int8"
    for scheme in ("recompute", "kv", "kv-paced"):
        s = doc["schemes"][scheme]
        assert s["decisions"] == 12 and 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert 0.0 <= doc["int8_decision_agreement"] <= 1.0


def test_latency_benchmark_times_a_checkpoint_at_its_served_window(tmp_path: Path) -> None:
    from tests.test_netllm_support import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny")
    out = tmp_path / "latency.json"
    argv = ["--checkpoint", str(ckpt), "--device", "cpu", "--sessions", "1", "--chunks", "8", "--window", "3",
            "--schemes", "kv", "--threads", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["window"] == 3 and doc["schemes"]["kv"]["decisions"] == 8
