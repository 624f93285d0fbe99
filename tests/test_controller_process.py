"""The controller as its own process: the CLI's URL line, crash and restart, clean shutdown, start-up
errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from controller.runner import (
    ControllerLaunchError,
    controller_command,
    launch_controller,
    launch_controller_async,
)
from netllm.paths import REPO_ROOT
from tests.test_controller_app import observation_doc


def decide(url: str, doc: dict) -> dict:
    req = urllib.request.Request(url + "/v1/abr/decide", data=json.dumps(doc).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_kill_mid_session_then_restart(tmp_path) -> None:
    log_file = tmp_path / "decisions.jsonl"
    proc = launch_controller(policy="robustmpc", decision_log=log_file)
    try:
        assert proc.url.startswith("http://127.0.0.1:") and proc.alive()
        for chunk in range(3):
            assert decide(proc.url, observation_doc(chunk, [2000.0] * chunk))["policy"] == "robustmpc"
        assert proc.kill() == -9  # a crash: no clean-up runs
        assert not proc.alive()
        with pytest.raises(urllib.error.URLError):
            decide(proc.url, observation_doc(3))
        # every decision made before the crash is in the log, one JSON object per line
        assert [json.loads(line)["chunk_index"] for line in log_file.read_text().splitlines()] == [0, 1, 2]
    finally:
        proc.stop()
    with launch_controller(policy="bba", decision_log=log_file) as again:
        assert decide(again.url, observation_doc(3, buffer_s=20.0))["quality"] == 5
    assert again.returncode == 0  # SIGTERM is a clean shutdown
    assert len(log_file.read_text().splitlines()) == 4


def test_start_up_errors_carry_the_message() -> None:
    with pytest.raises(ControllerLaunchError, match="unknown policy 'nope'"):
        launch_controller(policy="nope")
    with pytest.raises(ControllerLaunchError, match="could not be built"):
        launch_controller(policy="bba", extra_args=["--policy-options", '{"cushion_s": 0}'])


def test_torch_threads_limit() -> None:
    with pytest.raises(ControllerLaunchError, match="--torch-threads must be >= 0"):
        launch_controller(policy="bba", extra_args=["--torch-threads", "-1"])
    # torch is not imported when the controller starts; the limit must still hold once a policy imports it.
    probe = ("import os, sys; os.environ.pop('OMP_NUM_THREADS', None); from controller.cli import "
             "limit_torch_threads; limit_torch_threads(1); assert 'torch' not in sys.modules; import torch; "
             "print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_port_in_use_is_a_clear_error() -> None:
    with launch_controller(policy="bba") as first:
        port = first.url.rsplit(":", 1)[1]
        with pytest.raises(ControllerLaunchError, match="cannot listen"):
            launch_controller(policy="bba", port=int(port))


def test_netllm_cli_prints_the_url() -> None:
    cmd = [str(REPO_ROOT / ".venv" / "bin" / "netllm"), "serve-controller", "--policy", "rb", "--port", "0"]
    if not (REPO_ROOT / ".venv" / "bin" / "netllm").exists():
        cmd = [sys.executable, "-m", "netllm.cli", "serve-controller", "--policy", "rb", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("controller http://127.0.0.1:")
        url = line.split(" ", 1)[1].strip()
        with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
            assert json.loads(resp.read())["default_policy"] == "rb"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_controller_command_shape(tmp_path) -> None:
    cmd = controller_command("bba", "127.0.0.1", 0, tmp_path / "x.jsonl", ["--max-sessions", "8"])
    assert cmd[1:3] == ["-m", "controller.cli"]
    assert cmd[cmd.index("--decision-log") + 1] == str((tmp_path / "x.jsonl").resolve())
    assert cmd[-2:] == ["--max-sessions", "8"]


async def test_async_launch() -> None:
    proc = await launch_controller_async(policy="bola")
    try:
        with urllib.request.urlopen(proc.url + "/v1/policies", timeout=10) as resp:
            assert json.loads(resp.read())["default"] == "bola"
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("port", [-5, 65536, 99999])
def test_a_port_out_of_range_is_a_user_error(port: int) -> None:
    from controller.app import ControllerConfig
    from controller.cli import run
    from netllm.cli import CommandError

    with pytest.raises(CommandError, match="--port must be in 0..65535"):
        run(ControllerConfig(policy="bba", port=port))
