"""`netllm serve-controller`: run the decision service until SIGINT/SIGTERM.

Prints `controller http://HOST:PORT` (flushed) on stdout once listening; logs go to stderr. Also runs as
`python -m controller.cli [options]` (what `controller.runner.launch_controller` starts).
The Python runners (in-process, thread, child process) live in `controller.runner`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from controller.app import ControllerConfig

Config = ControllerConfig


def _announce(url: str) -> None:
    print(f"controller {url}", flush=True)


def limit_torch_threads(threads: int) -> None:
    """Intra-op threads of this process's torch work. torch is imported only when a torch-based policy loads,
    so the limit goes through the environment that it reads then (explicit OMP_NUM_THREADS wins)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def run(cfg: ControllerConfig) -> int:
    from controller.runner import serve_forever
    from netllm.cli import CommandError

    level = getattr(logging, cfg.log_level.upper(), None)
    if not isinstance(level, int):
        raise CommandError(f"--log-level must be one of debug, info, warning, error; got {cfg.log_level!r}")
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if cfg.torch_threads < 0:
        raise CommandError("--torch-threads must be >= 0")
    if not 0 <= cfg.port <= 65535:  # checked here: bind() would raise OverflowError, not OSError
        raise CommandError(f"--port must be in 0..65535 (0: any free port), got {cfg.port}")
    if cfg.torch_threads:
        limit_torch_threads(cfg.torch_threads)
    try:
        asyncio.run(serve_forever(cfg, _announce))
    except (ValueError, TypeError) as exc:  # bad policy name/options, unknown task
        raise CommandError(str(exc)) from None
    except OSError as exc:  # address in use, permission denied
        raise CommandError(f"cannot listen on {cfg.host}:{cfg.port}: {exc}") from None
    return 0


if __name__ == "__main__":
    from netllm.cli import main

    sys.exit(main(["serve-controller", *sys.argv[1:]]))
