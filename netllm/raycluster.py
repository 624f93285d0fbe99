"""Ray for `--ray ADDRESS` (`netllm sim`, `netllm replay`): connect, run tasks, collect results in order.

`ADDRESS` is `local` (a private Ray instance on this machine, every server bound to 127.0.0.1, no
dashboard; stopped when the command ends) or the address of a running cluster (`HOST:PORT` of its head,
`ray://HOST:10001`, or `auto`), which is only connected to and disconnected from.

Every task runs with the repository on `PYTHONPATH` and in the driver's working directory, so the code and
relative paths (trace files, videos) resolve as they do for the driver: on another node the same checkout
must exist at the same path (as with any shared-filesystem cluster). Tasks are never retried (a retried
live session would write twice into one folder), and Ctrl-C / SIGTERM cancels the tasks still running,
waits a little for them to clean up, then disconnects.

`ray` is imported only here, only when `--ray` is given (`pip install ray==2.60.0`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from typing import Any, Callable, Iterator, Sequence

from netllm.cli import CommandError
from netllm.paths import REPO_ROOT

LOCAL = "local"
RAY_PIN = "ray==2.60.0"
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 ** 2
"""Results are small JSON-like rows; a small store keeps the private instance light on a small machine."""
CANCEL_WAIT_S = 60.0
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CommandError(f"--ray needs the `ray` package: pip install {RAY_PIN}") from None
    return ray


def _loopback_only() -> None:
    """Make a private instance advertise and bind 127.0.0.1: Ray treats a node as single-machine (loopback
    address, servers on loopback only) when clusters are disabled. Must be set before Ray starts."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:  # already imported: its constant was read at import time
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def ray_session(address: str, num_cpus: int | None = None) -> Iterator[Any]:
    """Yields the `ray` module, connected; `num_cpus` sizes a `local` instance (ignored for a cluster)."""
    if not address:
        raise CommandError("--ray needs an address: `local` or a running cluster's HOST:PORT")
    if address == LOCAL:
        _loopback_only()
    ray = _import_ray()
    if ray.is_initialized():
        raise CommandError("Ray is already initialised in this process")
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}}
    try:
        if address == LOCAL:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False,
                     runtime_env=runtime_env)
        else:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise CommandError(f"--ray {address}: could not start or reach Ray: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _in_cwd(cwd: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Task body: run `fn(*args)` in the driver's working directory (when this node has it)."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    return fn(*args)


def run_remote(ray: Any, fn: Callable[..., Any], arg_tuples: Sequence[tuple], desc: str, unit: str,
               on_result: Callable[[int, Any], None] | None = None, cpus_per_task: float = 1) -> list[Any]:
    """`fn(*args)` as one Ray task per tuple; results in submission order. `on_result(index, result)` runs
    in the driver as each task completes. A task's error is raised here as the exception the task raised
    (same type and message, e.g. a one-line `CommandError`), not as Ray's wrapper of it."""
    from tqdm import tqdm

    remote = ray.remote(num_cpus=cpus_per_task, max_retries=0)(_in_cwd)
    cwd = os.getcwd()
    refs = [remote.remote(cwd, fn, *args) for args in arg_tuples]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    bar = tqdm(total=len(refs), desc=desc, unit=unit, disable=None)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                results[index[ref]] = value = _get(ray, ref)
                if on_result is not None:
                    on_result(index[ref], value)
                bar.update()
    except BaseException:
        _cancel(ray, pending)
        raise
    finally:
        bar.close()
    return results


def _get(ray: Any, ref: Any) -> Any:
    """A task's result; a task's own exception is raised as itself (type and message), not as Ray's
    wrapper, whose text is a multi-line, colour-coded remote traceback (a user error such as a
    `CommandError` must stay one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise task_cause(exc) from None


def task_cause(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, from Ray's wrapper; where Ray could not keep it (unpicklable), a
    RuntimeError with the first line of the wrapper's text, colour codes removed."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return cause
    lines = [line.strip() for line in ANSI_ESCAPE.sub("", str(exc)).splitlines() if line.strip()]
    return RuntimeError(lines[0] if lines else type(exc).__name__)


def _cancel(ray: Any, pending: list[Any]) -> None:
    """Ask running tasks to stop (KeyboardInterrupt in the task, so its `finally:` clean-up runs), and give
    them a moment to finish it before the caller disconnects."""
    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=False)
    deadline = time.monotonic() + CANCEL_WAIT_S
    while pending and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
