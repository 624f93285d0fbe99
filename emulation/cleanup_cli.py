"""`netllm cleanup`: remove the leftovers of emulator runs that died without cleaning up (e.g. SIGKILL).

Only what a run recorded in its state file (see `emulation.runstate`) is removed: its named namespaces
`nl<id>s`/`nl<id>c`, its bridge `nl<id>b` and control veth `nl<id>r`, and the processes it started or that
live in its namespaces. Runs whose owner process is still alive are listed and left alone unless named
with `--run-id` together with `--force`. Nothing else on the machine is touched (this is not `mn -c`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from netllm.cli import CommandError
from netllm.config import arg


@dataclass
class Config:
    run_id: str = arg("", help="clean only this run id (default: every run whose owner is gone)")
    force: bool = arg(False, help="with --run-id: clean the run even though its owner process is alive")
    dry_run: bool = arg(False, help="list what would be removed, remove nothing")


def run(cfg: Config) -> int:
    from emulation.netns_cleanup import cleanup_state
    from emulation.runstate import list_states, state_dir

    if os.geteuid() != 0:
        raise CommandError("cleanup needs root (it removes network namespaces and interfaces)")
    states = list_states()
    if cfg.run_id:
        states = [s for s in states if s.run_id == cfg.run_id]
        if not states:
            raise CommandError(f"no run-state file for run id {cfg.run_id!r} in {state_dir()}")
    if not states:
        print(f"nothing to clean up (no run-state files in {state_dir()})")
        return 0
    for state in states:
        what = (f"run {state.run_id} (owner pid {state.owner_pid}): namespaces {state.namespaces}, "
                f"links {state.root_links}, {len(state.processes)} recorded process(es)")
        if state.owner_alive() and not (cfg.run_id and cfg.force):
            print(f"in use, left alone: {what}")
            continue
        if cfg.dry_run:
            print(f"would remove: {what}")
            continue
        print(cleanup_state(state).describe())
    return 0
