"""The `netllm` command: one entry point, one subcommand per job.

Each subcommand lives in the package that does the work, as a module that defines a `Config` dataclass
(its options, see `netllm.config`) and `run(cfg) -> int`. Modules are imported only when their subcommand
runs, so `netllm --help` stays fast and a command never pays for another's imports (torch, Playwright).

Conventions every subcommand follows: `--out DIR` is where it writes; a command that produces results writes
`summary.json` and its resolved `config.json` there; `--video DIR` names a prepared video;
`--policy`/`--policies` name policies; errors go to stderr with a non-zero exit status: a `CommandError` or
an `OSError` (an `--out` that is a file, a folder that cannot be written) is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from netllm.config import add_config_args, config_from_args

# name -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-video": ("server.prepare_video", "encode a synthetic source into a 6-level DASH ladder + video.json"),
    "serve": ("server.cli", "run the DASH server alone"),
    "serve-controller": ("controller.cli", "run the decision service (ABR, VP, CJS policies)"),
    "stream": ("client.stream", "play a video once in Chromium, optionally under an emulated trace, and log QoE"),
    "replay": ("client.replay", "stream a whole trace set with several policies, one session per (trace, policy)"),
    "cleanup": ("emulation.cleanup_cli", "remove leftovers (namespaces, links, processes) of crashed emulator runs"),
    "sim": ("emulation.abr_sim_cli", "evaluate ABR policies over a trace set in the chunk-level simulator"),
    "report": ("emulation.report", "draw comparison plots (QoE box plots, CDFs, timelines) from a results folder"),
    "gen-trace": ("traces.generators", "write a synthetic bandwidth trace (stepped, constant, Markov) as a cooked file"),
    "splits": ("traces.splits_cli", "list the project's train/validation/test splits of the ABR trace sets"),
    "train-rl": ("training.rl_baseline", "train the Pensieve-architecture actor-critic baseline in the simulator"),
    "collect": ("training.collect", "build an experience pool by running baselines in the simulator"),
    "train": ("training.train", "adapt an LLM with LoRA on an experience pool (return-conditioned offline RL)"),
    "vp-eval": ("emulation.vp_eval", "evaluate viewport-prediction policies on head-movement traces"),
    "train-vp": ("training.train_vp", "train viewport-prediction models (TRACK-style baseline, NetLLM-VP)"),
    "cjs-eval": ("emulation.cjs_eval", "evaluate cluster job schedulers in the Spark-cluster simulator"),
    "train-cjs": ("training.train_cjs", "train cluster-scheduling models (Decima-style GNN, NetLLM-CJS)"),
}


class CommandError(Exception):
    """A user-facing failure: printed to stderr without a traceback, exit status 2."""


def os_error_text(exc: OSError) -> str:
    """`path: reason` of a failed file operation (without the `[Errno N]` noise), else the error's text."""
    if exc.filename is not None and exc.strerror:
        target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{exc.filename}{target}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: netllm COMMAND [options]   (netllm COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"netllm: unknown command {name!r}\n\n{_top_help()}", file=sys.stderr)
        return 2
    module_name, desc = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"netllm {name}: not available in this build ({exc})", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"netllm {name}", description=desc)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
        ns = parser.parse_args(rest)
        runner, cfg = module.run_args, ns
    else:
        add_config_args(parser, module.Config)
        ns = parser.parse_args(rest)
        runner, cfg = module.run, config_from_args(module.Config, ns)
    try:
        return int(runner(cfg) or 0)
    except CommandError as exc:
        print(f"netllm {name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"netllm {name}: error: {os_error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"netllm {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
