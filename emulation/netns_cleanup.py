"""Remove what one emulator run created (processes, namespaces, root-namespace links), and only that.

Order matters: processes first (a live process keeps its network namespace alive), then the root-namespace
links (the bridge and the root ends of the veths: deleting one end removes the pair and its qdiscs at once),
then the named namespaces (the kernel destroys a namespace, and any veth still inside, asynchronously). Processes are found twice over: the recorded PIDs (checked against their start time) and
every process whose network namespace *is* one of the run's named namespaces (compared by inode through
the pinned `/run/netns/NAME`), which catches the browser's children that were never recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from emulation.runstate import RunState, list_states, process_alive

NETNS_DIR = Path("/run/netns")


@dataclass
class CleanupReport:
    run_id: str
    killed_pids: list[int] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"run {self.run_id}: killed {len(self.killed_pids)} process(es)",
                 f"removed namespaces {self.namespaces or '-'}", f"links {self.links or '-'}"]
        if self.errors:
            parts.append(f"errors: {'; '.join(self.errors)}")
        return ", ".join(parts)


def pids_in_netns(name: str) -> list[int]:
    """PIDs of processes whose network namespace is the named namespace `name`."""
    try:
        target = os.stat(NETNS_DIR / name)
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        if (ns.st_ino, ns.st_dev) == (target.st_ino, target.st_dev):
            found.append(int(entry))
    return found


def _signal(pid: int, sig: int) -> bool:
    """Signal the process, and its whole process group when it leads one (the processes we start each get
    their own session, so the group is exactly that process and its children, e.g. Chromium's)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def kill_pids(pids: list[int], grace_s: float = 3.0) -> list[int]:
    """SIGTERM, wait up to `grace_s`, then SIGKILL what is left. Returns the PIDs that were signalled."""
    me = os.getpid()
    pids = [p for p in dict.fromkeys(pids) if p != me]
    signalled = [p for p in pids if _signal(p, signal.SIGTERM)]
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(process_alive(p, None) for p in signalled):
        time.sleep(0.05)
    for pid in signalled:
        if process_alive(pid, None):
            _signal(pid, signal.SIGKILL)
    return signalled


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def cleanup_state(state: RunState, grace_s: float = 3.0) -> CleanupReport:
    """Remove every leftover listed in `state`, then its state file."""
    report = CleanupReport(state.run_id)
    recorded = [p.pid for p in state.processes if process_alive(p.pid, p.start_ticks)]
    in_ns = [pid for name in state.namespaces for pid in pids_in_netns(name)]
    report.killed_pids = kill_pids(recorded + in_ns, grace_s)
    # Anything the browser forked while we were waiting.
    late = [pid for name in state.namespaces for pid in pids_in_netns(name)]
    if late:
        report.killed_pids += kill_pids(late, grace_s=0.5)
    # Links before namespaces: deleting a veth's root end removes the pair synchronously.
    for name in state.root_links:
        if Path("/sys/class/net", name).exists():
            out = _ip("link", "delete", name)
            gone = out.returncode == 0 or not Path("/sys/class/net", name).exists()
            (report.links if gone else report.errors).append(
                name if gone else f"link {name}: {out.stderr.strip()}")
    for name in state.namespaces:
        if (NETNS_DIR / name).exists():
            out = _ip("netns", "delete", name)
            (report.namespaces if out.returncode == 0 else report.errors).append(
                name if out.returncode == 0 else f"netns {name}: {out.stderr.strip()}")
    if not report.errors:
        state.remove_file()
    return report


def cleanup_stale(grace_s: float = 3.0) -> list[CleanupReport]:
    """Clean up every run whose owner process is gone (a crash or SIGKILL)."""
    return [cleanup_state(s, grace_s) for s in list_states() if not s.owner_alive()]
