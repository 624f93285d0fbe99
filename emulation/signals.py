"""Turn SIGTERM/SIGHUP into an exception, so that `finally:` blocks (link clean-up) run on a polite kill,
and keep a second signal from interrupting that clean-up.

Within `terminate_raises()`: the first SIGTERM/SIGHUP raises `Terminated` (exit status 128 + signal), the
first SIGINT raises KeyboardInterrupt as usual; any further SIGINT/SIGTERM/SIGHUP is only noted on stderr,
because the clean-up it would interrupt is what removes the namespaces and processes. SIGKILL cannot be caught: that
case is handled by the run-state files (`emulation.runstate`) and the next start or `netllm cleanup`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from types import FrameType
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Terminated(SystemExit):
    """Raised in the main thread when SIGTERM/SIGHUP arrives; exits with 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Within the block, signals raise once (see module docstring). Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if raised:
            print(f"netllm: signal {signum} ignored while cleaning up (processes, logs, links)",
                  file=sys.stderr)
            return
        raised.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
