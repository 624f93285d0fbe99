"""`netllm report --reference/--compare`: sessions are paired only when they played the same stretch of the
same trace under the same run conditions, duplicate sessions are refused, and what was left out is counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from emulation.report import Config, run
from netllm.chunklog import ChunkLogWriter
from netllm.cli import CommandError
from tests.test_abr_sim_cli import small_inputs

POLICIES = ["bba", "rb"]


def _sim(traces: Path, video: Path, out: Path, **options: Any) -> Path:
    """A real `netllm sim` run (in this process, one worker): chunks.parquet, summary.json, config.json."""
    from emulation.abr_sim_cli import Config as SimConfig, run as sim_run

    cfg = SimConfig(traces=traces, video=video, out=out, policies=POLICIES, workers=1, **options)
    assert sim_run(cfg) == 0
    return out


def _report(tmp_path: Path, results: Path, name: str = "plots", **options: Any) -> dict[str, Any]:
    out = tmp_path / name
    assert run(Config(results=results, out=out, **options)) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    return small_inputs(tmp_path / "in", traces=3)


def test_compare_pairs_only_sessions_from_the_same_start(tmp_path, inputs, capsys):
    traces, video = inputs
    first = _sim(traces, video, tmp_path / "a")
    offsets = tmp_path / "offsets.txt"
    offsets.write_text("trace0 1\ntrace1 5\ntrace2 9\n")  # only trace0 starts where run a started
    second = _sim(traces, video, tmp_path / "b", start_offsets=offsets)
    doc = _report(tmp_path, first, reference="bba", compare=[f"{second}=b"])
    other = doc["paired"]["b/bba"]
    assert (other["pairs"], other["unpaired_sessions"], other["sessions_used"]) == (1, 4, 2)
    mine = pd.read_csv(first / "sessions.csv").query("policy == 'bba' and trace == 'trace0'")
    theirs = pd.read_csv(second / "sessions.csv").query("policy == 'bba' and trace == 'trace0'")
    assert other["mean_diff"] == pytest.approx(theirs["mean_qoe"].iloc[0] - mine["mean_qoe"].iloc[0])
    # One pair: a difference, but no interval (null, and said so when printed).
    assert other["ci95_low"] is None and other["ci95_high"] is None
    assert "no interval: 1 pair" in capsys.readouterr().out
    assert doc["paired"]["rb"]["pairs"] == 3  # the same folder: every trace, same start
    sessions = pd.read_csv(tmp_path / "plots" / "sessions.csv")
    assert sorted(sessions.loc[sessions["policy"] == "b/bba", "start_index"]) == [1, 5, 9]


def test_compare_refuses_folders_played_under_other_conditions(tmp_path, inputs):
    traces, video = inputs
    first = _sim(traces, video, tmp_path / "a")
    other_video = tmp_path / "video2"
    other_video.mkdir()
    for level in range(6):
        sizes = (video / f"video_size_{level}").read_text().split()
        (other_video / f"video_size_{level}").write_text("\n".join(str(2 * int(s)) for s in sizes) + "\n")
    shorter = _sim(traces, other_video, tmp_path / "b", chunks=3)
    with pytest.raises(CommandError, match=r"different conditions: chunks \(3 vs \d+\), video \("):
        run(Config(results=first, out=tmp_path / "x", reference="bba", compare=[f"{shorter}=b"]))
    noisy = _sim(traces, video, tmp_path / "c", noise=True)
    with pytest.raises(CommandError, match=r"different conditions: noise \(True vs False\)"):
        run(Config(results=first, out=tmp_path / "y", reference="bba", compare=[f"{noisy}=c"]))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # Plotted side by side, unpaired, they are fine; and a folder paired with itself still pairs.
    assert _report(tmp_path, first, compare=[f"{shorter}=b"])["sessions"] == 12
    assert _report(tmp_path, first, "z", reference="bba", compare=[f"{first}=again"])["paired"]["again/bba"][
        "pairs"] == 3


# ---------------------------------------------------------------------------- hand-built live session folders

def _session_rows(policy: str, trace_seed: int, session_id: str, chunks: int = 6) -> list[dict[str, Any]]:
    from controller.policies import make_policy
    from emulation.abr_sim import SimConfig, simulate_session
    from netllm.video import Video
    from traces.generators import markov

    ladder = (300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0)
    video = Video(ladder, (np.array(ladder)[:, None] * 500 * np.ones((6, 6))).astype(np.int64))
    trace = markov(seed=trace_seed, duration_s=120, name=f"trace{trace_seed}")
    result = simulate_session(make_policy(policy), trace, video, config=SimConfig(), log_rows=True,
                              policy_name=policy, session_id=session_id)
    return (result.rows or [])[:chunks]


def _live_session(folder: Path, policy: str, trace_seed: int, start_s: float | None, chunks: int = 6,
                  session_id: str = "") -> None:
    """A `netllm stream --trace`-like folder: chunks.csv, summary.json (start, chunk count), config.json."""
    sid = session_id or f"{policy}-{folder.name}"
    with ChunkLogWriter(folder / "chunks.csv") as writer:
        for row in _session_rows(policy, trace_seed, sid, chunks):
            writer.write(row)
    summary = {"session_id": sid, "policy": policy, "network": "emulated", "chunk_count": 6,
               **({"trace_start_time_s": start_s} if start_s is not None else {})}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.json").write_text(json.dumps({"video": "videos/short", "rtt_ms": 80.0, "buffer_s": 60.0,
                                                    "decision_timeout_ms": 1000.0, "default_quality": 1}))


def test_live_sessions_pair_on_their_trace_start(tmp_path):
    results = tmp_path / "live"
    for k, (trace, policy, start_s) in enumerate([(0, "bba", 0.0), (0, "robustmpc", 0.0),
                                                  (1, "bba", 0.0), (1, "robustmpc", 30.0)]):
        _live_session(results / f"s{k}", policy, trace, start_s)
    paired = _report(tmp_path, results, reference="robustmpc")["paired"]["bba"]
    assert (paired["pairs"], paired["unpaired_sessions"]) == (1, 2)


def test_live_folders_of_other_link_options_are_not_paired(tmp_path):
    results = tmp_path / "live"
    _live_session(results / "a", "bba", 0, 0.0)
    _live_session(results / "b", "robustmpc", 0, 0.0)
    config = json.loads((results / "b" / "config.json").read_text())
    (results / "b" / "config.json").write_text(json.dumps({**config, "rtt_ms": 20.0}))
    with pytest.raises(CommandError, match=r"different conditions: rtt_ms \(80.0 vs 20.0\)"):
        run(Config(results=results, out=tmp_path / "x", reference="robustmpc"))


def test_every_left_out_session_is_counted_and_printed(tmp_path, capsys):
    results = tmp_path / "live"
    layout = [  # trace, bba (start, chunks), robustmpc (start, chunks)
        (0, (0.0, 6), (0.0, 6)),    # paired
        (1, (0.0, 6), (0.0, 6)),    # paired
        (2, (0.0, 6), (30.0, 6)),   # other starts: 2 unpaired sessions
        (3, (0.0, 1), (0.0, 1)),    # one chunk each: NaN QoE
        (4, (0.0, 6), (0.0, 3)),    # robustmpc stopped after 3 chunks: not comparable
    ]
    for trace, *plays in layout:
        for policy, (start_s, chunks) in zip(("bba", "robustmpc"), plays):
            _live_session(results / f"t{trace}_{policy}", policy, trace, start_s, chunks)
    doc = _report(tmp_path, results, reference="robustmpc")
    paired = doc["paired"]["bba"]
    assert paired["pairs"] == 2 and paired["sessions_present"] == 10 and paired["sessions_used"] == 4
    left_out = ("unpaired_sessions", "nan_sessions", "chunk_mismatch_sessions")
    assert [paired[k] for k in left_out] == [2, 2, 2]
    line = capsys.readouterr().out.splitlines()[0]
    assert "over 2 pairs (4 of 10 sessions; left out: 2 unpaired, 2 NaN QoE, 2 other chunk count)" in line
    assert (doc["sessions"], doc["sessions_used"]) == (10, 8)
    assert (doc["bba"]["sessions"], doc["bba"]["sessions_used"]) == (5, 4)
    table = pd.read_csv(tmp_path / "plots" / "paired.csv")
    assert table.loc[0, "nan_sessions"] == 2


# ---------------------------------------------------------------------------- duplicate sessions

def test_duplicate_session_rows_are_refused_naming_the_file(tmp_path, inputs):
    traces, video = inputs
    results = _sim(traces, video, tmp_path / "a")
    chunks = pd.read_parquet(results / "chunks.parquet")
    one = chunks[chunks["session_id"] == chunks["session_id"].iloc[0]]
    pd.concat([chunks, one]).to_parquet(results / "chunks.parquet")  # what a trace listed twice produced
    with pytest.raises(CommandError, match=rf"'bba:trace0:1' has chunk 0 more than once, in {results}/"):
        run(Config(results=results, out=tmp_path / "x"))


def test_two_session_folders_with_one_id_are_refused(tmp_path):
    results = tmp_path / "live"
    _live_session(results / "one", "bba", 0, 0.0, session_id="bba-same")
    _live_session(results / "two", "bba", 1, 0.0, session_id="bba-same")
    with pytest.raises(CommandError, match=r"'bba-same' .* in \S+/one/chunks.csv, \S+/two/chunks.csv"):
        run(Config(results=results, out=tmp_path / "x"))


def test_partial_sessions_a_replay_moved_aside_are_not_results(tmp_path):
    results = tmp_path / "replay"  # killed before its merged chunks.parquet, then resumed
    _live_session(results / "sessions" / "t0__bba", "bba", 0, 0.0, session_id="bba-t0__bba")
    _live_session(results / "interrupted" / "t0__bba.1", "bba", 0, 0.0, chunks=3, session_id="bba-t0__bba")
    _live_session(results / "failed_starts" / "t1__bba.1", "bba", 1, 0.0, chunks=1)
    doc = _report(tmp_path, results)
    assert doc["sessions"] == 1 and doc["bba"]["sessions"] == 1
    assert pd.read_csv(tmp_path / "plots" / "sessions.csv")["chunks"].tolist() == [6]
