"""`netllm replay --ray ADDRESS`: every session as one Ray task, each with its own emulated link, DASH server
and controller on the node that runs it (`emulation.live_session.emulated_session`, as a serial replay
runs it; the node needs root, Mininet and Chromium, and the same checkout and video path as the driver).

With `--ray local` the tasks run on this machine (at most `--parallel` at once) and write straight into
`<out>/sessions/<folder>`, so an interrupted task leaves its partial folder where `--resume` finds it.
On a cluster a task writes into a temporary folder on its node and returns the folder's files, which the
driver writes into `<out>/sessions/<folder>`; a cancelled task's partial files stay on its node.
Either way the driver appends the session to the ledger when its task returns (`client.replay_ledger`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from netllm.cli import CommandError

MAX_RETURNED_FILE_BYTES = 256 * 1024 ** 2


def run_ray_sessions(jobs: list[Any], address: str, parallel: int,
                     on_done: Callable[[Any, dict[str, Any]], None]) -> None:
    """Run the SessionJobs as Ray tasks; `on_done(job, summary)` in the driver as each one ends."""
    from netllm.raycluster import LOCAL, ray_session, run_remote

    in_place = address == LOCAL
    payloads = [(job.stream_cfg, job.trace, job.start_s, str(job.out) if in_place else None) for job in jobs]

    def finished(index: int, result: dict[str, Any]) -> None:
        job = jobs[index]
        if not in_place:
            _write_files(job.out, result["files"])
        on_done(job, result["summary"])

    try:
        with ray_session(address, num_cpus=parallel) as ray:
            run_remote(ray, session_task, payloads, "replay", "session", on_result=finished)
    finally:
        if in_place:  # above all after a failure or an interrupt, when a shutdown may kill tasks mid-clean-up
            from emulation.netns_cleanup import cleanup_stale

            cleanup_stale()  # links of tasks whose owner is gone


def session_task(stream_cfg: Any, trace: Any, start_s: float, out: str | None) -> dict[str, Any]:
    """Task body (on the node): one emulated session; its summary, and its files when not written in place."""
    from client.replay import SETUP_ERRORS, setup_failure_summary
    from client.stream import load_session_video
    from emulation.live_session import emulated_session
    from netllm.config import save_config

    if os.geteuid() != 0:
        raise CommandError(f"replay task on {os.uname().nodename}: the link emulator needs root")
    staging = None if out else Path(tempfile.mkdtemp(prefix="netllm-replay-"))
    folder = Path(out) if out else staging / "session"  # type: ignore[operator]
    cfg = dataclasses.replace(stream_cfg, out=folder)
    try:
        video = load_session_video(cfg.video)
        folder.mkdir(parents=True, exist_ok=True)
        save_config(cfg if staging is None else stream_cfg, folder)
        try:
            summary = emulated_session(cfg, video, trace, start_s).summary
        except SETUP_ERRORS as exc:  # this session's failed result, as in a serial replay; the others go on
            job = SimpleNamespace(out=folder, trace=trace, stream_cfg=cfg, start_s=start_s)
            summary = setup_failure_summary(job, exc)
        files = {} if staging is None else _read_files(folder)
        return {"summary": summary, "files": files, "player_exit_code": summary.get("player_exit_code")}
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _read_files(folder: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.stat().st_size <= MAX_RETURNED_FILE_BYTES:
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder = Path(folder)
    for rel, data in files.items():
        target = (folder / rel).resolve()
        if folder.resolve() not in target.parents:  # a task returns relative names only
            raise CommandError(f"replay task returned a file outside its folder: {rel!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
