"""What `netllm replay` has finished, so that `--resume` redoes nothing finished and loses no row.

`<out>/sessions.jsonl` (the ledger) gets one JSON line per session that ran to its own end (well or not),
appended, flushed and fsync'ed by the driver right after the session's folder was finalised. It is the
only record of "done": a folder under `sessions/` without a ledger line was interrupted (SIGINT/SIGTERM,
SIGKILL, a power cut), whatever files it holds; a session interrupted politely still writes its
summary.json, so that file proves nothing.

On `--resume`, each unfinished session whose folder exists is moved aside, whole, to
`<out>/interrupted/<folder>.<n>` (n = 1, 2, ... for repeated interruptions) and run again from scratch in a
fresh folder; `<out>/interrupted.jsonl` lists every folder moved aside (with its chunk rows then), and the
merged summary.json repeats that list under `interrupted_sessions`, so partial rows are kept and accounted
for, never silently dropped nor mixed into the merged results. A truncated last ledger line (the driver
killed mid-write) is ignored with a warning: that session is redone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from netllm.cli import CommandError

LEDGER_NAME = "sessions.jsonl"
INTERRUPTED_NAME = "interrupted.jsonl"
INTERRUPTED_DIR = "interrupted"
FAILED_START_NAME = "failed_starts.jsonl"
FAILED_START_DIR = "failed_starts"
RESUME_CHECKED_KEYS = ("video", "rtt_ms", "buffer_s", "decision_timeout_ms")
"""Options that change what a session measures: a resume must use the same values."""


class Ledger:
    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LEDGER_NAME

    def rows(self) -> dict[str, dict[str, Any]]:
        """folder -> its row, for every complete ledger line."""
        done: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return done
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), start=1):
            try:
                row = json.loads(line)
                done[str(row["folder"])] = row
            except (ValueError, KeyError, TypeError):
                print(f"netllm replay: {self.path}:{number}: unreadable ledger line ignored "
                      "(that session will be run again)", file=sys.stderr)
        return done

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, allow_nan=False, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def has_previous_run(out: Path) -> bool:
    sessions = Path(out) / "sessions"
    return (Path(out) / LEDGER_NAME).exists() or (sessions.is_dir() and any(sessions.iterdir()))


def check_same_options(out: Path, current: dict[str, Any]) -> None:
    """Refuse to resume with options that would make old and new sessions incomparable."""
    path = Path(out) / "config.json"
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text())
    except ValueError:
        return
    changed = [f"--{k.replace('_', '-')} {previous.get(k)!r} -> {current.get(k)!r}"
               for k in RESUME_CHECKED_KEYS if k in previous and previous.get(k) != current.get(k)]
    if changed:
        raise CommandError(f"{out} was run with other options; resume with the same ones or use another "
                           f"--out: {', '.join(changed)}")


def _chunk_rows(folder: Path) -> int | None:
    path = folder / "chunks.csv"
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return max(0, sum(1 for line in fh if line.strip()) - 1)  # minus the header


def move_aside(out: Path, folders: list[str], to_dir: str = INTERRUPTED_DIR,
               record_name: str = INTERRUPTED_NAME) -> list[dict[str, Any]]:
    """Move every existing `sessions/<folder>` of `folders` to `<to_dir>/<folder>.<n>`, each listed in
    `record_name` (interrupted sessions by default); the records added."""
    out = Path(out)
    added = []
    for folder in folders:
        src = out / "sessions" / folder
        if not src.exists():
            continue
        n = 1
        while (dst := out / to_dir / f"{folder}.{n}").exists():
            n += 1
        dst.parent.mkdir(parents=True, exist_ok=True)
        record = {"folder": folder, "moved_to": str(dst.relative_to(out)), "chunks": _chunk_rows(src),
                  "moved_unix_s": time.time()}
        os.replace(src, dst)
        with open(out / record_name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        added.append(record)
    return added


def interrupted_records(out: Path, record_name: str = INTERRUPTED_NAME) -> list[dict[str, Any]]:
    path = Path(out) / record_name
    records = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records
