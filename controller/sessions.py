"""Per-session policy instances for the decision service.

A stateful policy (robustMPC's error memory, NetLLM's context window) must see one session's chunks in order
and nothing else, so the controller keeps one instance per (session id, policy name). The table is bounded:
least-recently-used entries are evicted past `max_sessions`, and entries idle for `idle_s` are dropped.
Everything here runs on the event loop thread; it does no locking.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from controller.policies.base import AbrPolicy

SessionKey = tuple[str, str]
"""(session id, policy name)."""


@dataclass(slots=True)
class SessionEntry:
    policy: AbrPolicy
    last_used_s: float
    decisions: int = 0


class PolicySessions:
    def __init__(self, max_sessions: int = 1024, idle_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_sessions < 1 or not idle_s > 0:
            raise ValueError("max_sessions must be >= 1 and idle_s > 0")
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self._clock = clock
        self._entries: OrderedDict[SessionKey, SessionEntry] = OrderedDict()
        self.evicted = 0
        """Entries dropped so far (LRU or idle)."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: SessionKey) -> bool:
        return key in self._entries

    def expire_idle(self) -> int:
        """Drop entries idle longer than `idle_s`; the table is in last-use order, so only its head is
        checked."""
        deadline = self._clock() - self.idle_s
        dropped = 0
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.last_used_s >= deadline:
                break
            del self._entries[key]
            dropped += 1
        self.evicted += dropped
        return dropped

    def lookup(self, key: SessionKey, session_start: bool) -> SessionEntry | None:
        """The live entry for `key`, or None when the caller must create one (unseen key, or a session that
        starts again: `session_start` drops the old instance so the new session gets a fresh policy)."""
        self.expire_idle()
        if session_start:
            self._entries.pop(key, None)
            return None
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_used_s = self._clock()
            self._entries.move_to_end(key)
        return entry

    def store(self, key: SessionKey, policy: AbrPolicy) -> SessionEntry:
        """Add a freshly reset policy for `key`, evicting the least recently used entries past the bound."""
        entry = SessionEntry(policy, self._clock())
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_sessions:
            self._entries.popitem(last=False)
            self.evicted += 1
        return entry

    def drop(self, key: SessionKey) -> None:
        """Forget one session (e.g. after its policy raised, so a broken state is not reused)."""
        self._entries.pop(key, None)

    def keys(self) -> list[SessionKey]:
        return list(self._entries)
