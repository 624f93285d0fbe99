"""The one QoE definition every part of the testbed uses (live sessions, simulator, policies, reports).

Linear QoE of Pensieve/NetLLM, per chunk n:

    qoe_n = bitrate_Mbps[n] - REBUFFER_PENALTY * rebuffer_s[n] - SMOOTH_PENALTY * |bitrate_Mbps[n] - bitrate_Mbps[n-1]|

Units: bitrates in kbps everywhere in the project, converted to Mbps (/1000) only here.
The first chunk's switch term uses `previous_kbps` as the caller gives it (the default quality's bitrate in
the simulator, as Pensieve does); session means skip the first chunk, as NetLLM reports.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

REBUFFER_PENALTY: float = 4.3
"""QoE units per second of rebuffering (the top ladder rung's Mbps, as in Pensieve's linear QoE)."""
SMOOTH_PENALTY: float = 1.0
"""QoE units per Mbps of bitrate change between consecutive chunks."""


def chunk_qoe(bitrate_kbps: float, previous_kbps: float, rebuffer_s: float) -> float:
    """QoE term of one chunk."""
    return (bitrate_kbps / 1000.0 - REBUFFER_PENALTY * rebuffer_s
            - SMOOTH_PENALTY * abs(bitrate_kbps - previous_kbps) / 1000.0)


def qoe_terms(bitrates_kbps: Sequence[float] | np.ndarray, rebuffers_s: Sequence[float] | np.ndarray,
              first_previous_kbps: float | None = None) -> np.ndarray:
    """QoE terms of a whole session; the first chunk's switch term is against `first_previous_kbps`
    (no switch penalty when None)."""
    b = np.asarray(bitrates_kbps, dtype=np.float64)
    r = np.asarray(rebuffers_s, dtype=np.float64)
    prev = np.empty_like(b)
    if b.size:
        prev[0] = b[0] if first_previous_kbps is None else first_previous_kbps
        prev[1:] = b[:-1]
    return b / 1000.0 - REBUFFER_PENALTY * r - SMOOTH_PENALTY * np.abs(b - prev) / 1000.0


def session_mean_qoe(terms: Sequence[float] | np.ndarray, skip_first: bool = True) -> float:
    """Mean per-chunk QoE of a session; NetLLM's protocol skips the first chunk."""
    t = np.asarray(terms, dtype=np.float64)
    if skip_first:
        t = t[1:]
    return float(t.mean()) if t.size else float("nan")


def count_switches(qualities: Sequence[int]) -> int:
    """Number of chunks whose quality differs from the previous chunk's."""
    q = np.asarray(qualities)
    return int(np.count_nonzero(q[1:] != q[:-1])) if q.size > 1 else 0
