"""A live session with the `netllm` policy end to end: real Chromium + dash.js, the real DASH server and a
real controller process serving a NetLLM checkpoint.

The checkpoint is a tiny random Llama body (built from a config with a fixed seed, never downloaded) with a
LoRA adapter, encoder and head, saved to a temporary folder; the controller child process rebuilds it from
the checkpoint's JSON config and safetensors alone. The session is `netllm stream --policy netllm
--policy-options '{"checkpoint": ...}'` run as its own process on the 8-chunk video of the live-session tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from client.stream import Config, run
from netllm.cli import CommandError
from netllm.paths import REPO_ROOT
from tests.test_live_session import (  # noqa: F401  (video_dir is a fixture)
    CHUNKS, SUMMARY_KEYS, check_chunk_log, decision_log, video_dir)
from tests.test_netllm_support import tiny_checkpoint

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SESSION = "t-netllm"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("netllm-live") / "tiny")


def stream(video: Path, out: Path, options: dict, timeout_s: float = 240) -> subprocess.CompletedProcess:
    # A generous decision deadline: the test checks that the policy decided every chunk, and the CPU is
    # shared; the tiny model itself answers in milliseconds.
    cmd = [sys.executable, "-m", "netllm", "stream", "--policy", "netllm", "--policy-options",
           json.dumps(options), "--video", str(video), "--out", str(out), "--session-id", SESSION,
           "--decision-timeout-ms", "5000"]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)


def test_stream_with_the_netllm_policy_end_to_end(video_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = stream(video_dir, out, {"checkpoint": str(checkpoint)})
    controller_log = (out / "controller.log").read_text() if (out / "controller.log").exists() else ""
    assert done.returncode == 0, f"{done.stderr}\ncontroller.log:\n{controller_log[-3000:]}"

    rows = check_chunk_log(out)  # every chunk once, in order, with consistent bitrates and QoE
    assert not any(r["fallback"] for r in rows)
    assert {r["session_id"] for r in rows} == {SESSION} and {r["policy"] for r in rows} == {"netllm"}

    decisions = decision_log(out, SESSION)
    assert sorted(d["chunk_index"] for d in decisions) == list(range(CHUNKS)), "one decision per chunk"
    assert {d["policy"] for d in decisions} == {"netllm"}
    by_chunk = {d["chunk_index"]: d for d in decisions}
    assert [r["quality"] for r in rows] == [by_chunk[i]["quality"] for i in range(CHUNKS)]
    assert all(0 <= d["quality"] < 6 for d in decisions)

    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["chunks"] == CHUNKS and summary["fallback_chunks"] == 0 and summary["ended"] is True
    assert summary["error"] is None and summary["policy"] == "netllm" and summary["network"] == "loopback"
    assert summary["controller_latency_p50_ms"] > 0

    config = json.loads((out / "config.json").read_text())
    assert json.loads(config["policy_options"]) == {"checkpoint": str(checkpoint)}


def test_a_missing_checkpoint_stops_the_session_with_the_controllers_reason(video_dir: Path,
                                                                             tmp_path: Path) -> None:
    done = stream(video_dir, tmp_path / "run", {"checkpoint": str(tmp_path / "nowhere")}, timeout_s=120)
    assert done.returncode == 2
    assert "the controller did not start" in done.stderr and "no NetLLM checkpoint" in done.stderr
    assert not (tmp_path / "run" / "chunks.csv").exists()


@pytest.mark.parametrize("options, controller_url, message", [
    ("{not json", "", "not valid JSON"),
    ('["checkpoint"]', "", "must be a JSON object"),
    ('{"checkpoint": "x"}', "http://127.0.0.1:9", "--controller-url"),
])
def test_bad_policy_options_are_refused_before_anything_starts(video_dir: Path, tmp_path: Path, options: str,
                                                               controller_url: str, message: str) -> None:
    cfg = Config(video=video_dir, policy="netllm", policy_options=options, controller_url=controller_url,
                 out=tmp_path / "run")
    with pytest.raises(CommandError, match=message):
        run(cfg)
    assert not (tmp_path / "run").exists()
