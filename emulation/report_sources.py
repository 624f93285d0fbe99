"""Where `netllm report` reads its chunk rows, and what each session's folder records about how it was played.

Each chunk row gets four more columns (`META_COLUMNS`) beside `netllm.chunklog.COLUMNS`:

- `start_index`: the trace sample the session started from, when the session id says it (`netllm sim` ids are
  `policy:trace:start`, `emulation.abr_sim.simulate_session`);
- `trace_start_time_s`: where in the trace a live session started, from the `summary.json` of its folder
  (`netllm stream --trace`) or of its replay (`netllm replay`: one row per session);
- `run_conditions`: what the folder's `config.json` / `summary.json` record about how every session in it was
  played (`run_conditions`), as a JSON text: sessions are only paired when these agree;
- `source`: the chunk-log file the row came from (named in errors).

Partial sessions that `netllm replay` moved aside (`interrupted/`, `failed_starts/`) are not results and are
never read.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from client.replay_ledger import FAILED_START_DIR, INTERRUPTED_DIR, RESUME_CHECKED_KEYS
from netllm.cli import CommandError
from netllm.config import read_json_object

META_COLUMNS: tuple[str, ...] = ("start_index", "trace_start_time_s", "run_conditions", "source")
SKIPPED_DIRS = frozenset({INTERRUPTED_DIR, FAILED_START_DIR})
"""Folders of a replay holding partial sessions moved aside: their rows are kept there, never results."""


# ---------------------------------------------------------------------------------------------- files

def chunk_files(results: Path) -> list[Path]:
    """The chunk logs of a results folder: its top-level chunks.parquet, else every chunks.parquet /
    chunks.csv below it (Parquet where a folder has both), outside `SKIPPED_DIRS`."""
    top = results / "chunks.parquet"
    if top.exists():
        return [top]
    parquet = {p.parent: p for p in results.rglob("chunks.parquet") if _is_result(p, results)}
    csv = {p.parent: p for p in results.rglob("chunks.csv")
           if p.parent not in parquet and _is_result(p, results)}
    return sorted([*parquet.values(), *csv.values()])


def _is_result(path: Path, results: Path) -> bool:
    return not SKIPPED_DIRS.intersection(path.relative_to(results).parts[:-1])


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; {} when absent. A file that is there but unreadable is an error: the run
    conditions it should tell would otherwise be silently unknown."""
    if not path.is_file():
        return {}
    return read_json_object(path, CommandError, "a run's config or summary")


# ---------------------------------------------------------------------------------------------- conditions

def run_conditions(folder: Path) -> dict[str, Any]:
    """How the sessions of a results folder were played, from its config.json and summary.json: the keys
    known for this kind of folder (simulated or live); {} when the folder records nothing."""
    config, summary = _read_json(folder / "config.json"), _read_json(folder / "summary.json")
    if "chunks_per_session" in summary or "live_timing" in config:
        return _sim_conditions(config, summary)
    if "network" in summary or "rtt_ms" in config or "rtt_ms" in summary:
        return _live_conditions(config, summary)
    return {}


def _sim_conditions(config: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """`netllm sim`: summary.json holds the resolved run-wide values (config.json is the fallback of a run
    killed before its summary)."""
    both = {**config, **summary}
    cond: dict[str, Any] = {"played": "simulator"}
    for key, name in (("video", "video"), ("chunks_per_session", "chunks"),
                      ("default_quality", "default_quality"), ("noise", "noise")):
        if key in both:
            cond[name] = both[key]
    if "live_timing" in summary:  # the measured values the run used (null: off)
        cond["live_timing"] = summary["live_timing"] is not None
        cond["live_timing_values"] = summary["live_timing"]
    elif "live_timing" in config:
        cond["live_timing"] = bool(config["live_timing"])
    if "live_spread" in config:
        cond["live_spread"] = bool(config["live_spread"])
    # The seed only changes what is played when something is drawn: noise or the live spread.
    if "seed" in both and (cond.get("noise") or cond.get("live_spread")):
        cond["seed"] = both["seed"]
    return cond


def _live_conditions(config: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """`netllm stream` (one session's folder) or `netllm replay` (its top-level folder): the options that
    change what a session measures (those `--resume` insists on), the player's first quality and the
    network kind."""
    cond: dict[str, Any] = {"played": "live"}
    for key in (*RESUME_CHECKED_KEYS, "default_quality"):
        value = config.get(key, summary.get(key))
        if value is not None:
            cond[key] = value
    if "chunk_count" in summary:
        cond["chunks"] = summary["chunk_count"]
    if "network" in summary:
        cond["network"] = summary["network"]
    return cond


def condition_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """`key (value_a vs value_b)` for every condition both record and that differs."""
    return [f"{key} ({a[key]!r} vs {b[key]!r})" for key in sorted(set(a) & set(b))
            if not _same_condition(key, a[key], b[key])]


def _same_condition(key: str, a: Any, b: Any) -> bool:
    if key == "video" and isinstance(a, str) and isinstance(b, str):
        return _same_path(a, b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _same_path(a: str, b: str) -> bool:
    """The same folder, however it was written (relative to this directory, with `..`, or linked)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- starts

def live_starts(folder: Path) -> dict[str, float]:
    """session id -> trace_start_time_s, from a live session's summary.json or a replay's (its `sessions`)."""
    summary = _read_json(folder / "summary.json")
    rows = summary.get("sessions") if isinstance(summary.get("sessions"), list) else [summary]
    starts: dict[str, float] = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        sid, start = row.get("session_id"), row.get("trace_start_time_s")
        if isinstance(sid, str) and isinstance(start, (int, float)) and math.isfinite(start):
            starts[sid] = float(start)
    return starts


def sim_start_index(session_id: str, policy: str, trace: str) -> int | None:
    """The start index of a `netllm sim` session id `policy:trace:start`; None for any other id."""
    prefix = f"{policy}:{trace}:"
    rest = session_id[len(prefix):] if session_id.startswith(prefix) else ""
    return int(rest) if rest.isascii() and rest.isdigit() else None


# ---------------------------------------------------------------------------------------------- reading

def read_chunk_file(path: Path) -> Any:
    """One chunk log as a DataFrame of `netllm.chunklog.COLUMNS` (empty when it holds no row)."""
    import pandas as pd

    from netllm.chunklog import COLUMNS, read_chunk_log

    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.DataFrame(read_chunk_log(path))
    except (OSError, ValueError, KeyError) as exc:
        raise CommandError(f"{path}: unreadable chunk log ({exc})") from None
    if not len(df):
        return pd.DataFrame(columns=list(COLUMNS))
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CommandError(f"{path}: missing columns {missing}")
    return df[list(COLUMNS)]


def with_session_meta(df: Any, path: Path) -> Any:
    """`df` (the rows of chunk log `path`) with `META_COLUMNS` filled from the ids and the folder's files."""
    import pandas as pd

    folder = path.parent
    starts = live_starts(folder)
    ids = df[["session_id", "policy", "trace"]].astype(str).drop_duplicates()
    index = {sid: sim_start_index(sid, policy, trace) for sid, policy, trace in ids.itertuples(index=False)}
    sid = df["session_id"].astype(str)
    return df.assign(
        start_index=pd.array(sid.map(index).tolist(), dtype="Int64"),
        trace_start_time_s=sid.map(starts).astype(float),
        run_conditions=json.dumps(run_conditions(folder), sort_keys=True),
        source=str(path))


def refuse_duplicate_rows(chunks: Any) -> None:
    """Two rows for one (session, chunk) mean two sessions share an id (two traces of one name, a partial
    copy of a session beside the finished one): merged, they would count as one session of twice the
    chunks. Refused, naming the files."""
    dup = chunks[chunks.duplicated(["session_id", "chunk_index"], keep=False)]
    if dup.empty:
        return
    sessions = list(dict.fromkeys(dup["session_id"]))
    first = dup[dup["session_id"] == sessions[0]]
    files = ", ".join(dict.fromkeys(first["source"]))
    more = f" (and {len(sessions) - 1} more sessions)" if len(sessions) > 1 else ""
    chunk = int(first["chunk_index"].iloc[0])
    raise CommandError(f"session {sessions[0]!r} has chunk {chunk} more than once, in {files}{more}: two "
                       "sessions share that id and cannot be told apart; give them distinct trace names or "
                       "results folders")
