"""The per-chunk log that live sessions and the simulator both write, and the session summary.

Rows are appended and flushed one at a time, so a session killed at any point keeps every row written.
Times are seconds since the session started; `qoe` is `netllm.qoe.chunk_qoe` of the chunk.
Pensieve's 7 log columns are available through `to_pensieve_log`. `CsvRowLog` is the same append-and-flush
writer for any fixed set of columns: the evaluation commands' results tables (sessions, episodes, windows).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from netllm.qoe import count_switches, session_mean_qoe

COLUMNS: tuple[str, ...] = (
    "session_id", "policy", "trace", "chunk_index", "quality", "bitrate_kbps", "chunk_bytes",
    "request_time_s", "first_byte_time_s", "finish_time_s", "download_time_s", "throughput_kbps",
    "buffer_before_s", "buffer_after_s", "rebuffer_s", "decision_latency_ms", "fallback", "qoe",
)
"""Column order of `chunks.csv` (live and simulated sessions alike)."""

INT_COLUMNS = {"chunk_index", "quality", "chunk_bytes"}
BOOL_COLUMNS = {"fallback"}
STR_COLUMNS = {"session_id", "policy", "trace"}


class CsvRowLog:
    """Append-and-flush CSV writer of rows with fixed columns, one row at a time, so that a run killed at any
    point keeps every row written (the results tables of `netllm sim`, `netllm cjs-eval`, `netllm vp-eval`).
    `fresh` starts the file over; otherwise rows are appended (the header only goes into an empty file).
    `fmt` turns each value into what is written."""

    def __init__(self, path: Path, columns: Sequence[str], fresh: bool = True,
                 fmt: Callable[[Any], Any] | None = None) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self._format = fmt or _plain
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = fresh or not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "w" if fresh else "a", newline="", buffering=1)
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="raise")
        if fresh:
            self._writer.writeheader()
            self._fh.flush()
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self.write_rows([row])

    def write_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Write rows (each must hold every column); the file is line-buffered, so each row lands whole."""
        for row in rows:
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise ValueError(f"{self.path.name} row lacks {missing}")
            self._writer.writerow({c: self._format(row[c]) for c in self.columns})
            self.rows += 1
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "CsvRowLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_csv_atomically(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    """Replace `path` with a CSV of `rows` in one rename: a kill mid-write leaves the old file whole."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with CsvRowLog(staging, columns) as log:
            log.write_rows(rows)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


class ChunkLogWriter(CsvRowLog):
    """Append-and-flush CSV writer of chunk rows (`COLUMNS`); an existing log is appended to."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, COLUMNS, fresh=False, fmt=_fmt)

    def __enter__(self) -> "ChunkLogWriter":
        return self


def _plain(value: Any) -> Any:
    """A results-table value as pandas writes it: NaN empty (read back as NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def _fmt(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return repr(round(value, 6)) if math.isfinite(value) else ""
    return value


def read_chunk_log(path: Path) -> list[dict[str, Any]]:
    """Rows of a chunks.csv, typed; a truncated last line (killed mid-write) is dropped."""
    text = Path(path).read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = {}
        for k, v in raw.items():
            if k in STR_COLUMNS:
                row[k] = v
            elif k in INT_COLUMNS:
                row[k] = int(v)
            elif k in BOOL_COLUMNS:
                row[k] = v in ("1", "True", "true")
            else:
                row[k] = float(v) if v != "" else float("nan")
        rows.append(row)
    return rows


def write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(list(rows), columns=list(COLUMNS)).to_parquet(path, index=False)


@dataclass
class SessionSummary:
    policy: str
    chunks: int
    mean_qoe: float
    """Mean per-chunk QoE, first chunk skipped (NetLLM's protocol)."""
    mean_qoe_all_chunks: float
    mean_bitrate_kbps: float
    total_rebuffer_s: float
    """Stalls after playback started; startup delay is apart."""
    rebuffer_ratio: float
    """Stall time over played video time."""
    startup_delay_s: float
    switches: int
    fallback_chunks: int

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in vars(self).items()}


def summarize(rows: Sequence[dict[str, Any]], policy: str, startup_delay_s: float = float("nan"),
              chunk_duration_s: float = 4.0) -> SessionSummary:
    rows = sorted(rows, key=lambda r: r["chunk_index"])
    qoe = np.array([r["qoe"] for r in rows], dtype=np.float64)
    rebuf = float(sum(r["rebuffer_s"] for r in rows))
    return SessionSummary(
        policy=policy,
        chunks=len(rows),
        mean_qoe=session_mean_qoe(qoe, skip_first=True),
        mean_qoe_all_chunks=session_mean_qoe(qoe, skip_first=False),
        mean_bitrate_kbps=float(np.mean([r["bitrate_kbps"] for r in rows])) if rows else float("nan"),
        total_rebuffer_s=rebuf,
        rebuffer_ratio=rebuf / (len(rows) * chunk_duration_s) if rows else float("nan"),
        startup_delay_s=startup_delay_s,
        switches=count_switches([r["quality"] for r in rows]),
        fallback_chunks=sum(1 for r in rows if r["fallback"]),
    )


def write_summary(doc: dict[str, Any], out_dir: Path) -> Path:
    path = Path(out_dir) / "summary.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def to_pensieve_log(rows: Iterable[dict[str, Any]]) -> str:
    """Pensieve's 7 tab-separated columns: time_stamp_s, bit_rate_kbps, buffer_s, rebuffer_s, chunk_bytes,
    download_time_ms, reward."""
    out = []
    for r in rows:
        out.append("\t".join(str(x) for x in (
            r["finish_time_s"], int(r["bitrate_kbps"]), r["buffer_after_s"], r["rebuffer_s"], r["chunk_bytes"],
            r["download_time_s"] * 1000.0, r["qoe"])))
    return "\n".join(out) + ("\n" if out else "")
