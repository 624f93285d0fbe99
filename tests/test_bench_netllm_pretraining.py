"""The pre-training ablation's recipe runner: stages resumed in order, each on its pool and schedule."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from benchmarks import bench_netllm_pretraining as bench
from tests.test_netllm_support import small_pool, synthetic_sessions, synthetic_video
from training.trainer import LrSchedule


def _write_inputs(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    from traces.readers import write_cooked

    causal, top = tmp_path / "pool-causal", tmp_path / "pool-top"
    small_pool(("bba", "rb"), traces=3, repeats=1).save(causal)
    small_pool(("robustmpc",), traces=3, repeats=1, seed=7).save(top)
    valid = tmp_path / "valid"
    for s in synthetic_sessions(1, seed=50):
        write_cooked(s.trace, valid / s.trace.name)
    video = tmp_path / "video"
    video.mkdir()
    for level, sizes in enumerate(synthetic_video().chunk_sizes_bytes):
        (video / f"video_size_{level}").write_text("\n".join(map(str, sizes)) + "\n")
    return causal, top, valid, video


def test_stages_resume_in_order_with_their_pool_and_schedule(tmp_path: Path) -> None:
    causal, top, valid, video = _write_inputs(tmp_path)
    out = tmp_path / "run"
    stages = (bench.Stage("causal", 6, 2, 1), bench.Stage("causal", 10, 4, 2), bench.Stage("top", 12, 6, 2))
    argv = ["--backbone", "tiny", "--out", str(out), "--pool-causal", str(causal), "--pool-top", str(top),
            "--threads", "1", "--train-args",
            f"--device cpu --window 8 --conv-channels 8 --warmup-steps 0 --valid-trace-dir {valid} --video {video}"]
    # paused inside stage 2, then continued: the pause must not change where each stage ends
    assert bench.run_recipe(bench.parse_args([*argv, "--through-step", "3"]), stages) == 3
    assert bench.run_recipe(bench.parse_args(argv), stages) == 6
    assert bench.run_recipe(bench.parse_args(argv), stages) == 6  # nothing left to do
    with (out / "loss.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    # each stage follows its own cosine schedule from the step reached (the shipped run's restarts)
    expected = [LrSchedule(3e-4, 0, stage.schedule_steps, 0.1).lr(step)
                for stage, steps in zip(stages, ((0, 1), (2, 3), (4, 5))) for step in steps]
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-5)  # loss.csv keeps 6 digits
    # the restart is visible: had stage 1's schedule gone on, step 3 would have had a lower rate
    assert expected[2] > LrSchedule(3e-4, 0, 6, 0.1).lr(2) * 1.1
    assert json.loads((out / "config.json").read_text())["pool"] == str(top)  # the last stage's pool
    assert [s for s, _ in bench.validation_scores(out)] == [1, 2, 3, 4, 6]
