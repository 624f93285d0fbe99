"""Per-run state files: what an emulator run created, so that a crashed run's leftovers can be removed.

Every emulated link run gets a short random id; everything it creates carries the prefix `nl<id>`:
named network namespaces (`ip netns`, so they show in `ip netns list`), the bridge and the root-namespace
end of the control veth. Before creating anything the run records its *planned* names in
`<state dir>/<id>.json`, and every process it starts is added with its kernel start time (so a recycled
PID is never mistaken for ours). The file names its owner (PID + start time). A file whose owner is gone
is stale: `emulation.netns_cleanup` removes exactly the objects it lists, never anything else.

State dir: `$NETLLM_RUN_DIR`, else `/run/netllm-testbed` (tmpfs, so it is cleared on reboot together with
the namespaces it describes).
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RUN_ID_ALPHABET = string.ascii_lowercase + string.digits
RUN_ID_LENGTH = 5
"""`nl` + 5 + a role letter + `-eth0` = 13 characters, within Linux's 15-character interface names."""


def state_dir() -> Path:
    return Path(os.environ.get("NETLLM_RUN_DIR", "/run/netllm-testbed"))


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[19])


def process_alive(pid: int, start_ticks: int | None) -> bool:
    """True if PID runs and is the same process (same start time) we recorded; zombies count as gone."""
    current = process_start_ticks(pid)
    if current is None or (start_ticks is not None and current != start_ticks):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


@dataclass
class ProcessRecord:
    pid: int
    start_ticks: int | None
    what: str


@dataclass
class RunState:
    run_id: str
    owner_pid: int
    owner_start_ticks: int | None
    created_unix_s: float
    namespaces: list[str] = field(default_factory=list)
    """Named network namespaces (ip netns) this run created or is about to create."""
    root_links: list[str] = field(default_factory=list)
    """Interfaces in the root namespace (bridge, control veth end) this run created or is about to create."""
    processes: list[ProcessRecord] = field(default_factory=list)
    path: Path | None = field(default=None, compare=False)

    @property
    def prefix(self) -> str:
        return f"nl{self.run_id}"

    def owner_alive(self) -> bool:
        return process_alive(self.owner_pid, self.owner_start_ticks)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("path")
        return doc

    def save(self) -> None:
        """Atomic write (rename), so a crash never leaves a half-written state file."""
        assert self.path is not None
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, self.path)

    def add_namespace(self, name: str) -> None:
        self.namespaces.append(name)
        self.save()

    def add_root_link(self, name: str) -> None:
        self.root_links.append(name)
        self.save()

    def add_process(self, pid: int, what: str) -> None:
        self.processes.append(ProcessRecord(pid, process_start_ticks(pid), what))
        self.save()

    def remove_file(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _name_taken(prefix: str) -> bool:
    netns = Path("/run/netns")
    if netns.is_dir() and any(p.name.startswith(prefix) for p in netns.iterdir()):
        return True
    return any(p.name.startswith(prefix) for p in Path("/sys/class/net").iterdir())


def new_run_state() -> RunState:
    """A fresh run id whose prefix no interface, namespace or state file uses; its file is written."""
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        run_id = "".join(secrets.choice(RUN_ID_ALPHABET) for _ in range(RUN_ID_LENGTH))
        path = directory / f"{run_id}.json"
        if path.exists() or _name_taken(f"nl{run_id}"):
            continue
        me = os.getpid()
        state = RunState(run_id, me, process_start_ticks(me), time.time(), path=path)
        state.save()
        return state
    raise RuntimeError(f"could not find a free run id in {directory}")


def load_state(path: Path) -> RunState:
    doc = json.loads(path.read_text())
    procs = [ProcessRecord(**p) for p in doc.pop("processes", [])]
    return RunState(**doc, processes=procs, path=path)


def list_states() -> list[RunState]:
    """Every readable state file (unreadable ones are reported by name and skipped)."""
    directory = state_dir()
    if not directory.is_dir():
        return []
    states = []
    for path in sorted(directory.glob("*.json")):
        try:
            states.append(load_state(path))
        except (OSError, ValueError, TypeError) as exc:
            print(f"netllm: ignoring unreadable run-state file {path}: {exc}")
    return states
