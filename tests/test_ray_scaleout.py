"""`--ray`: a private local Ray instance (loopback only), `netllm sim` trace shards as Ray tasks giving the
same results as a serial run, and `netllm replay --ray local` sessions landing in one results folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from netllm.cli import CommandError
from netllm.paths import REPO_ROOT

pytest.importorskip("ray")

from netllm.raycluster import ray_session, run_remote  # noqa: E402

TIMING_COLUMNS = ["decision_latency_ms"]
"""Wall-clock measurements in a simulated chunk log: the only columns allowed to differ between runs."""


def test_ray_address_required() -> None:
    with pytest.raises(CommandError, match="--ray needs an address"):
        with ray_session(""):
            pass


def test_local_instance_is_loopback_only_and_returns_in_order() -> None:
    with ray_session("local", num_cpus=2) as ray:
        assert ray.cluster_resources()["CPU"] == 2
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        seen: list[int] = []
        results = run_remote(ray, pow, [(2, 3), (3, 2), (5, 1)], "pow", "task",
                             on_result=lambda i, _: seen.append(i))
    assert results == [8, 9, 5] and sorted(seen) == [0, 1, 2]
    assert not ray.is_initialized()


def test_a_failing_task_raises_its_own_exception_not_rays_wrapper(tmp_path: Path) -> None:
    """A task's error reaches the caller as what the task raised: same type, same one-line message (Ray's
    wrapper is a multi-line, colour-coded traceback, which the CLI would print for a user error)."""
    from emulation.abr_sim_cli import trace_paths
    from traces.bandwidth import TraceError
    from traces.readers import read_trace

    missing = tmp_path / "nowhere"
    failing = [(trace_paths, (missing,), CommandError, f"{missing}: neither a trace directory"),
               (read_trace, (missing,), TraceError, f"{missing}: no such trace file"),
               (int, ("x",), ValueError, "invalid literal for int() with base 10: 'x'")]
    with ray_session("local", num_cpus=2) as ray:
        for fn, args, kind, message in failing:
            with pytest.raises(kind) as caught:
                run_remote(ray, fn, [args], "fail", "task")
            assert type(caught.value) is kind and not isinstance(caught.value, ray.exceptions.RayTaskError)
            assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
            assert "\x1b[" not in str(caught.value)


def _sim(shared_data: Path, traces: Path, out: Path, **options: object) -> Path:
    from emulation.abr_sim_cli import Config, run

    cfg = Config(traces=traces, video=shared_data / "abr" / "videos" / "video1_sizes", out=out,
                 policies=["bba", "robustmpc"], chunks=12, **options)  # type: ignore[arg-type]
    assert run(cfg) == 0
    return out


def test_sim_with_ray_equals_serial(shared_data: Path, tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    for path in sorted((shared_data / "abr" / "traces" / "fcc-test").iterdir())[:5]:
        shutil.copy(path, traces / path.name)
    serial = _sim(shared_data, traces, tmp_path / "serial", workers=1)
    spread = _sim(shared_data, traces, tmp_path / "ray", workers=2, ray="local")
    summaries = [json.loads((d / "summary.json").read_text()) for d in (serial, spread)]
    assert summaries[0] == summaries[1]
    assert (serial / "sessions.csv").read_text() == (spread / "sessions.csv").read_text()
    a, b = (pd.read_parquet(d / "chunks.parquet").drop(columns=TIMING_COLUMNS) for d in (serial, spread))
    assert len(a) == 2 * 5 * 12
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.emulation
@pytest.mark.browser
@pytest.mark.slow
def test_replay_with_ray_local(tmp_path: Path) -> None:
    from tests.test_fidelity_live import emulation_prerequisites, prepare_small_video
    from traces.generators import constant
    from traces.readers import write_cooked

    reason = emulation_prerequisites()
    if reason:
        pytest.skip(reason)
    video = prepare_small_video(tmp_path / "video", 3)
    traces = tmp_path / "traces"
    write_cooked(constant(50.0, duration_s=60), traces / "a_fast")
    write_cooked(constant(50.0, duration_s=60), traces / "b_fast")
    out = tmp_path / "replay"
    run_dir = tmp_path / "runstate"
    done = subprocess.run([sys.executable, "-m", "netllm", "replay", "--traces", str(traces), "--policies",
                           "bba", "--video", str(video), "--out", str(out), "--ray", "local",
                           "--parallel", "2"],
                          cwd=REPO_ROOT, env={**os.environ, "NETLLM_RUN_DIR": str(run_dir)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["ray"] == "local"
    assert [(s["trace"], s["policy"], s["chunks"], s["player_exit_code"]) for s in summary["sessions"]] == [
        ("a_fast", "bba", 3, 0), ("b_fast", "bba", 3, 0)]
    for s in summary["sessions"]:
        folder = out / "sessions" / s["folder"]
        for name in ("summary.json", "chunks.csv", "rate_log.csv", "decisions.jsonl", "controller.log"):
            assert (folder / name).exists(), name  # its own link, server and controller
    chunks = pd.read_parquet(out / "chunks.parquet")
    assert len(chunks) == 6 and not chunks.duplicated(["session_id", "chunk_index"]).any()
    assert list(run_dir.glob("*.json")) == []


def test_a_ray_session_whose_set_up_fails_is_its_failed_result(tmp_path: Path, monkeypatch) -> None:
    """As in a serial replay: the failure is the session's result, and the other sessions still run."""
    import emulation.live_session as live_session
    from client.replay_ray import session_task
    from client.stream import Config
    from traces.generators import constant

    def no_link(*args: object, **kwargs: object) -> object:
        raise CommandError("emulated link: `ip link add` failed")

    monkeypatch.setattr(live_session, "emulated_session", no_link)
    monkeypatch.setattr("client.stream.load_session_video", lambda video: None)
    cfg = Config(video=tmp_path / "video", policy="bba", out=tmp_path / "unused", session_id="s2")
    result = session_task(cfg, constant(5.0, duration_s=10, name="t"), 0.0, str(tmp_path / "s2"))
    assert result["player_exit_code"] is None
    assert "session set-up failed: emulated link" in result["summary"]["error"]
    assert json.loads((tmp_path / "s2" / "summary.json").read_text())["error"] == result["summary"]["error"]


def test_ray_replay_cleans_up_stale_links_even_when_it_fails(monkeypatch) -> None:
    import emulation.netns_cleanup as netns_cleanup
    import netllm.raycluster as raycluster
    from client.replay_ray import run_ray_sessions

    cleaned: list[bool] = []
    monkeypatch.setattr(netns_cleanup, "cleanup_stale", lambda: cleaned.append(True))

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(raycluster, "run_remote", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_ray_sessions([], "local", 1, lambda job, summary: None)
    assert cleaned == [True]
