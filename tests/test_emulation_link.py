"""The Mininet link emulator: bring-up/tear-down, HTB shaping that follows a stepped trace, clean-up after
SIGTERM and SIGKILL (only this run's objects), `netllm cleanup`. Needs root, Mininet and tc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emulation.fidelity import payload_factor
from netllm.paths import REPO_ROOT
from traces.generators import stepped
from traces.readers import write_cooked

pytestmark = pytest.mark.emulation


def _prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    from emulation.mininet_compat import MininetMissing, import_mininet

    try:
        import_mininet()
    except MininetMissing as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module", autouse=True)
def _needs_root_and_mininet() -> None:
    reason = _prerequisites()
    if reason:
        pytest.skip(reason)


@pytest.fixture()
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private run-state folder, so these tests never see (or clean) other runs' state files."""
    path = tmp_path / "runstate"
    monkeypatch.setenv("NETLLM_RUN_DIR", str(path))
    return path


def _netns_names() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _leftovers(prefix: str) -> list[str]:
    return sorted(n for n in _netns_names() | _links() if n.startswith(prefix))


# ---- link ----------------------------------------------------------------------------------------------

def test_link_up_down_leaves_nothing(run_dir: Path) -> None:
    from emulation.link import EmulatedLink, LinkConfig

    link = EmulatedLink(LinkConfig(initial_rate_kbps=1500))
    link.up()
    prefix = link.prefix
    try:
        assert {f"{prefix}s", f"{prefix}c"} <= _netns_names()
        assert {f"{prefix}b", f"{prefix}b-c", f"{prefix}b-s", f"{prefix}r"} <= _links()
        tc = subprocess.run(["tc", "class", "show", "dev", link.shaped_dev], capture_output=True,
                            text=True).stdout
        assert "rate 1500Kbit" in tc or "rate 1.5Mbit" in tc
        assert link.set_rate_kbps(0) == 8000  # zero bandwidth -> the floor
        assert link.set_rate_kbps(50_000) == 50_000_000
        state_file = run_dir / f"{link.state.run_id}.json"  # type: ignore[union-attr]
        assert state_file.exists()
        proc = link.popen("client", ["sleep", "600"], "sleeper")
    finally:
        report = link.down()
    assert _leftovers(prefix) == []
    assert not state_file.exists()
    assert proc.wait(timeout=5) != 0  # it was killed
    assert report is not None and not report.errors
    assert link.down() is report  # idempotent


def _start_http(link, directory: Path) -> subprocess.Popen:
    server = link.popen("server", [sys.executable, "-m", "http.server", "8000", "--bind", link.cfg.server_ip,
                                   "--directory", str(directory)], "http server")
    for _ in range(50):
        out = subprocess.run(["ip", "netns", "exec", link.client_ns, sys.executable, "-c",
                              f"import socket; socket.create_connection(('{link.cfg.server_ip}', 8000), 1)"],
                             capture_output=True)
        if out.returncode == 0:
            return server
        time.sleep(0.1)
    raise AssertionError("http server did not come up")


DOWNLOADER = """
import sys, time, urllib.request
url, out, stop_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(out, 'w', buffering=1) as fh, urllib.request.urlopen(url) as resp:
    total = 0
    while time.time() < stop_at:
        data = resp.read(16384)
        if not data:
            break
        total += len(data)
        fh.write(f"{time.time():.6f},{total}\\n")
"""


def test_http_throughput_follows_stepped_trace(run_dir: Path, tmp_path: Path) -> None:
    """A plain HTTP download across the link: in every step the goodput is the step's rate times the
    TCP payload factor, within 5%."""
    from emulation.link import EmulatedLink, LinkConfig
    from emulation.replay_loop import TraceReplayer

    warmup = (3.0, 2.0)  # the downloader starts up (a Python process) during this step; not measured
    steps = [(6.0, 2.0), (6.0, 0.6), (6.0, 5.0), (6.0, 1.0)]
    trace = stepped([warmup, *steps])
    media = tmp_path / "media"
    media.mkdir()
    (media / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    samples_csv = tmp_path / "samples.csv"
    with EmulatedLink(LinkConfig(initial_rate_kbps=2000)) as link:
        _start_http(link, media)
        replayer = TraceReplayer(trace, 0.0, link.set_rate_kbps, tmp_path / "rate_log.csv").begin()
        stop_at = replayer.start_wall_s + trace.duration_s  # type: ignore[operator]
        subprocess.run(["ip", "netns", "exec", link.client_ns, sys.executable, "-c", DOWNLOADER,
                        f"http://{link.cfg.server_ip}:8000/big.bin", str(samples_csv), str(stop_at)],
                       check=True, timeout=60)
        replayer.stop()
        start = replayer.start_wall_s
        assert replayer.error is None and replayer.changes >= len(steps)
        # How late the changes land is a figure of benchmarks/bench_fidelity.py; here the goodput below,
        # step by step, fails if they land late.
    data = np.loadtxt(samples_csv, delimiter=",")
    t, total = data[:, 0] - start, data[:, 1]
    edge = warmup[0]
    errors = []
    for duration, mbps in steps:
        a, b = edge + 1.0, edge + duration - 0.2  # let the queue settle after each change
        ia, ib = np.searchsorted(t, a), np.searchsorted(t, b) - 1
        measured = (total[ib] - total[ia]) * 8 / 1000 / (t[ib] - t[ia])
        expected = mbps * 1000 * payload_factor()
        errors.append((measured - expected) / expected)
        edge += duration
    rate_log = (tmp_path / "rate_log.csv").read_text().splitlines()
    assert rate_log[0].startswith("wall_time_s,") and len(rate_log) >= 5
    assert max(abs(e) for e in errors) < 0.05, errors


# ---- clean-up after signals ------------------------------------------------------------------------------

def _start_tool(trace_file: Path, env: dict[str, str], hold_s: float = 120) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "emulation.link_tool", "--trace", str(trace_file),
                             "--hold-s", str(hold_s)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line:
        proc.kill()
        raise AssertionError(f"link tool failed: {proc.stderr.read()}")  # type: ignore[union-attr]
    return proc, json.loads(line)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def test_sigterm_removes_everything(run_dir: Path, tmp_path: Path) -> None:
    trace_file = write_cooked(stepped([(2, 1), (2, 3)]), tmp_path / "t")
    proc, info = _start_tool(trace_file, {**os.environ, "NETLLM_RUN_DIR": str(run_dir)})
    prefix = "nl" + info["run_id"]
    assert _leftovers(prefix)
    time.sleep(2.5)  # a rate change or two
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert _leftovers(prefix) == []
    assert not any(_alive(p) for p in info["pids"])
    assert list(run_dir.glob("*.json")) == []


@pytest.fixture()
def unrelated_objects() -> tuple[str, str]:
    """An interface (a veth pair: this kernel has no dummy driver) and a namespace this project did not
    create; they must survive every clean-up."""
    iface, netns = f"h4keep{os.getpid() % 10000}", f"h4keepns{os.getpid() % 10000}"
    subprocess.run(["ip", "link", "add", iface, "type", "veth", "peer", "name", iface + "p"], check=True)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    yield iface, netns
    subprocess.run(["ip", "link", "del", iface], capture_output=True)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True)


@pytest.mark.parametrize("how", ["netllm-cleanup", "next-start"])
def test_sigkill_leftovers_removed_and_only_those(run_dir: Path, tmp_path: Path,
                                                  unrelated_objects: tuple[str, str], how: str) -> None:
    iface, netns = unrelated_objects
    trace_file = write_cooked(stepped([(2, 1), (2, 3)]), tmp_path / "t")
    env = {**os.environ, "NETLLM_RUN_DIR": str(run_dir)}
    proc, info = _start_tool(trace_file, env)
    prefix = "nl" + info["run_id"]
    proc.kill()
    proc.wait(timeout=10)
    time.sleep(0.5)
    # A crash leaves the pinned namespaces, the bridge, the stand-in processes and the state file behind.
    assert {f"{prefix}s", f"{prefix}c", f"{prefix}b"} <= set(_leftovers(prefix))
    assert any(_alive(p) for p in info["pids"])
    assert (run_dir / f"{info['run_id']}.json").exists()
    if how == "netllm-cleanup":
        out = subprocess.run([sys.executable, "-m", "netllm", "cleanup"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert info["run_id"] in out.stdout
    else:
        proc2, info2 = _start_tool(trace_file, env, hold_s=0.5)
        assert proc2.wait(timeout=60) == 0
        assert info2["run_id"] != info["run_id"]
        assert _leftovers("nl" + info2["run_id"]) == []
    assert _leftovers(prefix) == []
    assert not any(_alive(p) for p in info["pids"])
    assert list(run_dir.glob("*.json")) == []
    assert iface in _links() and netns in _netns_names()


def test_cleanup_leaves_live_runs_alone(run_dir: Path, tmp_path: Path) -> None:
    trace_file = write_cooked(stepped([(2, 1), (2, 3)]), tmp_path / "t")
    env = {**os.environ, "NETLLM_RUN_DIR": str(run_dir)}
    proc, info = _start_tool(trace_file, env)
    try:
        out = subprocess.run([sys.executable, "-m", "netllm", "cleanup"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "in use, left alone" in out.stdout
        assert {f"nl{info['run_id']}s", f"nl{info['run_id']}c"} <= _netns_names()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert _leftovers("nl" + info["run_id"]) == []
