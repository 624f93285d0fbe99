"""A bandwidth trace as a replay schedule: rate changes in elapsed seconds from the replay start.

Semantics are `traces.bandwidth`'s: sample i's bandwidth holds over (time_s[i-1], time_s[i]]; the replay
loops back to sample 1 after the last sample, shifted so the loop is seamless. A replay starts either at a
time offset (seconds after the trace's first timestamp, wrapped modulo its duration) or at a sample index
k (start at time_s[k-1] with bandwidth_kbps[k], NetLLM's start offsets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from traces.bandwidth import BandwidthTrace


@dataclass(frozen=True)
class Segment:
    start_s: float
    """Elapsed seconds since the replay start at which this rate begins."""
    end_s: float
    rate_kbps: float
    trace_time_s: float
    """The trace time at `start_s` (for logs)."""
    sample_index: int


def start_time_for_index(trace: BandwidthTrace, index: int) -> float:
    if not 1 <= index < trace.time_s.size:
        raise ValueError(f"{trace.name}: start sample index {index} outside 1..{trace.time_s.size - 1}")
    return float(trace.time_s[index - 1])


def start_time_for_offset(trace: BandwidthTrace, offset_s: float) -> float:
    if offset_s < 0:
        raise ValueError(f"trace offset must be >= 0 s, got {offset_s}")
    return float(trace.time_s[0] + (offset_s % trace.duration_s))


def segments(trace: BandwidthTrace, start_trace_time_s: float) -> Iterator[Segment]:
    """Endless constant-rate segments from `start_trace_time_s`; zero-length samples are skipped."""
    t, bw = trace.time_s, trace.bandwidth_kbps
    # The first sample i with time_s[i-1] <= start < time_s[i].
    i = int(np.searchsorted(t, start_trace_time_s, side="right"))
    i = min(max(i, 1), t.size - 1)
    elapsed = 0.0
    trace_now = start_trace_time_s
    while True:
        end_trace = float(t[i])
        length = end_trace - trace_now
        if length > 0:
            yield Segment(elapsed, elapsed + length, float(bw[i]), trace_now, i)
            elapsed += length
        i += 1
        if i >= t.size:
            i = 1
            trace_now = float(t[0])
        else:
            trace_now = end_trace


def segments_until(trace: BandwidthTrace, start_trace_time_s: float, horizon_s: float) -> list[Segment]:
    """The segments that cover [0, horizon_s) of elapsed time."""
    out = []
    for seg in segments(trace, start_trace_time_s):
        if seg.start_s >= horizon_s:
            break
        out.append(seg)
    return out


def mean_rate_kbps(segs: list[Segment], a_s: float, b_s: float) -> float:
    """Time-weighted mean rate over elapsed [a_s, b_s] (the segments must cover it)."""
    if b_s <= a_s:
        raise ValueError(f"empty interval [{a_s}, {b_s}]")
    total = 0.0
    for seg in segs:
        overlap = min(seg.end_s, b_s) - max(seg.start_s, a_s)
        if overlap > 0:
            total += overlap * seg.rate_kbps
    return total / (b_s - a_s)
