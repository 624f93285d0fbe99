"""The one ABR policy interface, shared by the live controller and the simulator.

A policy instance serves one session at a time: `reset()` at the start of a session, then one
`select_quality(obs)` per chunk. Instances may keep per-session memory (robustMPC's past prediction errors,
NetLLM's context window); the controller keeps one instance per session id.

Policies must not keep references to the observation's lists: the simulator may reuse them between steps.
"""

from __future__ import annotations

from typing import ClassVar

from netllm.abr_state import AbrObservation


class AbrPolicy:
    name: ClassVar[str] = "base"
    """Registry name (`--policy NAME`)."""

    def reset(self) -> None:
        """Forget the previous session."""

    def select_quality(self, obs: AbrObservation) -> int:
        """Quality index in [0, obs.levels) for chunk `obs.chunk_index`."""
        raise NotImplementedError

    def observe_outcome(self, reward: float) -> None:
        """Optional feedback after the chosen chunk finished (return-conditioned policies use it)."""
