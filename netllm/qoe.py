"""The one QoE definition every part of the testbed uses (live sessions, simulator, policies, reports), and
Pensieve's two other variants, with which reports can also score sessions (`QOE_VARIANTS`).

Linear QoE of Pensieve/NetLLM, per chunk n:

    qoe_n = bitrate_Mbps[n] - REBUFFER_PENALTY * rebuffer_s[n] - SMOOTH_PENALTY * |bitrate_Mbps[n] - bitrate_Mbps[n-1]|

Units: bitrates in kbps everywhere in the project, converted to Mbps (/1000) only here.
The first chunk's switch term uses `previous_kbps` as the caller gives it (the default quality's bitrate in
the simulator, as Pensieve does); session means skip the first chunk, as NetLLM reports.
"""

from __future__ import annotations

from dataclasses import dataclass
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


# ---------------------------------------------------------------------------------------------- variants
# The testbed decides and trains on the linear QoE above. Reports can also score sessions under the two other
# QoE variants of Pensieve's evaluation, from the chunks' bitrates and stalls, to compare with results stated
# in those terms. Each variant is: utility q(bitrate) - rebuffer_penalty x stall_s - smooth_penalty x |q - q_prev|.

HD_UTILITY_BY_KBPS: dict[int, float] = {300: 1.0, 750: 2.0, 1200: 3.0, 1850: 12.0, 2850: 15.0, 4300: 20.0}
"""QoE_hd's utilities, defined for Pensieve's 6-level ladder only (it rewards the HD rungs)."""


@dataclass(frozen=True)
class QoeVariant:
    name: str
    rebuffer_penalty: float
    smooth_penalty: float
    description: str


QOE_VARIANTS: dict[str, QoeVariant] = {
    "lin": QoeVariant("lin", REBUFFER_PENALTY, SMOOTH_PENALTY, "q(R) = R in Mbps (the testbed's QoE)"),
    "log": QoeVariant("log", 2.66, 1.0, "q(R) = ln(R / R_min), R_min the ladder's lowest bitrate"),
    "hd": QoeVariant("hd", 8.0, 1.0, "q(R) from 300/750/1200/1850/2850/4300 kbps to 1/2/3/12/15/20"),
}


class QoeVariantError(ValueError):
    """A variant that cannot score these bitrates (an unknown name, a ladder it is not defined for)."""


def utility(variant: str, bitrates_kbps: Sequence[float] | np.ndarray, min_kbps: float | None = None
            ) -> np.ndarray:
    """q(bitrate) of `variant` per chunk; `log` needs `min_kbps` (the ladder's lowest bitrate)."""
    b = np.asarray(bitrates_kbps, dtype=np.float64)
    if variant == "lin":
        return b / 1000.0
    if variant == "log":
        if min_kbps is None or not min_kbps > 0:
            raise QoeVariantError("QoE log needs the ladder's lowest bitrate (> 0 kbps)")
        return np.log(b / min_kbps)
    if variant == "hd":
        rungs = np.rint(b).astype(np.int64)
        unknown = sorted(set(rungs.tolist()) - set(HD_UTILITY_BY_KBPS))
        if unknown:
            raise QoeVariantError(f"QoE hd is defined for the ladder {sorted(HD_UTILITY_BY_KBPS)} kbps only; "
                                  f"these chunks have {unknown[:5]} kbps")
        return np.array([HD_UTILITY_BY_KBPS[r] for r in rungs.tolist()], dtype=np.float64)
    raise QoeVariantError(f"QoE variant {variant!r}: use one of {', '.join(QOE_VARIANTS)}")


def variant_terms(variant: str, bitrates_kbps: Sequence[float] | np.ndarray,
                  rebuffers_s: Sequence[float] | np.ndarray, min_kbps: float | None = None) -> np.ndarray:
    """Per-chunk QoE terms of a session under `variant` (chunk 0 without a switch term: session means skip
    it). For `lin` these are `qoe_terms` with no first-chunk switch."""
    v = QOE_VARIANTS.get(variant)
    if v is None:
        raise QoeVariantError(f"QoE variant {variant!r}: use one of {', '.join(QOE_VARIANTS)}")
    q = utility(variant, bitrates_kbps, min_kbps)
    switch = np.abs(np.diff(q, prepend=q[:1])) if q.size else q
    return q - v.rebuffer_penalty * np.asarray(rebuffers_s, dtype=np.float64) - v.smooth_penalty * switch
