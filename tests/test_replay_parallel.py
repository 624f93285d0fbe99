"""`netllm replay --parallel N`: N live sessions at once over one network (one client host each), sharing
one DASH server and one controller; the shared logs split per session; the network's names and clean-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from emulation.parallel import SessionJob, run_shared, split_decisions, split_requests
from netllm.cli import CommandError
from netllm.paths import REPO_ROOT
from tests.test_fidelity_live import emulation_prerequisites, prepare_small_video
from traces.generators import constant
from traces.readers import write_cooked

CHUNKS = 3


def test_split_requests_keeps_one_client_after_its_start(tmp_path: Path) -> None:
    shared = tmp_path / "requests.csv"
    shared.write_text("wall_time_s,method,path,status,remote\n"
                      "10.0,GET,/a,200,10.0.0.2\n"
                      "11.0,GET,/b,200,10.0.0.3\n"
                      "12.0,GET,/c,200,10.0.0.2\n"
                      "13.0,GET,/d,20")  # a half-written last line
    out = tmp_path / "mine.csv"
    assert split_requests(shared, out, "10.0.0.2", since_wall_s=11.5) == 1
    assert out.read_text().splitlines() == ["wall_time_s,method,path,status,remote",
                                            "12.0,GET,/c,200,10.0.0.2"]


def test_split_decisions_by_session_id(tmp_path: Path) -> None:
    shared = tmp_path / "decisions.jsonl"
    shared.write_text('{"session_id": "a", "quality": 1}\n{"session_id": "b", "quality": 2}\nnot json\n'
                      '{"session_id": "a", "quality": 3}\n')
    out = tmp_path / "a.jsonl"
    assert split_decisions(shared, out, "a") == 2
    assert [json.loads(x)["quality"] for x in out.read_text().splitlines()] == [1, 3]


def test_parallel_option_checked(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "netllm", "replay", "--traces", str(tmp_path), "--parallel",
                           "0", "--out", str(tmp_path / "o")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--parallel must be >= 1" in done.stderr


def test_shared_controller_refuses_an_unknown_policy_before_the_network(tmp_path: Path) -> None:
    """One shared controller serves every session's policy by name: an unknown one is refused up front,
    not answered with HTTP 400 for each decision while the page plays its fallback."""
    trace = constant(3.0, duration_s=20)
    jobs = [SessionJob(k, f"t__{name}", tmp_path / name, trace, 0.0, SimpleNamespace(policy=name))
            for k, name in enumerate(("bba", "nosuchpolicy"))]
    with pytest.raises(CommandError, match="unknown policy 'nosuchpolicy'"):
        run_shared(jobs, None, 2, tmp_path / "shared", lambda job, summary: None, 80.0)
    assert not (tmp_path / "shared").exists()


def _prefix_leftovers(prefix: str) -> list[str]:
    names = set(os.listdir("/sys/class/net"))
    if os.path.isdir("/run/netns"):
        names |= set(os.listdir("/run/netns"))
    return sorted(n for n in names if n.startswith(prefix))


@pytest.mark.emulation
def test_multi_client_link_names_rates_and_cleanup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from emulation.mininet_compat import MininetMissing, import_mininet
    from emulation.multi_link import MultiClientLink

    try:
        import_mininet()
    except MininetMissing as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("NETLLM_RUN_DIR", str(tmp_path / "runstate"))
    link = MultiClientLink(3).up()
    prefix = link.prefix
    try:
        names = _prefix_leftovers(prefix)
        assert {f"{prefix}b-c{k}" for k in range(3)} <= set(names)
        assert all(len(n) <= 15 for n in names)
        assert len({s.client_ip for s in link.slots}) == 3 and len({s.control_ip for s in link.slots}) == 3
        assert link.set_rate_kbps(1, 2500) == 2_500_000
        shown = subprocess.run(["tc", "class", "show", "dev", link.slots[1].shaped_dev], capture_output=True,
                               text=True).stdout
        other = subprocess.run(["tc", "class", "show", "dev", link.slots[0].shaped_dev], capture_output=True,
                               text=True).stdout
        assert "rate 2500Kbit" in shown and "rate 2500Kbit" not in other  # one client's rate only
    finally:
        link.down()
    assert _prefix_leftovers(prefix) == []
    assert list((tmp_path / "runstate").glob("*.json")) == []


@pytest.mark.emulation
@pytest.mark.browser
@pytest.mark.slow
def test_parallel_replay_two_sessions(tmp_path: Path) -> None:
    reason = emulation_prerequisites()
    if reason:
        pytest.skip(reason)
    video = prepare_small_video(tmp_path / "video", CHUNKS)
    traces = tmp_path / "traces"
    write_cooked(constant(50.0, duration_s=60), traces / "a_fast")
    write_cooked(constant(50.0, duration_s=60), traces / "b_fast")
    out = tmp_path / "replay"
    run_dir = tmp_path / "runstate"
    done = subprocess.run([sys.executable, "-m", "netllm", "replay", "--traces", str(traces), "--policies",
                           "bba", "--video", str(video), "--out", str(out), "--parallel", "2"],
                          cwd=REPO_ROOT, env={**os.environ, "NETLLM_RUN_DIR": str(run_dir)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert isinstance(summary["failed_starts"], list)  # retried start-up faults, if any, stay on record
    assert summary["complete"] is True and summary["parallel"] == 2 and summary["jobs"] == 2
    assert [(s["trace"], s["policy"]) for s in summary["sessions"]] == [("a_fast", "bba"), ("b_fast", "bba")]
    assert all(s["chunks"] == CHUNKS and s["player_exit_code"] == 0 and s["fallback_chunks"] == 0
               for s in summary["sessions"])
    slots = set()
    for s in summary["sessions"]:
        folder = out / "sessions" / s["folder"]
        own = json.loads((folder / "summary.json").read_text())
        assert own["shared_services"] is True and own["network"] == "emulated"
        slots.add(own["parallel_slot"])
        decisions = [json.loads(x) for x in (folder / "decisions.jsonl").read_text().splitlines()]
        assert {d["session_id"] for d in decisions} == {s["session_id"]} and len(decisions) == CHUNKS
        requests = pd.read_csv(folder / "requests.csv")
        assert requests["path"].str.contains("chunk-").sum() == CHUNKS
        assert requests["remote"].nunique() == 1
    assert slots == {0, 1}  # the two sessions ran at once, one per client host
    shared = out / "shared"
    assert len((shared / "decisions.jsonl").read_text().splitlines()) == 2 * CHUNKS
    assert (shared / "server.log").exists() and (shared / "controller.log").exists()
    chunks = pd.read_parquet(out / "chunks.parquet")
    assert len(chunks) == 2 * CHUNKS and not chunks.duplicated(["session_id", "chunk_index"]).any()
    table = pd.read_csv(out / "sessions.csv")
    assert list(table["folder"]) == ["a_fast__bba", "b_fast__bba"]
    assert len((out / "sessions.jsonl").read_text().splitlines()) == 2
    assert list(run_dir.glob("*.json")) == []
