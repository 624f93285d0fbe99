"""N live sessions at once over one emulated network, sharing ONE DASH server and ONE decision service
(`netllm replay --parallel N`).

Why one network with N client hosts (`emulation.multi_link`) rather than N separate networks: the brief is
one server and one controller for every session, and a server can only be reached from the namespaces
wired to it; one bridge with a shaper per client port gives every client its own independent downlink
while they all reach the same server address, and one root-namespace control bridge gives them one
controller address. The network is built once for the whole run (about 2 s saved per session) and each
client host is reused by the sessions of its slot, reset in between (see `MultiClientLink.reset_slot`).
Interface names carry the run id and the slot number (`nl<id>c<k>-eth0`, `nl<id>b-c<k>`), so they never
collide with another run's or with each other.

Per session, everything that is per session in `emulation.live_session` stays so: its own player process
(Playwright + Chromium) in its slot's client host, its own trace replay thread re-rating its own port, its
own folder with the same files and summary keys. The shared services log once, in `shared_dir`:
`server.log`, `controller.log`, `requests.csv` (every request) and `decisions.jsonl` (every decision);
each session folder gets its own `requests.csv` (the shared log's rows from its client address during the
session) and `decisions.jsonl` (the rows with its session id). Summary keys added: `parallel_slot`,
`shared_services` (true).

Interruption: SIGINT/SIGTERM in the main thread stops every slot (players terminated, their partial
sessions finalised, not reported as done), then the network and services are removed. A slot whose link
fails (tc, namespaces) stops the run with that error; a player that fails is a session result.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from emulation.link import LinkConfig, LinkError
from emulation.live_session import PAGE_LOAD_RATE_KBPS, PLAYER_GRACE_S, REPLAY_START_EVENT, \
    SERVER_START_TIMEOUT_S, EventWatcher, _fidelity, _stop_process, read_first_line
from emulation.mininet_compat import MininetMissing
from emulation.multi_link import MultiClientLink
from emulation.replay_loop import TraceReplayer
from emulation.signals import terminate_raises
from netllm.cli import CommandError
from netllm.paths import REPO_ROOT
from traces.bandwidth import BandwidthTrace

THREAD_JOIN_S = 90.0


@dataclass
class SessionJob:
    """One session to run: its place in the run, its folder and its resolved `client.stream.Config`."""
    index: int
    folder: str
    out: Path
    trace: BandwidthTrace
    start_s: float
    stream_cfg: Any


class Interrupted(Exception):
    """The run is being stopped; the session in hand was finalised but did not run to its end."""


DoneCallback = Callable[[SessionJob, dict[str, Any]], None]


def run_shared(jobs: list[SessionJob], video: Any, parallel: int, shared_dir: Path, on_done: DoneCallback,
               rtt_ms: float, link_cfg: LinkConfig | None = None) -> None:
    """Run `jobs` on min(parallel, len(jobs)) slots; `on_done(job, summary)` after each finished session
    (called under a lock, in job-completion order)."""
    if not jobs:
        return
    from client.stream import check_policy_names

    # The shared controller serves every job's policy by name; one it does not know would answer HTTP 400
    # to every decision and the session would silently play the page's fallback.
    check_policy_names(sorted({job.stream_cfg.policy for job in jobs}))
    shared_dir.mkdir(parents=True, exist_ok=True)
    link_cfg = dataclasses.replace(link_cfg or LinkConfig(), initial_rate_kbps=PAGE_LOAD_RATE_KBPS,
                                   rtt_ms=rtt_ms)
    link = MultiClientLink(min(parallel, len(jobs)), link_cfg)
    runner = _SharedRun(link, video, shared_dir, on_done)
    with terminate_raises():
        try:
            link.up()
            runner.start_services(jobs[0].stream_cfg.policy, rtt_ms, Path(jobs[0].stream_cfg.video))
            runner.run(jobs)
        except (LinkError, MininetMissing) as exc:
            raise CommandError(f"emulated network: {exc}") from None
        finally:
            runner.stop_event.set()
            runner.join()
            runner.stop_services()
            link.down()


class _SharedRun:
    def __init__(self, link: MultiClientLink, video: Any, shared_dir: Path, on_done: DoneCallback) -> None:
        self.link, self.video, self.shared_dir, self.on_done = link, video, shared_dir, on_done
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self.controller: Any = None
        self.server: subprocess.Popen | None = None
        self.server_url = ""
        self.controller_url = ""
        self._done_lock = threading.Lock()

    # -- services ------------------------------------------------------------------------------------------
    def start_services(self, default_policy: str, rtt_ms: float, video_dir: Path) -> None:
        from client.session import player_env
        from controller.runner import ControllerLaunchError, launch_controller

        try:
            self.controller = launch_controller(default_policy, host=self.link.control_ip,
                                                decision_log=self.shared_dir / "decisions.jsonl",
                                                stderr_path=self.shared_dir / "controller.log")
        except ControllerLaunchError as exc:
            raise CommandError(f"the controller did not start: {exc}") from None
        self.link.record_process(self.controller.pid, "controller")
        self.controller_url = self.controller.url
        delay_ms = rtt_ms if self.link.rtt_method == "server-first-byte-delay" else 0.0
        argv = [sys.executable, "-m", "server.cli", "--media-root", str(video_dir.resolve()),
                "--host", self.link.cfg.server_ip, "--port", "0",
                "--request-log", str((self.shared_dir / "requests.csv").resolve()),
                "--first-byte-delay-ms", f"{delay_ms:g}"]
        with open(self.shared_dir / "server.log", "ab") as log:
            self.server = self.link.popen_server(argv, "dash server", cwd=REPO_ROOT, env=player_env(),
                                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        line = read_first_line(self.server, SERVER_START_TIMEOUT_S)
        if not line.startswith("serving http://"):
            tail = (self.shared_dir / "server.log").read_text(errors="replace")[-1000:]
            raise CommandError(f"the DASH server did not start in the server host: {line!r} {tail}")
        self.server_url = line.split()[1]

    def stop_services(self) -> None:
        if self.server is not None:
            _stop_process(self.server, grace_s=5.0)
        if self.controller is not None:
            self.controller.stop()

    # -- slots ---------------------------------------------------------------------------------------------
    def run(self, jobs: list[SessionJob]) -> None:
        todo: queue.Queue[SessionJob] = queue.Queue()
        for job in jobs:
            todo.put(job)
        for slot in range(self.link.clients):
            thread = threading.Thread(target=self._slot_loop, args=(slot, todo), name=f"slot-{slot}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)
        while any(t.is_alive() for t in self.threads):
            for t in self.threads:
                t.join(0.2)
        if self.errors:
            error = self.errors[0]
            if isinstance(error, (LinkError, CommandError)):
                raise error
            raise RuntimeError(f"a session slot failed: {type(error).__name__}: {error}") from error

    def join(self) -> None:
        deadline = time.monotonic() + THREAD_JOIN_S
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _slot_loop(self, slot: int, todo: "queue.Queue[SessionJob]") -> None:
        while not self.stop_event.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                summary = self._session(slot, job)
            except Interrupted:
                return
            except BaseException as exc:  # an infrastructure failure: stop every slot
                self.errors.append(exc)
                self.stop_event.set()
                return
            with self._done_lock:
                self.on_done(job, summary)

    def _session(self, slot: int, job: SessionJob) -> dict[str, Any]:
        from client.session import finalize_session, player_command, player_env
        from client.stream import player_spec

        cfg, out = job.stream_cfg, job.out
        out.mkdir(parents=True, exist_ok=True)
        t0, wall0 = time.monotonic(), time.time()
        self.link.reset_slot(slot, PAGE_LOAD_RATE_KBPS)
        spec = player_spec(cfg, self.video, self.server_url, self.controller_url, trace_name=job.trace.name)
        spec_path = spec.write(out / "player_spec.json")
        replayer = TraceReplayer(job.trace, job.start_s, functools.partial(self.link.set_rate_kbps, slot),
                                 out / "rate_log.csv")
        setup_s = time.monotonic() - t0
        with open(out / "player.log", "ab") as log:
            player = self.link.popen_client(slot, player_command(spec_path), "player", cwd=REPO_ROOT,
                                            env=player_env(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        try:
            self._wait(player, replayer, EventWatcher(out / "events.jsonl"),
                       spec.session_timeout_s + PLAYER_GRACE_S)
        finally:
            replayer.stop()
            _stop_process(player)
            self._split_shared_logs(slot, job, wall0)
            extra = self._extra(slot, job, replayer, setup_s)
            summary = finalize_session(out, policy=cfg.policy, trace=job.trace.name, video=str(cfg.video),
                                       network="emulated", extra=extra)
        return summary

    def _wait(self, player: subprocess.Popen, replayer: TraceReplayer, events: EventWatcher,
              timeout_s: float) -> None:
        """`emulation.live_session._wait_player`, plus the run-wide stop."""
        deadline = time.monotonic() + timeout_s
        while player.poll() is None:
            if self.stop_event.is_set():
                raise Interrupted()
            waiting = not replayer.is_alive() and replayer.start_wall_s is None
            if waiting and REPLAY_START_EVENT in events.poll():
                replayer.begin()
            if replayer.error is not None:
                raise LinkError(f"replay loop failed: {replayer.error}")
            if time.monotonic() > deadline:
                return
            time.sleep(0.02 if replayer.start_wall_s is None else 0.2)

    def _extra(self, slot: int, job: SessionJob, replayer: TraceReplayer, setup_s: float) -> dict[str, Any]:
        cfg, link = job.stream_cfg, self.link
        extra: dict[str, Any] = {
            "trace_file": str(cfg.trace), "trace_offset_s": float(cfg.trace_offset_s),
            "trace_start_time_s": job.start_s, "rtt_ms": float(cfg.rtt_ms), "rtt_method": link.rtt_method,
            "link_queue_packets": link.cfg.queue_packets, "link_min_rate_kbit": link.cfg.min_rate_kbit,
            "replay_start_wall_s": replayer.start_wall_s, "rate_changes": replayer.changes,
            "replay_max_lateness_s": replayer.max_lateness_s, "emulation_setup_s": setup_s,
            "controller_url": self.controller_url, "parallel_slot": slot, "shared_services": True,
        }
        try:
            extra.update(_fidelity(job.out, job.trace, job.start_s, replayer.start_wall_s))
        except Exception as exc:  # a diagnostic; never lose the session summary for it
            extra["link_fidelity_error"] = f"{type(exc).__name__}: {exc}"
        return extra

    def _split_shared_logs(self, slot: int, job: SessionJob, wall0: float) -> None:
        """This session's rows of the shared request and decision logs, into its own folder."""
        client_ip = self.link.slots[slot].client_ip
        split_requests(self.shared_dir / "requests.csv", job.out / "requests.csv", client_ip, wall0)
        split_decisions(self.shared_dir / "decisions.jsonl", job.out / "decisions.jsonl",
                        job.stream_cfg.session_id)


def split_requests(shared: Path, out: Path, client_ip: str, since_wall_s: float) -> int:
    """Rows of the shared request log from `client_ip` that arrived after `since_wall_s`; rows written."""
    if not shared.exists():
        return 0
    with open(shared, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    try:
        remote, wall = header.index("remote"), header.index("wall_time_s")
    except ValueError:
        return 0
    mine = []
    for row in body:
        if len(row) != len(header) or row[remote] != client_ip:
            continue  # a half-written last line, or another client's request
        try:
            if float(row[wall]) >= since_wall_s:
                mine.append(row)
        except ValueError:
            continue
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(mine)
    return len(mine)


def split_decisions(shared: Path, out: Path, session_id: str) -> int:
    """Lines of the shared decision log with this session id; lines written."""
    if not shared.exists():
        return 0
    kept = []
    for line in shared.read_text(errors="replace").splitlines():
        try:
            if json.loads(line).get("session_id") == session_id:
                kept.append(line)
        except (ValueError, AttributeError):
            continue
    out.write_text("".join(f"{line}\n" for line in kept))
    return len(kept)
