"""`netllm replay`: stream a trace set with several policies over the emulated link, one live session per
(trace, policy): one after another, N at once, or spread over a Ray cluster.

    netllm replay --traces DIR --policies bba,robustmpc --video DIR --out runs/replay [--rtt-ms 80]
                  [--trace-offset-s S | --start-offsets FILE] [--limit N] [--parallel N] [--ray ADDRESS]
                  [--resume]

Traces are read with `traces.readers.read_trace_dir` (sorted file-name order); for each trace every policy
runs in turn (so policies see the same link conditions close together in time). `--start-offsets` takes a
NetLLM-style file (`trace_file start_index` per line, `#` comments; e.g. abr/fcc-test-start-offsets.txt):
that trace starts at that sample index; traces it does not list start at `--trace-offset-s`.

How sessions run:
    --parallel 1             one after another, each with its own network, server and controller
                             (emulation.live_session.emulated_session)
    --parallel N (N > 1)     N at once over one network with N client hosts, each with its own shaped
                             downlink and trace replay, sharing ONE DASH server and ONE controller
                             (emulation.parallel; their logs in <out>/shared/)
    --ray ADDRESS            one Ray task per session, each with its own network, server and controller on
                             its node (client.replay_ray); `local` = a private instance on this machine
                             running --parallel tasks at once
Whichever way, the merged outputs are the same, rows in run order (trace, then policy).

Outputs in `--out`:
    sessions/<trace>__<policy>/   each session's folder (see emulation.live_session); <trace> is the trace
                                  file's path under --traces; where characters had to be replaced to make a
                                  folder name (spaces, `/` of a subfolder), `-<8 hex digits>` of a hash of
                                  the original follows, so two traces never share a folder
    sessions.jsonl                the ledger: one line per finished session (see client.replay_ledger)
    sessions.csv                  the sessions table: one row per finished session (SESSION_KEYS + folder)
    chunks.parquet                every chunk row of every finished session (netllm.chunklog.COLUMNS)
    summary.json                  {"sessions": [one row per session], "policies": {policy: aggregates},
                                  "complete", "jobs", "interrupted_sessions", "parallel", "ray",
                                  "wall_s", ...}
                                  aggregates: sessions, failed, and the mean over sessions of mean_qoe (the
                                  NetLLM figure: mean over traces of the per-session mean per-chunk QoE), of
                                  mean_bitrate_kbps, total_rebuffer_s, rebuffer_ratio, startup_delay_s,
                                  switches, fallback_chunks, link_fidelity_median_abs_rel_error
    interrupted/, interrupted.jsonl   partial folders of interrupted sessions, moved aside by --resume
    failed_starts/, failed_starts.jsonl   folders of attempts whose player failed before the first chunk,
                                  moved aside before the session was run again (--retries)
    config.json
Policy names are checked against the controller's registry before anything runs (exit status 2). A failed
session is recorded (error, player_exit_code) and the run goes on: that includes a session whose set-up
failed (link, controller or server; player_exit_code null, error says why) and one whose every chunk played
the page's fallback (the controller decided none); `failed` in the aggregates counts them, and the exit
status is 1 when any session failed. A session whose player failed
before logging a single chunk (the browser or the page did not start: a fault of the machine, not a result
of the policy or the trace) is run again, up to --retries times, after every other session, its failed
attempt kept in failed_starts/ and listed under `failed_starts` in summary.json. Ctrl-C or SIGTERM stops it after
writing the summary of the sessions done. `--resume` on the same --out runs only what is not in the ledger
(an unfinished session's folder is moved aside and the session redone from scratch); without --resume an
--out that already holds a replay is refused, so two runs' rows are never mixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from netllm.cli import CommandError
from netllm.config import arg, save_config
from netllm.paths import default_video_dir

AGGREGATED_KEYS = ("mean_qoe", "mean_qoe_all_chunks", "mean_bitrate_kbps", "total_rebuffer_s",
                   "rebuffer_ratio", "startup_delay_s", "switches", "fallback_chunks",
                   "decision_latency_p50_ms", "link_fidelity_median_abs_rel_error")
SESSION_KEYS = ("trace", "policy", "session_id", "chunks", "player_exit_code", "error", "trace_start_time_s",
                "rtt_method", *AGGREGATED_KEYS)


@dataclass
class Config:
    traces: Path = arg(help="folder of bandwidth traces (cooked, Mahimahi or Sabre; see traces.readers)")
    policies: list[str] = arg(["bba", "robustmpc"], help="ABR policies, comma separated")
    video: Path = arg(default_video_dir(), help="prepared video folder")
    out: Path | None = arg(None, help="output folder (default runs/replay-<timestamp>)")
    pattern: str = arg("*", help="file-name pattern of the traces in --traces")
    limit: int = arg(0, help="use only the first N traces (0 = all)")
    trace_offset_s: float = arg(0.0, help="start every trace at this offset (seconds)")
    start_offsets: Path | None = arg(None, help="NetLLM start-index file: `trace_file start_index` per line")
    rtt_ms: float = arg(80.0, help="round-trip time of the emulated link (ms)")
    decision_timeout_ms: float = arg(1000.0, help="deadline of each controller decision")
    buffer_s: float = arg(60.0, help="player buffer target and maximum (s)")
    resume: bool = arg(False, help="finish an interrupted replay in --out: finished sessions "
                       "(sessions.jsonl) are kept, unfinished ones moved to interrupted/ and run again")
    # Default 2: on a 2-core machine, benchmarks/bench_scaleout.py saw no stall on a fast link at N = 2 and the
    # first (machine-made) stalls at N = 4; raise it on bigger machines.
    parallel: int = arg(2, help="sessions at once: > 1 runs them over one network with that many "
                        "client hosts, one shared DASH server and controller (emulation.parallel); with "
                        "--ray, tasks at once on a local instance")
    ray: str = arg("", help="run each session as a Ray task with its own link, server and controller: "
                   "`local` or a running cluster's address (client.replay_ray)")
    retries: int = arg(1, help="run a session again, at most this many times, when its player failed before "
                       "the first chunk (browser or page start-up); the failed attempt goes to failed_starts/")


def read_start_offsets(path: Path) -> dict[str, int]:
    """`trace_file start_index` lines; errors name the file and line."""
    offsets: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise CommandError(f"{path}:{number}: expected `trace_file start_index`, got {line.strip()!r}")
        offsets[parts[0]] = int(parts[1])
    return offsets


FOLDER_HASH_CHARS = 8


def _folder_name(trace_key: str, policy: str) -> str:
    """`<trace>__<policy>` as one safe folder name. When making it safe changed it (odd characters, the `/`
    of a trace in a subfolder), a short hash of the original is appended: `x y` and `x_y`, or `a/t` and
    `b/t`, would otherwise share one folder and mix their rows."""
    raw = f"{trace_key}__{policy}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", raw)
    if safe == raw:
        return raw
    return f"{safe}-{hashlib.sha1(raw.encode()).hexdigest()[:FOLDER_HASH_CHARS]}"


def _trace_key(trace: Any, traces_dir: Path) -> str:
    """The trace file's path relative to --traces (its name when that cannot be worked out)."""
    if not trace.source:
        return trace.name
    try:
        return Path(trace.source).resolve().relative_to(Path(traces_dir).resolve()).as_posix()
    except ValueError:
        return trace.name


def all_fallback(row: dict[str, Any]) -> bool:
    """Every chunk played the page's fallback quality: the controller answered no decision (e.g. it refused
    the policy), so the session says nothing about the policy."""
    chunks, fallback = row.get("chunks"), row.get("fallback_chunks")
    return isinstance(chunks, int) and chunks > 0 and fallback == chunks


def session_failed(row: dict[str, Any]) -> bool:
    """A session that is no result of its policy: the player failed or never ran (exit status not 0: None
    when the set-up failed), or no chunk was decided by the controller."""
    return row.get("player_exit_code") != 0 or all_fallback(row)


def _mean(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v))]
    return sum(nums) / len(nums) if nums else None


def aggregate(rows: list[dict[str, Any]], policies: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        failed = sum(1 for r in mine if session_failed(r))
        agg: dict[str, Any] = {"sessions": len(mine), "failed": failed}
        agg.update({key: _mean([r.get(key) for r in mine]) for key in AGGREGATED_KEYS})
        out[policy] = agg
    return out


def _write_results(out: Path, rows: list[dict[str, Any]], cfg: Config, started: float, complete: bool,
                   jobs: int) -> None:
    """The merged outputs: summary.json, sessions.csv (one row per session) and chunks.parquet."""
    import pandas as pd

    from client.replay_ledger import FAILED_START_NAME, interrupted_records
    from netllm.chunklog import read_chunk_log, write_parquet, write_summary

    chunk_rows = []
    for r in rows:
        path = out / "sessions" / r["folder"] / "chunks.csv"
        if path.exists():
            chunk_rows += read_chunk_log(path)
    write_parquet(chunk_rows, out / "chunks.parquet")
    pd.DataFrame(rows, columns=[*SESSION_KEYS, "folder"]).to_csv(out / "sessions.csv", index=False)
    wall_s = time.monotonic() - started
    write_summary({"policies": aggregate(rows, cfg.policies), "sessions": rows, "complete": complete,
                   "jobs": jobs, "interrupted_sessions": interrupted_records(out),
                   "failed_starts": interrupted_records(out, FAILED_START_NAME),
                   "traces_dir": str(cfg.traces), "video": str(cfg.video), "rtt_ms": cfg.rtt_ms,
                   "parallel": cfg.parallel, "ray": cfg.ray or None, "wall_s": wall_s}, out)


def _session_row(summary: dict[str, Any], folder: str) -> dict[str, Any]:
    row = {key: summary.get(key) for key in SESSION_KEYS}
    row["folder"] = folder
    if all_fallback(row) and not row.get("error"):
        row["error"] = (f"all {row['chunks']} chunks played the page's fallback quality: the controller "
                        "decided none (see the session's events.jsonl)")
    return row


def _jobs(cfg: Config, traces: list[Any], offsets: dict[str, int], video: Any, out: Path) -> list[Any]:
    """Every (trace, policy) session, in run order, with its resolved stream config."""
    from client.stream import Config as StreamConfig, resolve_config
    from emulation.live_session import trace_start_time
    from emulation.parallel import SessionJob
    from emulation.trace_schedule import start_time_for_index

    jobs = []
    for trace in traces:
        if trace.name in offsets:
            try:
                start_s = start_time_for_index(trace, offsets[trace.name])
            except ValueError as exc:
                raise CommandError(f"--start-offsets: {exc}") from None
        else:
            start_s = trace_start_time(trace, cfg.trace_offset_s)
        for policy in cfg.policies:
            folder = _folder_name(_trace_key(trace, cfg.traces), policy)
            session_out = out / "sessions" / folder
            stream_cfg = resolve_config(StreamConfig(
                video=cfg.video, policy=policy, out=session_out, trace=Path(trace.source or trace.name),
                trace_offset_s=start_s - float(trace.time_s[0]), rtt_ms=cfg.rtt_ms,
                decision_timeout_ms=cfg.decision_timeout_ms, buffer_s=cfg.buffer_s,
                session_id=f"{policy}-{folder}"), video)
            jobs.append(SessionJob(len(jobs), folder, session_out, trace, start_s, stream_cfg))
    folders = [job.folder for job in jobs]
    if len(set(folders)) != len(folders):  # never two sessions' rows in one folder
        twice = sorted({f for f in folders if folders.count(f) > 1})
        raise CommandError(f"two sessions would share the folder sessions/{twice[0]}; rename the traces")
    return jobs


def _check_options(cfg: Config) -> None:
    from client.stream import check_link_options, check_number, check_policy_names

    if not cfg.policies:
        raise CommandError("--policies names no policy")
    if len(set(cfg.policies)) != len(cfg.policies):
        raise CommandError("--policies names a policy twice")
    check_policy_names(cfg.policies)
    check_link_options(cfg.rtt_ms, cfg.decision_timeout_ms, cfg.buffer_s)
    check_number("--trace-offset-s", cfg.trace_offset_s, 0.0)
    if cfg.parallel < 1:
        raise CommandError("--parallel must be >= 1")
    if cfg.retries < 0:
        raise CommandError("--retries must be >= 0")
    from emulation.multi_link import MAX_CLIENTS

    if cfg.parallel > MAX_CLIENTS:
        raise CommandError(f"--parallel must be <= {MAX_CLIENTS}")


def _check_emulation(cfg: Config) -> None:
    """Sessions on this machine need root and Mininet: said once here, not as every session's failure."""
    if cfg.ray:
        return  # the sessions run on the Ray workers' machines
    if os.geteuid() != 0:
        raise CommandError("live sessions over an emulated link need root (network namespaces, tc)")
    from emulation.mininet_compat import MininetMissing, import_mininet

    try:
        import_mininet()
    except MininetMissing as exc:
        raise CommandError(str(exc)) from None


def _prepare_out(cfg: Config, jobs: list[Any], out: Path) -> dict[str, dict[str, Any]]:
    """The rows already finished (with --resume), after moving unfinished folders aside."""
    from client.replay_ledger import Ledger, check_same_options, has_previous_run, move_aside

    if not cfg.resume:
        if has_previous_run(out):
            raise CommandError(f"{out} already holds a replay: add --resume to finish it, "
                               "or choose another --out")
        return {}
    check_same_options(out, {"video": str(cfg.video), "rtt_ms": cfg.rtt_ms, "buffer_s": cfg.buffer_s,
                             "decision_timeout_ms": cfg.decision_timeout_ms})
    if os.geteuid() == 0:  # a killed run's player may still write into its folder: end it before moving it
        from emulation.netns_cleanup import cleanup_stale

        for report in cleanup_stale():
            print(f"netllm replay: cleaned up after a killed run {report.describe()}", file=sys.stderr)
    done = Ledger(out).rows()
    moved = move_aside(out, [j.folder for j in jobs if j.folder not in done])
    for record in moved:
        print(f"netllm replay: unfinished session {record['folder']} ({record['chunks']} chunk rows) "
              f"moved to {record['moved_to']}; running it again", file=sys.stderr)
    return done


def run(cfg: Config) -> int:
    from tqdm import tqdm

    from client.replay_ledger import Ledger
    from client.stream import load_session_video
    from emulation.signals import terminate_raises
    from traces.bandwidth import TraceError
    from traces.readers import read_trace_dir

    _check_options(cfg)
    _check_emulation(cfg)
    try:
        traces = read_trace_dir(cfg.traces, cfg.pattern)
    except TraceError as exc:
        raise CommandError(f"--traces: {exc}") from None
    traces = traces[: cfg.limit] if cfg.limit > 0 else traces
    offsets = read_start_offsets(cfg.start_offsets) if cfg.start_offsets else {}
    video = load_session_video(cfg.video)
    out = Path(cfg.out or Path("runs") / f"replay-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = dataclasses.replace(cfg, out=out)
    jobs = _jobs(cfg, traces, offsets, video, out)
    done = _prepare_out(cfg, jobs, out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    ledger = Ledger(out)
    finished = {j.folder: _session_row(done[j.folder], j.folder) for j in jobs if j.folder in done}
    todo = [j for j in jobs if j.folder not in done]
    started = time.monotonic()
    complete = False
    try:
        with terminate_raises(), tqdm(total=len(jobs), initial=len(finished), unit="session",
                                      desc="replay") as bar:
            def on_done(job: Any, summary: dict[str, Any]) -> None:
                row = _session_row(summary, job.folder)
                if session_failed(row):  # said at once: a long run must not hide a failure
                    tqdm.write(f"netllm replay: session {job.folder} failed (player exit code "
                               f"{row['player_exit_code']}): {row.get('error') or 'see its player.log'}",
                               file=sys.stderr)
                ledger.append(row)
                finished[job.folder] = row
                bar.update(1)

            _run_jobs(cfg, todo, video, out, on_done, bar)
            retry_failed_starts(cfg.retries, todo, finished, out,
                                lambda again: _run_jobs(cfg, again, video, out, on_done, bar), bar)
        complete = True
    finally:
        # In run order, whichever finished first.
        rows = [finished[j.folder] for j in jobs if j.folder in finished]
        _write_results(out, rows, cfg, started, complete, len(jobs))
    _print_table(aggregate(rows, cfg.policies), out)
    return 1 if any(session_failed(r) for r in rows) else 0


def failed_at_start(row: dict[str, Any]) -> bool:
    """The player exited with an error before logging any chunk: the browser or the page did not start.
    Timeouts (exit 3: e.g. a link too slow for the first chunk) and signals are results, not retried."""
    from client.player import EXIT_ERROR

    return row.get("player_exit_code") == EXIT_ERROR and not row.get("chunks")


def retry_failed_starts(retries: int, todo: list[Any], finished: dict[str, dict[str, Any]], out: Path,
                        run_again: Callable[[list[Any]], None], bar: Any = None) -> None:
    """Run again, up to `retries` rounds, the sessions of `todo` whose row in `finished` failed at start;
    each failed attempt's folder is moved to failed_starts/ first (nothing it logged is lost)."""
    from client.replay_ledger import FAILED_START_DIR, FAILED_START_NAME, move_aside

    for attempt in range(1, retries + 1):
        again = [job for job in todo if job.folder in finished and failed_at_start(finished[job.folder])]
        if not again:
            return
        for record in move_aside(out, [job.folder for job in again], FAILED_START_DIR, FAILED_START_NAME):
            print(f"netllm replay: session {record['folder']} failed before its first chunk; its folder "
                  f"moved to {record['moved_to']}, running it again (retry {attempt} of {retries})",
                  file=sys.stderr)
        if bar is not None:
            bar.total += len(again)
            bar.refresh()
        run_again(again)


def _run_jobs(cfg: Config, todo: list[Any], video: Any, out: Path,
              on_done: Callable[[Any, dict[str, Any]], None], bar: Any) -> None:
    """Serial (a fresh network per session), shared (--parallel N) or Ray (--ray)."""
    if not todo:
        return
    refuse_used_folders(todo)
    if cfg.ray:
        from client.replay_ray import run_ray_sessions

        run_ray_sessions(todo, cfg.ray, cfg.parallel, on_done)
    elif cfg.parallel > 1:
        from emulation.parallel import run_shared

        for job in todo:
            save_config(job.stream_cfg, job.out)
        run_shared(todo, video, cfg.parallel, out / "shared", on_done, cfg.rtt_ms)
    else:
        for job in todo:
            bar.set_postfix_str(job.folder[-40:])
            on_done(job, run_serial_session(job, video))


def refuse_used_folders(jobs: list[Any]) -> None:
    """A session never appends to another one's chunks.csv: --resume and --retries move unfinished or failed
    folders aside before running a session again, so a chunks.csv found here is some other run's."""
    for job in jobs:
        if (Path(job.out) / "chunks.csv").exists():
            raise CommandError(f"{job.out} already holds a session's chunks.csv; not mixing two sessions' "
                               "rows (use a fresh --out, or --resume)")


def _setup_errors() -> tuple[type[BaseException], ...]:
    """What can go wrong in a session's set-up on a working install: the machine's or the network's faults,
    which are that session's result (never programming errors, which stop the run with their traceback)."""
    from controller.runner import ControllerLaunchError
    from emulation.link import LinkError
    from emulation.mininet_compat import MininetMissing

    return (CommandError, LinkError, MininetMissing, ControllerLaunchError, OSError, subprocess.SubprocessError)


SETUP_ERRORS = _setup_errors()


def run_serial_session(job: Any, video: Any) -> dict[str, Any]:
    """One session on its own network; a failed set-up (link, controller, server) is this session's failed
    result, with the error, so that the sessions after it still run."""
    from emulation.live_session import emulated_session

    try:
        save_config(job.stream_cfg, job.out)
        return emulated_session(job.stream_cfg, video, job.trace, job.start_s).summary
    except SETUP_ERRORS as exc:  # a programming error still stops the run, with its traceback
        return setup_failure_summary(job, exc)


def setup_failure_summary(job: Any, exc: Exception) -> dict[str, Any]:
    """The session's summary after `exc` ended it: what it finalised (if its player had started) with the
    error; written to its folder's summary.json too."""
    from netllm.chunklog import write_summary

    detail = str(exc) if isinstance(exc, CommandError) else f"{type(exc).__name__}: {exc}"
    path = Path(job.out) / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        summary = {}
    code = summary.get("player_exit_code")
    summary.update({
        "trace": job.trace.name, "policy": job.stream_cfg.policy, "session_id": job.stream_cfg.session_id,
        # The player's own exit status when it ran (even 0: the failure came after it); None when it never did.
        "chunks": summary.get("chunks") or 0, "player_exit_code": code,
        "error": f"session {'tear-down' if code == 0 else 'set-up'} failed: {detail}",
        "trace_start_time_s": job.start_s})
    Path(job.out).mkdir(parents=True, exist_ok=True)
    write_summary(summary, Path(job.out))
    return summary


def _print_table(agg: dict[str, dict[str, Any]], out: Path) -> None:
    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    print(f"{'policy':<16} {'sessions':>8} {'failed':>6} {'mean QoE':>9} {'bitrate':>8} {'rebuf s':>8}")
    for policy, a in agg.items():
        print(f"{policy:<16} {a['sessions']:>8} {a['failed']:>6} {fmt(a['mean_qoe'], '9.3f')} "
              f"{fmt(a['mean_bitrate_kbps'], '8.0f')} {fmt(a['total_rebuffer_s'], '8.2f')}")
    print(f"results in {out}/ (summary.json, chunks.parquet, sessions/)")
