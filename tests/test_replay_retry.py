"""`netllm replay --retries`: a session whose player failed before its first chunk is run again, its failed
attempt kept; results (timeouts, failures after playback began, signals) are never retried."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from client.replay import failed_at_start, retry_failed_starts
from client.replay_ledger import FAILED_START_NAME, interrupted_records
from netllm.paths import REPO_ROOT


def test_failed_at_start_only_for_errors_before_any_chunk() -> None:
    assert failed_at_start({"player_exit_code": 1, "chunks": 0})
    assert failed_at_start({"player_exit_code": 1, "chunks": None})
    assert not failed_at_start({"player_exit_code": 1, "chunks": 2})  # failed during playback: a result
    assert not failed_at_start({"player_exit_code": 3, "chunks": 0})  # no chunk in time: a slow link
    assert not failed_at_start({"player_exit_code": 143, "chunks": 0})  # stopped by SIGTERM
    assert not failed_at_start({"player_exit_code": 0, "chunks": 0})


def _fake_out(tmp_path: Path, outcomes: dict[str, list[int]]) -> tuple[list[Any], dict[str, dict[str, Any]],
                                                                          Any, list[list[str]]]:
    """Jobs whose n-th attempt exits with outcomes[folder][n]; each attempt writes a player.log."""
    jobs = [SimpleNamespace(folder=f, out=tmp_path / "sessions" / f) for f in outcomes]
    finished: dict[str, dict[str, Any]] = {}
    rounds: list[list[str]] = []
    attempts = {f: 0 for f in outcomes}

    def run(todo: list[Any]) -> None:
        rounds.append([j.folder for j in todo])
        for job in todo:
            code = outcomes[job.folder][attempts[job.folder]]
            attempts[job.folder] += 1
            job.out.mkdir(parents=True, exist_ok=True)
            (job.out / "player.log").write_text(f"attempt {attempts[job.folder]} exit {code}\n")
            finished[job.folder] = {"player_exit_code": code, "chunks": 0 if code else 3}

    return jobs, finished, run, rounds


def test_retry_runs_failed_starts_again_and_keeps_the_failed_attempts(tmp_path: Path) -> None:
    jobs, finished, run, rounds = _fake_out(tmp_path, {"a": [0], "b": [1, 0], "c": [1, 1, 1]})
    run(jobs)
    retry_failed_starts(2, jobs, finished, tmp_path, run)
    assert rounds == [["a", "b", "c"], ["b", "c"], ["c"]]  # bounded: c is given up after 2 retries
    assert finished["b"]["player_exit_code"] == 0 and finished["c"]["player_exit_code"] == 1
    records = interrupted_records(tmp_path, FAILED_START_NAME)
    assert [(r["folder"], r["moved_to"]) for r in records] == [
        ("b", "failed_starts/b.1"), ("c", "failed_starts/c.1"), ("c", "failed_starts/c.2")]
    assert (tmp_path / "failed_starts" / "c.2" / "player.log").read_text() == "attempt 2 exit 1\n"
    assert (tmp_path / "sessions" / "c" / "player.log").read_text() == "attempt 3 exit 1\n"
    assert not (tmp_path / "interrupted.jsonl").exists()


def test_no_retries_leaves_the_failure_in_place(tmp_path: Path) -> None:
    jobs, finished, run, rounds = _fake_out(tmp_path, {"a": [1, 0]})
    run(jobs)
    retry_failed_starts(0, jobs, finished, tmp_path, run)
    assert rounds == [["a"]] and finished["a"]["player_exit_code"] == 1
    assert (tmp_path / "sessions" / "a" / "player.log").exists()
    assert interrupted_records(tmp_path, FAILED_START_NAME) == []


def test_negative_retries_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "netllm", "replay", "--traces", str(tmp_path), "--retries",
                           "-1", "--out", str(tmp_path / "o")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--retries must be >= 0" in done.stderr
