"""Emulated live sessions that end badly: SIGTERM mid-session, SIGKILL then `netllm cleanup`, a crashed
browser. In every case no namespace, interface, bridge or process of the session may remain (and nothing
else may be touched), and the chunk rows written before stay intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulation.netns_cleanup import pids_in_netns
from emulation.runstate import list_states
from netllm.chunklog import read_chunk_log
from netllm.paths import REPO_ROOT
from tests.test_fidelity_live import emulation_prerequisites, prepare_small_video
from traces.generators import constant
from traces.readers import write_cooked

pytestmark = [pytest.mark.emulation, pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = emulation_prerequisites()
    if reason:
        pytest.skip(reason)
    return prepare_small_video(tmp_path_factory.mktemp("session") / "video", 12)


class Session:
    """A `netllm stream --trace` child process with its own run-state folder."""

    def __init__(self, video: Path, tmp_path: Path) -> None:
        self.out = tmp_path / "session"
        self.run_dir = tmp_path / "runstate"
        self.env = {**os.environ, "NETLLM_RUN_DIR": str(self.run_dir)}
        trace = write_cooked(constant(1.5, duration_s=120), tmp_path / "flat.txt")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netllm", "stream", "--video", str(video), "--policy", "bba", "--trace",
             str(trace), "--out", str(self.out)], cwd=REPO_ROOT, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.namespace_ids: dict[str, tuple[int, int]] = {}

    def wait_rows(self, rows: int, timeout_s: float = 180) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()[-3000:]  # type: ignore[union-attr]
            path = self.out / "chunks.csv"
            if path.exists() and len(found := read_chunk_log(path)) >= rows:
                return found
            time.sleep(0.2)
        raise AssertionError(f"fewer than {rows} chunk rows after {timeout_s} s")

    def snapshot(self) -> dict:
        """The live run's state: namespaces (with their inodes), root links, recorded PIDs."""
        (state,) = list_states_in(self.run_dir)
        for name in state.namespaces:
            st = os.stat(f"/run/netns/{name}")
            self.namespace_ids[name] = (st.st_ino, st.st_dev)
        return {"prefix": state.prefix, "namespaces": list(state.namespaces), "links": list(state.root_links),
                "pids": [p.pid for p in state.processes],
                "ns_pids": [pid for ns in state.namespaces for pid in pids_in_netns(ns)]}

    def processes_in_old_namespaces(self) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    st = os.stat(f"/proc/{entry}/ns/net")
                except OSError:
                    continue
                if (st.st_ino, st.st_dev) in self.namespace_ids.values():
                    found.append(int(entry))
        return found


def list_states_in(run_dir: Path):
    old = os.environ.get("NETLLM_RUN_DIR")
    os.environ["NETLLM_RUN_DIR"] = str(run_dir)
    try:
        return list_states()
    finally:
        if old is None:
            del os.environ["NETLLM_RUN_DIR"]
        else:
            os.environ["NETLLM_RUN_DIR"] = old


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _leftovers(prefix: str) -> list[str]:
    names = set(os.listdir("/sys/class/net")) | (set(os.listdir("/run/netns")) if os.path.isdir("/run/netns")
                                                  else set())
    return sorted(n for n in names if n.startswith(prefix))


def assert_gone(session: Session, snap: dict) -> None:
    assert _leftovers(snap["prefix"]) == []
    assert [p for p in snap["pids"] + snap["ns_pids"] if _alive(p)] == []
    assert session.processes_in_old_namespaces() == []
    assert list(session.run_dir.glob("*.json")) == []


def test_sigterm_mid_session(video_dir: Path, tmp_path: Path) -> None:
    session = Session(video_dir, tmp_path)
    before = session.wait_rows(2)
    snap = session.snapshot()
    assert len(snap["ns_pids"]) > 3  # server, player, Chromium's processes, the hosts' shells
    session.proc.send_signal(signal.SIGTERM)
    assert session.proc.wait(timeout=90) == 128 + signal.SIGTERM
    assert_gone(session, snap)
    after = read_chunk_log(session.out / "chunks.csv")
    assert after[: len(before)] == before  # rows written before the signal are intact
    assert (session.out / "summary.json").exists() and (session.out / "rate_log.csv").exists()


@pytest.fixture()
def unrelated_objects() -> tuple[str, str]:
    iface, netns = f"h4keep{os.getpid() % 10000}", f"h4keepns{os.getpid() % 10000}"
    subprocess.run(["ip", "link", "add", iface, "type", "veth", "peer", "name", iface + "p"], check=True)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    yield iface, netns
    subprocess.run(["ip", "link", "del", iface], capture_output=True)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def test_sigkill_then_netllm_cleanup(video_dir: Path, tmp_path: Path,
                                     unrelated_objects: tuple[str, str]) -> None:
    iface, netns = unrelated_objects
    session = Session(video_dir, tmp_path)
    before = session.wait_rows(1)
    snap = session.snapshot()
    session.proc.kill()
    session.proc.wait(timeout=10)
    assert _leftovers(snap["prefix"])  # a SIGKILL leaves the run's namespaces and links behind...
    # ...but not its processes: the player and the DASH server get the parent-death signal, the hosts'
    # shells read end-of-file (the player closes Chromium first, hence the wait)
    deadline = time.monotonic() + 30.0
    while any(_alive(p) for p in snap["ns_pids"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in snap["ns_pids"] if _alive(p)]
    out = subprocess.run([sys.executable, "-m", "netllm", "cleanup"], cwd=REPO_ROOT, env=session.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert_gone(session, snap)  # ...and `netllm cleanup` removes all of it
    assert iface in os.listdir("/sys/class/net") and netns in os.listdir("/run/netns")
    assert read_chunk_log(session.out / "chunks.csv")[: len(before)] == before


def test_crashed_browser_ends_the_session_cleanly(video_dir: Path, tmp_path: Path) -> None:
    session = Session(video_dir, tmp_path)
    session.wait_rows(1)
    snap = session.snapshot()
    client_ns = next(ns for ns in snap["namespaces"] if ns.endswith("c"))
    browsers = [pid for pid in pids_in_netns(client_ns)
                if b"chrom" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]]
    assert browsers
    for pid in browsers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert session.proc.wait(timeout=120) == 1
    assert_gone(session, snap)
    summary = (session.out / "summary.json").read_text()
    assert '"player_exit_code": 1' in summary
