"""Parts of the link emulator that need no network: replay schedule, tc arguments, fidelity arithmetic,
run-state files and their clean-up (processes only), signal handling, trace errors at the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulation.fidelity import chunk_fidelity, error_summary, mss_bytes, payload_factor
from emulation.link import EmulatedLink, LinkConfig, LinkError, check_link_config, htb_class_args, queue_args
from emulation.multi_link import MultiClientLink
from emulation.netns_cleanup import cleanup_stale
from emulation.runstate import RunState, list_states, new_run_state, process_alive, process_start_ticks
from emulation.signals import Terminated, terminate_raises
from emulation.trace_schedule import (
    mean_rate_kbps, segments_until, start_time_for_index, start_time_for_offset,
)
from netllm.paths import REPO_ROOT
from traces.generators import stepped


def test_schedule_offsets_and_loop() -> None:
    trace = stepped([(10, 1), (5, 3)])
    segs = segments_until(trace, start_time_for_offset(trace, 12.0), 30)
    assert [(s.start_s, s.end_s, s.rate_kbps) for s in segs[:4]] == [
        (0, 3, 3000), (3, 13, 1000), (13, 18, 3000), (18, 28, 1000)]
    assert segs[1].trace_time_s == 0.0 and segs[1].sample_index == 1
    assert start_time_for_offset(trace, 27.0) == 12.0  # wraps modulo the duration
    assert start_time_for_index(trace, 2) == 10.0
    assert mean_rate_kbps(segs, 2, 4) == pytest.approx(2000)
    with pytest.raises(ValueError):
        start_time_for_index(trace, 0)
    with pytest.raises(ValueError):
        start_time_for_offset(trace, -1)


def test_schedule_from_sample_index_matches_pensieve() -> None:
    """Starting at sample index k: time_s[k-1], bandwidth of sample k."""
    trace = stepped([(1, 1), (1, 2), (1, 3)])
    first = segments_until(trace, start_time_for_index(trace, 2), 0.5)[0]
    assert first.rate_kbps == 2000 and first.end_s == 1.0


def test_htb_and_queue_arguments() -> None:
    cfg = LinkConfig()
    args = htb_class_args(0.0, cfg)
    assert args[:5] == ["htb", "rate", "8000bit", "ceil", "8000bit"]  # zero -> the floor
    assert args[args.index("burst") + 1] == "1514b" and args[-1] == "1514"
    fast = htb_class_args(50_000, cfg)
    assert fast[2] == "50000000bit" and fast[fast.index("burst") + 1] == "12500b"  # 2 ms at 50 Mbit/s
    assert queue_args(1000, cfg) == ["pfifo", "limit", "64"]
    timed = LinkConfig(queue_delay_ms=100, queue_min_packets=8)
    assert queue_args(8000, timed) == ["bfifo", "limit", "100000"]
    assert queue_args(100, timed) == ["bfifo", "limit", str(8 * 1514)]


def test_fidelity_arithmetic() -> None:
    assert mss_bytes(1500) == 1448 and payload_factor(1500) == pytest.approx(1448 / 1514)
    segs = segments_until(stepped([(10, 1), (10, 3)]), 0.0, 40)
    # A chunk over [8, 12] s of replay sees 2 s at 1 Mbit/s and 2 s at 3 Mbit/s.
    expected = 2000 * payload_factor()
    delivered_bytes = int(expected * 1000 / 8 * 4)
    row = {"chunk_index": 0, "chunk_bytes": delivered_bytes + mss_bytes() - 250,
           "first_byte_time_s": 3.0, "finish_time_s": 7.0}
    (result,) = chunk_fidelity([row], segs, page_epoch_s=105.0, replay_start_wall_s=100.0)
    assert (result.start_s, result.end_s) == (8.0, 12.0)
    assert result.rel_error == pytest.approx(0.0, abs=1e-4)
    short = dict(row, finish_time_s=3.01)
    assert chunk_fidelity([short], segs, 105.0, 100.0) == []
    assert error_summary([result])["median_abs_rel_error"] < 1e-4
    assert error_summary([])["chunks"] == 0


def test_process_identity() -> None:
    me = os.getpid()
    assert process_alive(me, process_start_ticks(me))
    assert not process_alive(me, (process_start_ticks(me) or 0) + 1)  # a recycled PID is not ours
    assert process_start_ticks(2 ** 22 + 1) is None


def test_stale_run_processes_are_killed_and_state_removed(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETLLM_RUN_DIR", str(tmp_path))
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        state = new_run_state()
        state.add_process(sleeper.pid, "stand-in")
        live = new_run_state()  # owned by this (live) process: must be left alone
        dead_owner = subprocess.Popen(["true"])
        dead_owner.wait()
        doc = json.loads(state.path.read_text())  # type: ignore[union-attr]
        doc["owner_pid"], doc["owner_start_ticks"] = dead_owner.pid, 1
        state.path.write_text(json.dumps(doc))  # type: ignore[union-attr]
        reports = cleanup_stale(grace_s=1.0)
        assert [r.run_id for r in reports] == [state.run_id]
        assert sleeper.wait(timeout=5) == -signal.SIGTERM
        assert bystander.poll() is None
        assert [s.run_id for s in list_states()] == [live.run_id]
        assert isinstance(list_states()[0], RunState) and list_states()[0].prefix == f"nl{live.run_id}"
    finally:
        for proc in (sleeper, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_unreadable_state_file_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("NETLLM_RUN_DIR", str(tmp_path))
    (tmp_path / "bad.json").write_text("{not json")
    assert list_states() == []
    assert "bad.json" in capsys.readouterr().out


def test_terminate_raises_once() -> None:
    with pytest.raises(Terminated) as info:
        with terminate_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert info.value.code == 128 + signal.SIGTERM
    cleaned = False
    with pytest.raises(Terminated):
        with terminate_raises():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # a second signal must not interrupt the clean-up
                time.sleep(0.1)
                cleaned = True
    assert cleaned
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_stream_with_malformed_trace_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad_trace"
    bad.write_text("0 1\n1 2\n2 oops\n")
    from emulation.live_session import load_trace
    from netllm.cli import CommandError

    with pytest.raises(CommandError, match=r"bad_trace:3: bandwidth 'oops' is not a number"):
        load_trace(bad)


def test_cleanup_cli_without_state(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("netllm cleanup needs root")
    out = subprocess.run([sys.executable, "-m", "netllm", "cleanup", "--dry-run"], cwd=REPO_ROOT,
                         env={**os.environ, "NETLLM_RUN_DIR": str(tmp_path)}, capture_output=True, text=True)
    assert out.returncode == 0 and "nothing to clean up" in out.stdout
    out = subprocess.run([sys.executable, "-m", "netllm", "cleanup", "--run-id", "zzzzz"], cwd=REPO_ROOT,
                         env={**os.environ, "NETLLM_RUN_DIR": str(tmp_path)}, capture_output=True, text=True)
    assert out.returncode == 2 and "no run-state file" in out.stderr


@pytest.mark.parametrize("rtt_ms", [-10.0, float("nan"), float("inf"), 1e9])
def test_link_refuses_an_rtt_that_makes_no_sense(rtt_ms: float) -> None:
    """A negative RTT used to run silently with none, NaN went to tc, inf or 1e9 hung every request: refused
    before anything is built (no root needed to see it)."""
    with pytest.raises(LinkError, match="rtt_ms must be in 0..10000"):
        check_link_config(LinkConfig(rtt_ms=rtt_ms))
    with pytest.raises(LinkError, match="rtt_ms"):
        EmulatedLink(LinkConfig(rtt_ms=rtt_ms)).up()
    with pytest.raises(LinkError, match="rtt_ms"):
        MultiClientLink(2, LinkConfig(rtt_ms=rtt_ms)).up()


def test_link_accepts_ordinary_settings() -> None:
    for rtt_ms in (0.0, 80.0, 10_000.0):
        check_link_config(LinkConfig(rtt_ms=rtt_ms))
    with pytest.raises(LinkError, match="initial_rate_kbps"):
        check_link_config(LinkConfig(initial_rate_kbps=float("nan")))
