"""`netllm sim` end to end (the real command in a subprocess) and its input parsing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from emulation.abr_sim_cli import SUMMARY_KEYS, read_start_offsets, summarize_sessions
from netllm.chunklog import COLUMNS
from netllm.cli import CommandError, main

NETLLM = [sys.executable, "-m", "netllm"]


@pytest.fixture()
def three_traces(shared_data, tmp_path) -> Path:
    src = sorted((shared_data / "abr" / "traces" / "fcc-test").iterdir())[:3]
    folder = tmp_path / "traces"
    folder.mkdir()
    for p in src:
        shutil.copy(p, folder / p.name)
    return folder


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*NETLLM, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_sim_command_writes_summary_sessions_chunks_and_config(shared_data, three_traces, tmp_path):
    out = tmp_path / "out"
    video = shared_data / "abr" / "videos" / "video1_sizes"
    offsets = shared_data / "abr" / "fcc-test-start-offsets.txt"
    proc = run_cli("sim", "--policies", "bba,robustmpc-pm1,optimal", "--traces", str(three_traces),
                   "--video", str(video), "--out", str(out), "--start-offsets", str(offsets),
                   "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policies"] == ["bba", "robustmpc-pm1", "optimal"] and summary["traces"] == 3
    for name in summary["policies"]:
        fig = summary[name]
        assert fig["traces"] == 3
        assert fig["qoe_ci95_low"] <= fig["mean_qoe"] <= fig["qoe_ci95_high"]
        assert set(fig) <= set(SUMMARY_KEYS)
        assert fig["qoe_fraction_of_optimal"] <= 1.0 + 1e-9
    assert summary["optimal"]["qoe_fraction_of_optimal"] == 1.0
    sessions = pd.read_csv(out / "sessions.csv")
    assert len(sessions) == 9
    starts = read_start_offsets(offsets)
    assert set(sessions["start_index"]) == {starts[p.name] for p in three_traces.iterdir()}
    chunks = pd.read_parquet(out / "chunks.parquet")
    assert list(chunks.columns) == list(COLUMNS)
    assert len(chunks) == 9 * 48
    bba = sessions[sessions["policy"] == "bba"]
    assert summary["bba"]["mean_qoe"] == pytest.approx(bba["mean_qoe"].mean())
    bba_chunks = chunks[chunks["policy"] == "bba"]
    per_session = bba_chunks.groupby("session_id")["qoe"].apply(lambda q: q.iloc[1:].mean())
    assert sorted(per_session) == pytest.approx(sorted(bba["mean_qoe"]))
    config = json.loads((out / "config.json").read_text())
    assert config["policies"] == ["bba", "robustmpc-pm1", "optimal"] and config["workers"] == 2


def test_sim_noise_is_seeded(shared_data, three_traces, tmp_path):
    video = shared_data / "abr" / "videos" / "video1_sizes"
    results = []
    for seed in ("1", "1", "2"):
        out = tmp_path / f"noise{len(results)}"
        proc = run_cli("sim", "--policies", "bba", "--traces", str(three_traces), "--video", str(video),
                       "--out", str(out), "--noise", "--seed", seed, "--workers", "1", "--no-chunk-log")
        assert proc.returncode == 0, proc.stderr
        assert not (out / "chunks.parquet").exists()
        results.append(json.loads((out / "summary.json").read_text())["bba"]["mean_qoe"])
    assert results[0] == results[1] != results[2]


def test_sim_rejects_bad_input_with_clear_errors(shared_data, three_traces, tmp_path):
    video = shared_data / "abr" / "videos" / "video1_sizes"
    proc = run_cli("sim", "--policies", "bba,nope", "--traces", str(three_traces), "--video", str(video),
                   "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "nope" in proc.stderr
    proc = run_cli("sim", "--policies", "optimal", "--noise", "--traces", str(three_traces), "--video",
                   str(video), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "deterministic" in proc.stderr
    proc = run_cli("sim", "--policies", "pensieve", "--traces", str(three_traces), "--video", str(video),
                   "--out", str(tmp_path / "o"), env={"NETLLM_PENSIEVE_CHECKPOINT": str(tmp_path / "none")})
    assert proc.returncode == 2 and "no Pensieve checkpoint" in proc.stderr
    bad = tmp_path / "offsets.txt"
    bad.write_text("# header\n" + "\n".join(f"{p.name} 5" for p in sorted(three_traces.iterdir())[:2]) + "\n")
    proc = run_cli("sim", "--traces", str(three_traces), "--video", str(video), "--out", str(tmp_path / "o"),
                   "--start-offsets", str(bad))
    assert proc.returncode == 2 and "no start index" in proc.stderr
    bad.write_text("trace_a x\n")
    with pytest.raises(CommandError, match="offsets.txt:1"):
        read_start_offsets(bad)


def test_summary_statistics_on_known_numbers():
    rows = [{"policy": "a", "trace_pos": i, "mean_qoe": q, "plan_mean_qoe": q, "mean_bitrate_kbps": 1000.0,
             "rebuffer_s": 2.0, "startup_delay_s": 1.0, "switches": 3, "chunks": 10, "exact": True}
            for i, q in enumerate([1.0, 2.0, 3.0])]
    fig = summarize_sessions(rows, ["a"], 4.0)["a"]
    assert fig["mean_qoe"] == 2.0 and fig["qoe_std"] == pytest.approx(1.0)
    assert fig["qoe_ci95_high"] - 2.0 == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2) = 4.3027
    assert fig["rebuffer_ratio"] == pytest.approx(6.0 / 120.0)
    assert fig["switches_per_session"] == 3.0 and "qoe_fraction_of_optimal" not in fig


def test_noise_seeds_are_paired_across_policies(tmp_path):
    from emulation.abr_sim_cli import Config, _units

    cfg = Config(traces=tmp_path, video=tmp_path, out=tmp_path, policies=["bba", "rb"], seed=3)
    units = list(_units(cfg, cfg.policies, [1, 5, 9]))
    seeds = {(name, pos): seed for name, pos, _, seed, _ in units}
    assert [seeds["bba", i] for i in range(3)] == [seeds["rb", i] for i in range(3)]
    assert len({seeds["bba", i] for i in range(3)}) == 3


# ---------------------------------------------------------------- bad input, written rows (no reference data)

def small_inputs(root: Path, traces: int = 4) -> tuple[Path, Path]:
    """A 6-level, 5-chunk video folder and `traces` short cooked traces."""
    from traces.generators import markov
    from traces.readers import write_cooked

    video = root / "video"
    video.mkdir(parents=True)
    for level, kbps in enumerate((300, 750, 1200, 1850, 2850, 4300)):
        (video / f"video_size_{level}").write_text("\n".join([str(kbps * 500)] * 6) + "\n")
    folder = root / "traces"
    for k in range(traces):
        write_cooked(markov(seed=k, duration_s=120), folder / f"trace{k}")
    return folder, video


def test_tiny_trace_is_a_clear_error_not_a_hang(tmp_path):
    folder, video = small_inputs(tmp_path, traces=0)
    folder.mkdir()
    (folder / "a").write_text("0 1\n1e-300 1\n")
    proc = run_cli("sim", "--traces", str(folder), "--video", str(video), "--policies", "bba",
                   "--workers", "1", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and f"{folder / 'a'}:2: the trace spans only 1e-300 s" in proc.stderr
    (folder / "a").write_text("0 1e-9\n1000 1e-9\n")  # spans time, but carries 0.1 bytes a pass
    proc = run_cli("sim", "--traces", str(folder), "--video", str(video), "--policies", "bba",
                   "--workers", "1", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "too little bandwidth" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, words", [
    (["--chunks", "-3"], "--chunks must be 0 (the whole video) or >= 2"),
    (["--chunks", "-1", "--workers", "2"], "--chunks must be 0 (the whole video) or >= 2"),
    (["--chunks", "1"], "--chunks must be 0 (the whole video) or >= 2 (chunk 0 is not scored), got 1"),
    (["--workers", "-2"], "--workers must be >= 0"),
    (["--start-index", "0"], "--start-index must be >= 1"),
])
def test_sim_rejects_bad_options_before_writing(tmp_path, capsys, extra, words):
    folder, video = small_inputs(tmp_path)
    out = tmp_path / "o"
    assert main(["sim", "--traces", str(folder), "--video", str(video), "--policies", "bba",
                 "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_sim_refuses_a_video_of_one_chunk(tmp_path, capsys):
    folder, video = small_inputs(tmp_path)
    for path in video.iterdir():
        path.write_text(path.read_text().split()[0] + "\n")
    assert main(["sim", "--traces", str(folder), "--video", str(video), "--policies", "bba",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "needs at least 2 chunks" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_sim_refuses_two_traces_of_one_name(tmp_path, capsys):
    folder, video = small_inputs(tmp_path, traces=2)
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps([str(folder / "trace0"), str(folder / "trace1"), str(folder / "trace0")]))
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(folder / "trace1", other / "trace1")
    same_name = tmp_path / "same_name.json"
    same_name.write_text(json.dumps([str(folder / "trace1"), str(other / "trace1")]))
    for listing in (twice, same_name):
        assert main(["sim", "--traces", str(listing), "--video", str(video), "--policies", "bba",
                     "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "share the name 'trace" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "o").exists()


def test_sim_on_one_trace_has_no_interval(tmp_path, capsys):
    folder, video = small_inputs(tmp_path, traces=1)
    out = tmp_path / "o"
    assert main(["sim", "--traces", str(folder), "--video", str(video), "--policies", "bba", "--workers", "1",
                 "--out", str(out)]) == 0
    fig = json.loads((out / "summary.json").read_text())["bba"]
    assert fig["qoe_ci95_low"] is None and fig["qoe_ci95_high"] is None and fig["mean_qoe"] is not None
    assert "QoE" in (line := capsys.readouterr().out.splitlines()[0]) and "[no interval: 1 trace]" in line


def test_sim_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    folder, video = small_inputs(tmp_path)
    out = tmp_path / "taken"
    out.write_text("not a folder")
    assert main(["sim", "--traces", str(folder), "--video", str(video), "--policies", "bba", "--workers", "1",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"netllm sim: error: {out}: File exists"


def test_sessions_finished_before_a_failure_are_in_sessions_csv(tmp_path, monkeypatch):
    import emulation.abr_sim_cli as sim_cli

    folder, video = small_inputs(tmp_path)
    real_run_unit, calls = sim_cli._run_unit, []

    def failing_third(*unit):
        calls.append(unit)
        if len(calls) == 3:
            raise RuntimeError("killed mid-run")
        return real_run_unit(*unit)

    monkeypatch.setattr(sim_cli, "_run_unit", failing_third)
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="killed mid-run"):
        main(["sim", "--traces", str(folder), "--video", str(video), "--policies", "bba", "--workers", "1",
              "--out", str(out)])
    sessions = pd.read_csv(out / "sessions.csv")
    assert list(sessions.columns) == list(sim_cli.SESSION_COLUMNS)
    assert sessions["trace"].tolist() == ["trace0", "trace1"] and sessions["mean_qoe"].notna().all()
    assert not (out / "summary.json").exists()


def test_sessions_csv_is_rewritten_in_order_at_the_end(tmp_path):
    folder, video = small_inputs(tmp_path)
    out = tmp_path / "o"
    assert main(["sim", "--traces", str(folder), "--video", str(video), "--policies", "rb,bba",
                 "--workers", "2", "--out", str(out)]) == 0
    sessions = pd.read_csv(out / "sessions.csv")
    assert list(zip(sessions["policy"], sessions["trace"])) == [
        (p, f"trace{k}") for p in ("rb", "bba") for k in range(4)]
    assert not list(out.glob(".*.tmp"))


def square(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return x * x


def test_map_units_reports_each_result_as_it_arrives():
    from netllm.evaluation import map_units

    for workers in (1, 2):
        seen: list[int] = []
        units = [(k,) for k in range(6)]
        results = map_units(square, units, os.getpid, (), workers, "t", "u", seen.append)
        assert sorted(results) == sorted(seen) == [0, 1, 4, 9, 16, 25]
        seen.clear()
        with pytest.raises(ValueError, match="negative"):
            map_units(square, [(2,), (-1,)], os.getpid, (), workers, "t", "u", seen.append)
