"""BOLA-BASIC (Spiteri, Urgaonkar, Sitaraman, INFOCOM'16): Lyapunov buffer-based quality choice.

For each quality m with utility u_m = ln(bitrate_m / bitrate_0) (so u_0 = 0), BOLA picks

    argmax_m  (V * (u_m + gp) - buffer_s) / bitrate_m

(the paper divides by the chunk size S_m = bitrate_m * chunk duration; the constant chunk duration does not
change the argmax, and using the nominal bitrate keeps the decision independent of per-chunk size noise,
as Sabre's BOLA does).

Parameters, Sabre style (`gp` fixed, V derived from the buffer target):
- `buffer_target_s` = 60 s, Pensieve's buffer cap (the simulator never lets the buffer exceed it);
- `gp` (gamma * p) = 5, Sabre's default;
- V = (buffer_target_s - chunk_duration_s) / (u_max + gp), so that the score of the top rung reaches zero
  one chunk below the target: BOLA would stop downloading there, and the cap makes room for the next chunk.

With the Pensieve ladder and 4 s chunks, V = 56 / (ln(4300/300) + 5) = 7.308; BOLA leaves the lowest rung at a
buffer of about 32 s and reaches the top rung at about 47 s. BOLA's "wait when every score is negative" has no
counterpart in this interface (the caller decides when to download); the argmax is returned regardless.
"""

from __future__ import annotations

import math
from typing import ClassVar

from controller.policies.base import AbrPolicy
from netllm.abr_state import AbrObservation

BUFFER_TARGET_S: float = 60.0
GAMMA_P: float = 5.0


class Bola(AbrPolicy):
    name: ClassVar[str] = "bola"

    def __init__(self, buffer_target_s: float = BUFFER_TARGET_S, gp: float = GAMMA_P) -> None:
        if not buffer_target_s > 0 or not gp > 0:
            raise ValueError("BOLA needs buffer_target_s > 0 and gp > 0")
        self.buffer_target_s = float(buffer_target_s)
        self.gp = float(gp)
        self._key: tuple | None = None
        self._weights: list[tuple[float, float]] = []  # per level: (V * (u + gp), 1 / bitrate)

    def _parameters(self, obs: AbrObservation) -> list[tuple[float, float]]:
        """Per-level constants, recomputed only when the ladder or chunk duration changes."""
        key = (tuple(obs.ladder_kbps), obs.chunk_duration_s)
        if key != self._key:
            ladder = obs.ladder_kbps
            utilities = [math.log(b / ladder[0]) for b in ladder]
            v = max(self.buffer_target_s - obs.chunk_duration_s, 1e-9) / (utilities[-1] + self.gp)
            self._weights = [(v * (u + self.gp), 1.0 / b) for u, b in zip(utilities, ladder)]
            self._key = key
        return self._weights

    @property
    def v(self) -> float | None:
        """The Lyapunov weight V of the last ladder seen (None before the first decision)."""
        return self._weights[0][0] / self.gp if self._weights else None

    def select_quality(self, obs: AbrObservation) -> int:
        buffer_s = obs.buffer_s
        best_level, best_score = 0, -math.inf
        for level, (reward, inverse_bitrate) in enumerate(self._parameters(obs)):
            score = (reward - buffer_s) * inverse_bitrate
            if score > best_score:  # strict: the lower rung wins a tie
                best_level, best_score = level, score
        return best_level
