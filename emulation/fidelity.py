"""How closely the emulated link delivers the trace: per-chunk measured vs. trace throughput.

Overhead is accounted for explicitly, not fudged:
- HTB meters whole Ethernet frames (MTU + 14 B) while the application sees TCP payload: with TCP timestamps
  (Linux default) a full frame carries MTU - 20 (IP) - 32 (TCP + timestamp option) bytes, so the payload rate
  is the trace rate times `payload_factor(mtu)` (1448/1514 = 0.9564 at MTU 1500). ACKs go the other way,
  which is not shaped.
- The payload of an HTTP response is its body plus its header bytes (`http_header_bytes`, measured from the
  server's responses or estimated).
- The measured interval is first byte -> last byte (the request and the server's emulated first-byte delay
  are not link time). The first byte arrives with the first segment, so the bytes delivered *during* the
  interval are the response minus one MSS.

Alignment: chunk times are seconds since the page's t0 (`performance.now` based); `page_epoch_s` is the unix
time of that t0, the replay loop records the unix time of its start (`start_wall_s`), so a chunk interval in
trace-replay time is `page_epoch_s + t - start_wall_s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from emulation.trace_schedule import Segment, mean_rate_kbps

IP_HEADER_BYTES = 20
TCP_HEADER_WITH_TIMESTAMPS_BYTES = 32
ETH_HEADER_BYTES = 14


def mss_bytes(mtu: int = 1500) -> int:
    return mtu - IP_HEADER_BYTES - TCP_HEADER_WITH_TIMESTAMPS_BYTES


def payload_factor(mtu: int = 1500) -> float:
    """TCP payload bytes per byte HTB meters, for full-sized segments."""
    return mss_bytes(mtu) / (mtu + ETH_HEADER_BYTES)


@dataclass
class ChunkFidelity:
    chunk_index: int
    start_s: float
    """Replay-elapsed seconds of the first byte."""
    end_s: float
    measured_kbps: float
    """Payload delivered during (first byte, last byte] over that interval."""
    expected_kbps: float
    """Trace mean over the interval times the payload factor."""

    @property
    def rel_error(self) -> float:
        return (self.measured_kbps - self.expected_kbps) / self.expected_kbps


def chunk_fidelity(rows: Iterable[dict[str, Any]], segs: Sequence[Segment], page_epoch_s: float,
                   replay_start_wall_s: float, http_header_bytes: int = 250, mtu: int = 1500,
                   min_duration_s: float = 0.05) -> list[ChunkFidelity]:
    """One entry per chunk row with usable timings (download shorter than `min_duration_s` is skipped: at
    that scale a single packet's timing dominates)."""
    factor = payload_factor(mtu)
    out = []
    for r in rows:
        first, finish = float(r["first_byte_time_s"]), float(r["finish_time_s"])
        if not (math.isfinite(first) and math.isfinite(finish)) or finish - first < min_duration_s:
            continue
        a = page_epoch_s + first - replay_start_wall_s
        b = page_epoch_s + finish - replay_start_wall_s
        if a < 0:
            continue
        delivered = int(r["chunk_bytes"]) + http_header_bytes - mss_bytes(mtu)
        measured = delivered * 8 / 1000.0 / (b - a)
        expected = mean_rate_kbps(list(segs), a, b) * factor
        if expected <= 0:
            continue
        out.append(ChunkFidelity(int(r["chunk_index"]), a, b, measured, expected))
    return out


def write_fidelity_csv(results: Sequence[ChunkFidelity], path: Path) -> Path:
    """fidelity.csv: chunk_index, start_s, end_s (replay-elapsed), measured_kbps, expected_kbps, rel_error."""
    lines = ["chunk_index,start_s,end_s,measured_kbps,expected_kbps,rel_error"]
    lines += [f"{c.chunk_index},{c.start_s:.4f},{c.end_s:.4f},{c.measured_kbps:.2f},{c.expected_kbps:.2f},"
              f"{c.rel_error:.5f}" for c in results]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def error_summary(results: Sequence[ChunkFidelity]) -> dict[str, float]:
    errors = np.abs([c.rel_error for c in results])
    signed = np.array([c.rel_error for c in results])
    if errors.size == 0:
        return {"chunks": 0, "median_abs_rel_error": float("nan"), "p90_abs_rel_error": float("nan"),
                "mean_rel_error": float("nan")}
    return {"chunks": int(errors.size), "median_abs_rel_error": float(np.median(errors)),
            "p90_abs_rel_error": float(np.percentile(errors, 90)), "mean_rel_error": float(signed.mean())}
