"""Rate-based ABR: pick the highest rung the recent throughput can sustain.

The throughput estimate is the harmonic mean of the last `window` measured throughputs (5, as in MPC's
predictor); the chosen quality is the highest whose bitrate is <= the estimate, the lowest if none is.
Before the first download there is no measurement, so the policy keeps `last_quality` (the player's
default quality), as Pensieve's simulators do for the first chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from controller.policies.base import AbrPolicy
from netllm.abr_state import AbrObservation

HISTORY_WINDOW: int = 5


def harmonic_mean_kbps(history_kbps: Sequence[float], window: int = HISTORY_WINDOW) -> float | None:
    """Harmonic mean of the last `window` positive samples; None when there is none.

    Non-positive samples are skipped (Pensieve's state is zero-padded and its MPC drops the zeros)."""
    inverse_sum = 0.0
    count = 0
    for value in history_kbps[-window:]:
        if value > 0:
            inverse_sum += 1.0 / value
            count += 1
    return count / inverse_sum if count else None


def highest_sustainable(ladder_kbps: Sequence[float], rate_kbps: float) -> int:
    """Index of the highest rung with bitrate <= rate_kbps (0 when even the lowest is above it)."""
    quality = 0
    for level, bitrate in enumerate(ladder_kbps):
        if bitrate <= rate_kbps:
            quality = level
        else:
            break  # the ladder is ascending
    return quality


class RateBased(AbrPolicy):
    name: ClassVar[str] = "rb"

    def __init__(self, window: int = HISTORY_WINDOW) -> None:
        if window < 1:
            raise ValueError("rate-based window must be >= 1")
        self.window = int(window)

    def select_quality(self, obs: AbrObservation) -> int:
        estimate_kbps = harmonic_mean_kbps(obs.throughput_kbps_history, self.window)
        if estimate_kbps is None:
            return obs.last_quality
        return highest_sustainable(obs.ladder_kbps, estimate_kbps)
