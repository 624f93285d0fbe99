"""`netllm cjs-eval`: outputs, per-job logs, summary statistics and user errors."""

from __future__ import annotations

import math

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from netllm.evaluation import mean_ci95 as ci95
from netllm.cli import main


def test_cjs_eval_writes_job_logs_and_summary(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = main(["cjs-eval", "--out", str(out), "--policies", "fifo,fifo-cap25,fair", "--seeds", "2",
               "--executors", "10", "--jobs", "5", "--mean-gap-s", "20", "--workers", "1",
               "--tpch-dir", str(shared_data / "cjs" / "tpch")])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["executors"] == 10 and config["jobs"] == 5
    rows = list(csv.DictReader(open(out / "jobs.csv")))
    assert len(rows) == 3 * 2 * 5
    table = pd.read_parquet(out / "jobs.parquet")
    assert list(table.columns) == ["seed", "policy", "job_id", "query", "size", "arrival_s", "completion_s",
                                   "jct_s"]
    assert (table.jct_s == table.completion_s - table.arrival_s).all() and (table.jct_s > 0).all()
    for name in ("fifo", "fifo-cap25", "fair"):
        s = summary[name]
        mine = table[table.policy == name]
        assert s["mean_jct_s"] == pytest.approx(mine.jct_s.mean())
        assert s["jct_ci95_low"] <= s["mean_jct_s"] <= s["jct_ci95_high"]
        assert s["jobs"] == 10 and s["seeds"] == 2 and s["jobs_per_wall_s"] > 0
    # same job stream for every policy of a seed
    streams = {p: list(zip(g["seed"], g["query"], g["size"], g["arrival_s"]))
               for p, g in table.groupby("policy")}
    assert streams["fifo"] == streams["fair"] == streams["fifo-cap25"]
    assert summary["published_mean_jct_s"]["fair"] == 58.5


def test_cjs_eval_user_errors(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["cjs-eval", "--out", str(tmp_path / "x"), "--seeds", "1", "--jobs", "2"]
    assert main(base + ["--policies", "sjf"]) == 2
    assert "unknown CJS policy 'sjf'" in capsys.readouterr().err
    missing = str(tmp_path / "no-checkpoint")
    assert main(base + ["--policies", "decima", "--policy-options",
                        json.dumps({"decima": {"checkpoint": missing}})]) == 2
    assert "no-checkpoint" in capsys.readouterr().err
    assert main(base + ["--tpch-dir", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(base + ["--initial-jobs", "5"]) == 2
    assert main(base + ["--policy-options", "[1]"]) == 2


def test_ci95() -> None:
    mean, low, high = ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert low == pytest.approx(2.0 - 2.4841, abs=1e-3) and high == pytest.approx(4.4841, abs=1e-3)
    mean, low, high = ci95([5.0])
    assert mean == 5.0 and math.isnan(low) and math.isnan(high)  # one value has no interval


@pytest.mark.parametrize("extra, words", [
    (["--seed-base", "-5"], "--seed-base >= 0"),
    (["--workers", "-1"], "--workers >= 0"),
    (["--mean-gap-s", "inf"], "--mean-gap-s must be a finite"),
    (["--warmup-delay-s", "inf"], "--warmup-delay-s must be a finite"),
    (["--moving-delay-s", "nan"], "--moving-delay-s must be a finite"),
    (["--policies", "fifo,fifo"], "a policy is listed twice"),
])
def test_cjs_eval_rejects_bad_options_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     extra: list[str], words: str) -> None:
    out = tmp_path / "x"
    assert main(["cjs-eval", "--out", str(out), "--seeds", "1", "--jobs", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def broken_catalog(shared_data: Path, root: Path) -> Path:
    """A TPC-H folder linking the real files, with one adjacency matrix replaced by garbage."""
    source = shared_data / "cjs" / "tpch"
    for size_dir in source.iterdir():
        (root / size_dir.name).mkdir(parents=True)
        for f in size_dir.iterdir():
            (root / size_dir.name / f.name).symlink_to(f)
    bad = root / "50g" / "adj_mat_7.npy"
    bad.unlink()
    bad.write_text("garbage")
    return bad


def test_bad_tpch_data_is_a_clear_error_with_worker_processes(shared_data: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    bad = broken_catalog(shared_data, tmp_path / "tpch")
    out = tmp_path / "x"
    assert main(["cjs-eval", "--out", str(out), "--seeds", "2", "--jobs", "2", "--workers", "2",
                 "--tpch-dir", str(tmp_path / "tpch")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "BrokenProcessPool" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_finished_episodes_survive_a_failure(shared_data: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import emulation.cjs_eval as cjs_eval

    real_run_unit, calls = cjs_eval._run_unit, []

    def failing_third(*unit: object) -> dict:
        calls.append(unit)
        if len(calls) == 3:
            raise RuntimeError("killed mid-run")
        return real_run_unit(*unit)

    monkeypatch.setattr(cjs_eval, "_run_unit", failing_third)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed mid-run"):
        main(["cjs-eval", "--out", str(out), "--policies", "fifo,fair", "--seeds", "2", "--executors", "5",
              "--jobs", "4", "--workers", "1", "--tpch-dir", str(shared_data / "cjs" / "tpch")])
    episodes = pd.read_csv(out / "episodes.csv")
    assert list(episodes.columns) == list(cjs_eval.EPISODE_COLUMNS)
    assert list(zip(episodes.policy, episodes.seed)) == [("fifo", 0), ("fifo", 1)]
    jobs = pd.read_csv(out / "jobs.csv")
    assert len(jobs) == 2 * 4 and set(jobs.seed) == {0, 1}
    assert not (out / "summary.json").exists()


def test_summary_is_strict_json(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["cjs-eval", "--out", str(out), "--policies", "fifo", "--seeds", "1", "--executors", "5",
                 "--jobs", "3", "--workers", "1", "--tpch-dir", str(shared_data / "cjs" / "tpch")]) == 0

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON number {token}")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=refuse)
    assert summary["fifo"]["seeds"] == 1 and summary["mean_gap_s"] == 25.0
    assert len(pd.read_csv(out / "episodes.csv")) == 1
