"""Ways to run the decision service: in this event loop, in a background thread, or as its own process.

- `async with run_controller(cfg) as url:` serves on the caller's event loop (tests, in-process tools).
- `with controller_in_thread(cfg) as url:` serves from a daemon thread with its own loop (for synchronous
  callers).
- `launch_controller(...)` / `await launch_controller_async(...)` start `python -m controller.cli` as a child
  process and return a `ControllerProcess` once it printed its URL. Live-session tests kill that process
  mid-session (`.kill()`), so it is a real separate process. On Linux the child gets SIGTERM when the thread
  that launched it exits, so a crashed test run leaves no controller behind.

`url` is always `http://HOST:PORT` with the port actually bound (port 0 picks a free one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from aiohttp import web

from controller.app import ControllerConfig, create_app
from netllm.paths import REPO_ROOT

URL_PREFIX = "controller "
"""The CLI prints `controller http://HOST:PORT` on stdout once listening."""


def _format_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _bound_url(runner: web.AppRunner, host: str) -> str:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return _format_url(host, int(address[1]))
    raise RuntimeError("controller bound no TCP address")


def _config(cfg: ControllerConfig | None, overrides: dict) -> ControllerConfig:
    return dataclasses.replace(cfg or ControllerConfig(), **overrides)


@contextlib.asynccontextmanager
async def run_controller(cfg: ControllerConfig | None = None, **overrides: object) -> AsyncIterator[str]:
    """Serve on the running loop; yields the URL; stops (clean-up included) on exit.
    `overrides` replace config fields, e.g. `run_controller(policy="bba")`."""
    cfg = _config(cfg, overrides)
    runner = web.AppRunner(create_app(cfg), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.host, cfg.port).start()
        yield _bound_url(runner, cfg.host)
    finally:
        await runner.cleanup()


async def serve_forever(cfg: ControllerConfig, on_ready: Callable[[str], None]) -> None:
    """Serve until SIGINT or SIGTERM; `on_ready(url)` once listening."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_controller(cfg) as url:
        on_ready(url)
        await stop.wait()


@contextlib.contextmanager
def controller_in_thread(cfg: ControllerConfig | None = None, startup_timeout_s: float = 30.0,
                         **overrides: object) -> Iterator[str]:
    """Serve from a daemon thread; yields the URL; stops the server on exit."""
    cfg = _config(cfg, overrides)
    ready: dict[str, object] = {}
    started = threading.Event()
    holder: dict[str, object] = {}

    async def main() -> None:
        stop = asyncio.Event()
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), stop
        try:
            async with run_controller(cfg) as url:
                ready["url"] = url
                started.set()
                await stop.wait()
        except BaseException as exc:  # report start-up failures to the caller
            ready["error"] = exc
            started.set()

    thread = threading.Thread(target=lambda: asyncio.run(main()), name="controller", daemon=True)
    thread.start()
    if not started.wait(startup_timeout_s):
        raise TimeoutError(f"controller did not start within {startup_timeout_s} s")
    if "error" in ready:
        error = ready["error"]
        raise RuntimeError(f"controller failed to start: {error}") from error  # type: ignore[misc]
    try:
        yield str(ready["url"])
    finally:
        loop, stop = holder["loop"], holder["stop"]
        loop.call_soon_threadsafe(stop.set)  # type: ignore[attr-defined]
        thread.join(timeout=10)


# -- child process -----------------------------------------------------------------------------------------

class ControllerLaunchError(RuntimeError):
    """The controller process exited or stayed silent before printing its URL; the message has its stderr."""


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when the launching thread dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class ControllerProcess:
    """A running `python -m controller.cli`. `url`, `pid`, `popen`; `stop()` (SIGTERM, then SIGKILL),
    `kill()` (SIGKILL at once: a crash), `alive()`, `stderr_text()`. Also a context manager (stop on exit)."""

    def __init__(self, popen: subprocess.Popen, stderr_path: Path, stderr_is_temp: bool) -> None:
        self.popen = popen
        self.url = ""
        self.stderr_path = stderr_path
        self._stderr_is_temp = stderr_is_temp
        self._stdout_buffer = b""

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def _poll_url(self, wait_s: float) -> str | None:
        """Read what stdout has (waiting at most wait_s); the URL once its line is complete."""
        stdout: IO[bytes] = self.popen.stdout  # type: ignore[assignment]
        readable, _, _ = select.select([stdout], [], [], max(0.0, wait_s))
        if readable:
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:  # end of output: the process is exiting
                try:
                    self.popen.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    pass
                status = self.popen.poll()
                raise ControllerLaunchError(self._failure(
                    f"exited with status {status}" if status is not None else "closed its output"))
            self._stdout_buffer += chunk
        for line in self._stdout_buffer.decode(errors="replace").splitlines(keepends=True):
            if line.startswith(URL_PREFIX) and line.endswith("\n"):
                return line[len(URL_PREFIX):].strip()
        if self.popen.poll() is not None and not readable:
            raise ControllerLaunchError(self._failure(f"exited with status {self.popen.returncode}"))
        return None

    def _failure(self, what: str) -> str:
        self._terminate(signal.SIGKILL, 5.0)
        message = f"controller process {what}; stderr:\n{self.stderr_text()[-4000:]}"
        if self._stderr_is_temp:
            self.stderr_path.unlink(missing_ok=True)
        return message

    def wait_ready(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (url := self._poll_url(min(0.2, max(0.0, deadline - time.monotonic())))) is None:
            if time.monotonic() >= deadline:
                raise ControllerLaunchError(self._failure(f"printed no URL within {timeout_s} s"))
        self.url = url
        return url

    async def wait_ready_async(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (url := self._poll_url(0.0)) is None:
            if time.monotonic() >= deadline:
                raise ControllerLaunchError(self._failure(f"printed no URL within {timeout_s} s"))
            await asyncio.sleep(0.02)
        self.url = url
        return url

    def _terminate(self, sig: int, timeout_s: float) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout_s)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return self.popen.returncode

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM (graceful: the decision log is closed), SIGKILL after timeout_s; the exit status."""
        code = self._terminate(signal.SIGTERM, timeout_s)
        if self._stderr_is_temp:
            self.stderr_path.unlink(missing_ok=True)
        return code

    def kill(self) -> int:
        """SIGKILL now, as a crash would; the exit status (-9)."""
        return self._terminate(signal.SIGKILL, 10.0)

    def __enter__(self) -> ControllerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def controller_command(policy: str = "robustmpc", host: str = "127.0.0.1", port: int = 0,
                       decision_log: Path | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "controller.cli", "--policy", policy, "--host", host, "--port", str(port)]
    if decision_log is not None:
        cmd += ["--decision-log", str(Path(decision_log).resolve())]
    return cmd + list(extra_args)


def _start(cmd: list[str], stderr_path: Path | None, env: dict[str, str] | None) -> ControllerProcess:
    is_temp = stderr_path is None
    if stderr_path is None:
        fd, name = tempfile.mkstemp(prefix="controller-", suffix=".stderr")
        os.close(fd)
        stderr_path = Path(name)
    child_env = dict(os.environ if env is None else env)
    paths = (str(REPO_ROOT), child_env.get("PYTHONPATH", ""))
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    child_env["PYTHONUNBUFFERED"] = "1"
    preexec = _die_with_parent if sys.platform == "linux" else None
    with open(stderr_path, "ab") as stderr:
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                 env=child_env, preexec_fn=preexec)
    return ControllerProcess(popen, stderr_path, is_temp)


def launch_controller(policy: str = "robustmpc", host: str = "127.0.0.1", port: int = 0,
                      decision_log: Path | None = None, extra_args: Sequence[str] = (),
                      startup_timeout_s: float = 60.0, stderr_path: Path | None = None,
                      env: dict[str, str] | None = None) -> ControllerProcess:
    """Start the controller as a child process and wait (blocking) until it listens.
    `extra_args` are further `netllm serve-controller` options (e.g. ["--max-sessions", "8"]).
    Raises ControllerLaunchError with the child's stderr when it fails to start."""
    proc = _start(controller_command(policy, host, port, decision_log, extra_args), stderr_path, env)
    proc.wait_ready(startup_timeout_s)
    return proc


async def launch_controller_async(policy: str = "robustmpc", host: str = "127.0.0.1", port: int = 0,
                                  decision_log: Path | None = None, extra_args: Sequence[str] = (),
                                  startup_timeout_s: float = 60.0, stderr_path: Path | None = None,
                                  env: dict[str, str] | None = None) -> ControllerProcess:
    """`launch_controller` for async callers: waits for the URL without blocking the event loop."""
    proc = _start(controller_command(policy, host, port, decision_log, extra_args), stderr_path, env)
    await proc.wait_ready_async(startup_timeout_s)
    return proc
