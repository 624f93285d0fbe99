"""How much context to serve a NetLLM-ABR checkpoint with: closed-loop QoE per served window length.

A checkpoint trained on `window`-step windows (20 for the shipped one) can be served with fewer steps of
context (the `window` option of the `netllm` policy, recorded as `serving.context_steps` in the checkpoint).
This plays every session of a split with each candidate window, as the policy serves it (LoRA merged,
`--quantize`: int8-split on a CPU by default, greedy, the checkpoint's serving target or `--target`), and
reports the mean per-chunk QoE (chunk 0 skipped) per window.

Splits: `valid` (for choosing, the default), `train` (in-sample for the weights, but not for the window: a
check that a choice carries over), or any folder of traces (`--trace-dir`, not together with `--split`).
Test splits are refused: choose on validation. So is a `--trace-dir` holding any file whose content is that of
a test-split trace (by SHA-256, as traces.splits finds duplicates), whatever its name.
Each trace is played from `--starts` start samples spread over it (as `netllm train --valid-starts`).

    .venv/bin/python benchmarks/bench_netllm_context.py --checkpoint models/netllm-abr-smollm2 \
        --windows 20,12,8,6,5,4,3,2 --starts 3 --workers 2 --out runs/context
    .venv/bin/python benchmarks/bench_netllm_context.py --split train --starts 1 --windows 20,3

Each window after the first listed is also compared with the first session by session (the same sessions
play at every window): mean QoE difference, 95% interval, wins / ties / losses, Wilcoxon p
(netllm.evaluation.paired_difference). A choice between windows is only worth making where that interval
excludes zero.

Writes OUT/context.json (per-session QoE and the paired comparisons included) with --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

CHOOSING_SPLITS = ("valid", "train")


def sessions_of(args: argparse.Namespace) -> list[Any]:
    from training.collect import split_sessions
    from training.train import spread_starts

    trace_dir = Path(args.trace_dir) if args.trace_dir else None
    return spread_starts(split_sessions(args.split, trace_dir, args.max_traces), args.starts)


def play(args: argparse.Namespace, window: int) -> dict[str, Any]:
    """Every session at one served window (run in a worker process: each loads the model once)."""
    import torch

    from controller.policies.netllm_policy import NetLLMPolicy
    from emulation.abr_sim import SimConfig, simulate_session
    from training.collect import load_sim_video

    torch.set_num_threads(args.threads)
    policy = NetLLMPolicy(checkpoint=args.checkpoint, quantize=args.quantize, window=window,
                          target_return=args.target, inference=args.inference)
    video = load_sim_video(Path(args.video) if args.video else None)
    started, scores, names = time.perf_counter(), [], []
    for s in sessions_of(args):
        scores.append(simulate_session(policy, s.trace, video, start_index=s.start_index,
                                       config=SimConfig()).mean_qoe)
        names.append(f"{s.trace.name}@{s.start_index}")
    return {"window": window, "mean_qoe": float(np.mean(scores)), "target_return": policy.target_return,
            "minutes": (time.perf_counter() - started) / 60.0, "sessions": names,
            "session_qoe": np.round(scores, 6).tolist()}


def paired_with_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every window's sessions against the first window's, pair by pair; printed and returned."""
    from netllm.evaluation import interval_text, paired_difference

    first = rows[0]
    out = []
    for row in rows[1:]:
        diff = paired_difference(row["session_qoe"], first["session_qoe"])
        # A single session has a difference but no interval (NaN ends): said so, and null in context.json.
        interval = interval_text(diff.ci95_low, diff.ci95_high, "session", signed=True)
        print(f"{row['window']:>3} vs {first['window']} steps: {diff.mean_diff:+.4f} {interval}, "
              f"wins/ties/losses {diff.wins}/{diff.ties}/{diff.losses}, Wilcoxon p {diff.wilcoxon_p:.3g}")
        figures = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in vars(diff).items()}
        out.append({"window": row["window"], "reference_window": first["window"], **figures})
    return out


def check_traces(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One source of traces, and never a test trace: a window chosen on test traces would be tuned on the
    figures it is then judged by."""
    if args.trace_dir and args.split is not None:
        parser.error("--split and --trace-dir both name the traces: give one")
    if args.trace_dir:
        test_copy = copied_test_trace(Path(args.trace_dir))
        if test_copy:
            parser.error(f"--trace-dir {args.trace_dir}: {test_copy}; choose on validation traces, "
                         "never on a test split")
        return
    args.split = args.split or CHOOSING_SPLITS[0]
    if args.split not in CHOOSING_SPLITS:
        parser.error(f"--split {args.split!r}: choose on {' or '.join(CHOOSING_SPLITS)}, "
                     "never on a test split")


def copied_test_trace(trace_dir: Path) -> str:
    """How a file of `trace_dir` (those read_trace_dir reads) repeats a test-split trace ("" if none)."""
    from traces import splits

    if not trace_dir.is_dir():
        return ""  # read_trace_dir reports it
    paths = sorted(p for p in trace_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    try:
        copies = splits.copies_of_test_traces(paths)
    except splits.SplitError as exc:
        print(f"warning: cannot check --trace-dir against the test splits ({exc})", file=sys.stderr)
        return ""
    if not copies:
        return ""
    path, split, test_path = copies[0]
    return f"{path.name} has the content of {split} trace {test_path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "netllm-abr-smollm2"))
    parser.add_argument("--windows", default="20,12,8,6,5,4,3,2", help="served context lengths to try")
    parser.add_argument("--split", default=None,
                        help=f"one of {', '.join(CHOOSING_SPLITS)} (default {CHOOSING_SPLITS[0]})")
    parser.add_argument("--trace-dir", default="",
                        help="a folder of traces instead of --split (none may be a test trace)")
    parser.add_argument("--max-traces", type=int, default=0, help="first N traces (0: all)")
    parser.add_argument("--starts", type=int, default=3, help="sessions per trace, spread over its samples")
    parser.add_argument("--target", type=float, default=None,
                        help="mean per-chunk QoE to ask for (default: the checkpoint's serving target)")
    parser.add_argument("--video", default="", help="video folder (default: the simulator's)")
    parser.add_argument("--quantize", default="auto", help="the policy's quantize option")
    parser.add_argument("--inference", default="kv", help="kv (the context runs from window // 2 + 1 to "
                                                          "window steps) or recompute (always window steps)")
    parser.add_argument("--workers", type=int, default=1, help="windows played in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--out", default="", help="write OUT/context.json")
    args = parser.parse_args(argv)
    check_traces(parser, args)
    if not (Path(args.checkpoint) / "netllm_config.json").is_file():
        parser.error(f"{args.checkpoint}: not a NetLLM checkpoint folder")
    try:
        windows = [int(w) for w in args.windows.split(",")]
    except ValueError:
        parser.error(f"--windows {args.windows!r}: comma-separated integers, e.g. 20,3")
    trained = int(json.loads((Path(args.checkpoint) / "netllm_config.json").read_text())["model"]["window"])
    if any(not 2 <= w <= trained for w in windows):
        # Checked here so that a bad value fails at once, not in a worker after minutes of play.
        parser.error(f"--windows {args.windows}: each from 2 to the trained window ({trained})")
    if args.starts < 1 or args.workers < 1 or args.threads < 1:
        parser.error("--starts, --workers and --threads must be >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.workers == 1:
        rows = [play(args, w) for w in windows]
    else:
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(pool.map(play, [args] * len(windows), windows))
    print(f"{'window':>6} {'mean QoE':>9} {'minutes':>8}   ({len(rows[0]['sessions'])} sessions)")
    for row in rows:
        print(f"{row['window']:>6} {row['mean_qoe']:>9.4f} {row['minutes']:>8.1f}")
    paired = paired_with_first(rows)
    best = max(rows, key=lambda r: r["mean_qoe"])
    print(f"best: {best['window']} steps")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        doc = {"checkpoint": args.checkpoint, "split": args.trace_dir or args.split, "starts": args.starts,
               "quantize": args.quantize, "inference": args.inference, "best_window": best["window"],
               "windows": rows, "paired_with_first": paired}
        (Path(args.out) / "context.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
