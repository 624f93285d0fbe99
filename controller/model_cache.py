"""One loaded copy of each trained model per process, shared by every session and policy instance.

The decision service builds a policy instance per session, so a policy that loaded its checkpoint in
`__init__` would hold one copy of the weights per session: for an LLM-based policy about half a GB each, which
a few dozen session ids would turn into an out-of-memory kill. Policies load through `load_once` instead and
keep only their per-session state (context, return-to-go) on the instance. Shared models must be used
read-only (eval mode, no gradients), which every serving path here does.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
import threading
from typing import Any, TypeVar

T = TypeVar("T")

_LOADED: dict[tuple[Hashable, ...], Any] = {}
# One lock for all: two sessions that ask for the same model at once load it once, and loads are rare
# (once per checkpoint and device per process), so serialising different models' loads costs nothing.
_LOCK = threading.Lock()


def load_once(key: tuple[Hashable, ...], load: Callable[[], T]) -> T:
    """`load()`'s result for `key`, calling it only the first time `key` is asked for in this process.

    `key` must name everything the result depends on: a kind ("netllm-abr", ...), the resolved checkpoint
    path, the device and any loading option. A failed load is not cached, so a later call retries."""
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = load()
        return _LOADED[key]
