"""The controller's decision log: the last decisions in memory, and optionally every decision as JSON lines.

Each record: `ts` (Unix time, s), `session_id`, `policy`, `chunk_index`, `quality`, `latency_ms`, and whatever
else the task adds. The file is appended and flushed per line, so a controller killed mid-session leaves a
complete log up to its last decision. A failing disk never fails a decision: the file is given up with one
logged error and the in-memory log continues.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("controller.decisions")


class DecisionLog:
    def __init__(self, path: Path | None = None, keep: int = 10_000) -> None:
        self.path = Path(path) if path is not None else None
        self._recent: deque[dict[str, Any]] = deque(maxlen=max(1, keep))
        self._file: IO[str] | None = None
        self.count = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def record(self, **fields: Any) -> dict[str, Any]:
        entry = {"ts": time.time(), **fields}
        self._recent.append(entry)
        self.count += 1
        if self._file is not None:
            try:
                self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
                self._file.flush()
            except (OSError, ValueError) as exc:
                log.error("decision log %s: writing failed (%s); keeping decisions in memory only",
                          self.path, exc)
                self._close_file()
        return entry

    def recent(self, session_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest `limit` records (oldest first), optionally of one session."""
        rows = [r for r in self._recent if session_id is None or r.get("session_id") == session_id]
        return rows[-limit:] if limit > 0 else []

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def close(self) -> None:
        self._close_file()
