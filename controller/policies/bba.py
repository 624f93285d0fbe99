"""BBA-0 (Huang et al., SIGCOMM'14): choose the quality from the buffer level alone.

The rule is the one Pensieve's `test/bb.py` and NetLLM's baseline runner evaluate (the "BBA" whose
fcc-test QoE NetLLM reports), re-stated here:

    buffer <  reservoir                      -> lowest quality (index 0)
    buffer >= reservoir + cushion            -> highest quality (index L-1)
    otherwise                                -> floor((L - 1) * (buffer - reservoir) / cushion)

i.e. the buffer is mapped linearly onto the *quality index* (not onto the bitrate) and rounded down
(Python `int()` of a non-negative number, which is floor). With the six-rung Pensieve ladder, reservoir 5 s
and cushion 10 s, the index steps up every 2 s of buffer: 5-7 s -> 0, 7-9 s -> 1, ..., 13-15 s -> 4,
>= 15 s -> 5.

`mapping="rate"` selects the paper's rate map instead: the buffer is mapped linearly onto a bitrate between
the lowest and the highest rung, and the highest rung whose bitrate does not exceed that rate is chosen.
The default is "index" because that is the rule behind the published reproduction figures.
"""

from __future__ import annotations

from typing import ClassVar

from controller.policies.base import AbrPolicy
from netllm.abr_state import AbrObservation

RESERVOIR_S: float = 5.0
CUSHION_S: float = 10.0


class BBA(AbrPolicy):
    name: ClassVar[str] = "bba"

    def __init__(self, reservoir_s: float = RESERVOIR_S, cushion_s: float = CUSHION_S,
                 mapping: str = "index") -> None:
        if not reservoir_s >= 0 or not cushion_s > 0:
            raise ValueError("BBA needs reservoir_s >= 0 and cushion_s > 0")
        if mapping not in ("index", "rate"):
            raise ValueError(f"BBA mapping must be 'index' or 'rate', got {mapping!r}")
        self.reservoir_s = float(reservoir_s)
        self.cushion_s = float(cushion_s)
        self.mapping = mapping

    def select_quality(self, obs: AbrObservation) -> int:
        buffer_s = obs.buffer_s
        top = len(obs.ladder_kbps) - 1
        if buffer_s < self.reservoir_s:
            return 0
        if buffer_s >= self.reservoir_s + self.cushion_s:
            return top
        fraction = (buffer_s - self.reservoir_s) / self.cushion_s  # in [0, 1)
        if self.mapping == "index":
            # Same expression and rounding as Pensieve's bb.py: int() of a non-negative float is floor.
            return int(top * fraction)
        ladder = obs.ladder_kbps
        rate_kbps = ladder[0] + (ladder[-1] - ladder[0]) * fraction
        quality = 0
        for level in range(1, top + 1):
            if ladder[level] <= rate_kbps:
                quality = level
        return quality
