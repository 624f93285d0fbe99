"""What pre-training contributes: the shipped NetLLM-ABR recipe, step for step, with any backbone.

The shipped checkpoint (`models/netllm-abr-smollm2`, see models/README.md) was not trained in one run: it ran
out of time and was resumed with longer cosine schedules, then fine-tuned on the two strongest baselines'
episodes. Each resume restarts the learning rate from the new schedule's value at the step reached, so the
same number of steps on one schedule is not the same training. This script replays those stages exactly
(same pools, schedules, stopping steps, batch sizes, learning rate and evaluation cadence) for the backbone
given, so that `--backbone smollm2-random` (same shape, random weights) gets the shipped model's budget:

| stage | pool | cosine schedule (steps) | runs to step | evaluated every |
|---|---|---|---|---|
| 1 | all six baselines (`pool-causal`) | 500 | 451 | 75 |
| 2 | all six baselines | 1000 | 890 | 75 |
| 3 | all six baselines | 1600 | 1383 | 100 |
| 4 | robustMPC and pensieve (`pool-top`) | 2400 | 1900 | 100 |

(The shipped stage 4 was stopped by hand after step 1907; its last evaluation, and so the last chance to be
selected, was step 1900. Its `best/` was step 1600.)

Every invocation continues where the run folder stands (`OUT/last`), so the recipe may be spread over several
sittings (`--through-step` pauses it early). Missing pools are collected first with the documented commands
(seconds). Selection is on validation only, as `netllm train` does it; then, for the test splits:

    .venv/bin/python benchmarks/bench_netllm_pretraining.py --backbone smollm2-random \
        --out runs/pretraining/smollm2-random --threads 2
    .venv/bin/python benchmarks/bench_netllm_context.py --checkpoint runs/pretraining/smollm2-random/best \
        --windows 20,3 --starts 3     # the served context, chosen on validation as for the shipped model
    .venv/bin/python benchmarks/bench_netllm_qoe.py --checkpoint runs/pretraining/smollm2-random/best \
        --policies netllm --workers 2

Prints one line per stage run and the periodic validation scores of the whole run (from OUT/loss.csv).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SIX_BASELINES = "robustmpc,robustmpc-pm1,pensieve,bola,rb,bba"
TOP_BASELINES = "robustmpc,pensieve"


@dataclass(frozen=True)
class Stage:
    """One invocation of `netllm train` in the shipped recipe."""

    pool: str  # "causal" (all six baselines) or "top" (robustMPC and pensieve)
    schedule_steps: int  # --optimizer-steps: length of the cosine schedule the learning rate follows
    until_step: int  # the step this stage stops after
    eval_every: int


SHIPPED_STAGES = (Stage("causal", 500, 451, 75), Stage("causal", 1000, 890, 75),
                  Stage("causal", 1600, 1383, 100), Stage("top", 2400, 1900, 100))

# Flags every stage shares (models/README.md, step 2 of "How netllm-abr-smollm2 was made").
COMMON_FLAGS = ("--micro-batch-size", "4", "--grad-accum", "2", "--lr", "3e-4", "--warmup-steps", "20",
                "--valid-max-traces", "12", "--save-dtype", "bfloat16")


def current_step(out: Path) -> int:
    """The optimizer step the run's last/ was saved at (0: no run yet)."""
    state = out / "last" / "train_state.json"
    return int(json.loads(state.read_text())["counters"]["step"]) if state.is_file() else 0


def ensure_pool(folder: Path, policies: str) -> None:
    """Collect the pool with the recipe's command unless it is there (deterministic: seed 0, 2 repeats)."""
    if (folder / "pool.npz").is_file():
        return
    subprocess.run([sys.executable, "-m", "netllm", "collect", "--split", "train", "--out", str(folder),
                    "--policies", policies], check=True, cwd=REPO)


def run_stage(args: argparse.Namespace, stage: Stage, step: int, stop_at: int) -> None:
    pool = args.pool_causal if stage.pool == "causal" else args.pool_top
    cmd = [sys.executable, "-m", "netllm", "train", "--pool", str(pool), "--out", str(args.out),
           "--backbone", args.backbone, "--optimizer-steps", str(stage.schedule_steps),
           "--stop-after-steps", str(stop_at - step), "--eval-every", str(stage.eval_every),
           "--threads", str(args.threads), *COMMON_FLAGS, *shlex.split(args.train_args)]
    if step > 0:
        cmd.append("--resume")
    print(f"stage to step {stop_at} (schedule {stage.schedule_steps}, pool {pool}): {' '.join(cmd[2:])}",
          flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def validation_scores(out: Path) -> list[tuple[int, float]]:
    """(step, mean validation QoE) of every periodic evaluation so far."""
    path = out / "loss.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [(int(r["step"]), float(r["valid_qoe"])) for r in csv.DictReader(f) if r.get("valid_qoe")]


def run_recipe(args: argparse.Namespace, stages: tuple[Stage, ...] = SHIPPED_STAGES) -> int:
    """Run every stage the run folder has not reached yet (up to --through-step); the step reached."""
    for stage in stages:
        step = current_step(args.out)
        stop_at = min(stage.until_step, args.through_step)
        if step < stop_at:
            run_stage(args, stage, step, stop_at)
    return current_step(args.out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="smollm2-random", help="any `netllm train --backbone` value")
    p.add_argument("--out", type=Path, default=Path("runs/pretraining/smollm2-random"))
    p.add_argument("--pool-causal", type=Path, default=Path("runs/pretraining/pool-causal"),
                   help=f"pool of {SIX_BASELINES} on the train split (collected if missing)")
    p.add_argument("--pool-top", type=Path, default=Path("runs/pretraining/pool-top"),
                   help=f"pool of {TOP_BASELINES} on the train split (collected if missing)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--through-step", type=int, default=SHIPPED_STAGES[-1].until_step,
                   help="pause after this step (resume later with the same command)")
    # Not part of the recipe: for other hardware (`--device cuda`) or small checks (tests).
    p.add_argument("--train-args", default="", help="extra flags appended to every `netllm train` call")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_pool(args.pool_causal, SIX_BASELINES)
    ensure_pool(args.pool_top, TOP_BASELINES)
    step = run_recipe(args)
    print(f"{args.out}: step {step}; validation QoE at the pool's median target:")
    for step, qoe in validation_scores(args.out):
        print(f"  step {step:5d}  {qoe:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
