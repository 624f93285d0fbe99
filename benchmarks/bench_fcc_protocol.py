"""NetLLM's ABR evaluation protocol in the simulator: every policy, incl. the offline optimum, on fcc-test
(video1, NetLLM's start offsets, no noise), fcc-test-unseen and norway-test (start sample 1: Genet's set has
no offsets file), and norway-test-unseen. The unseen sets are subsets, read off the full runs' sessions.

Each (set, default quality) pair is one `netllm sim` run into `--out/<set>-q<k>/`; the table (markdown) and
the figures (JSON) go to `--out`. Default quality 1 is the project's protocol; 0 is what NetLLM's baseline
runner actually uses (DEFAULT_QUALITY = 0 in its constants) and reproduces its published BBA figure.

Published references (NetLLM's charts, fcc-test, video1): BBA ~0.764, MPC (= robustmpc-pm1) ~0.848;
an independent reference simulator gives robustmpc ~0.99.

    .venv/bin/python benchmarks/bench_fcc_protocol.py --out runs/bench-fcc [--sets fcc-test,norway-test]
        [--default-qualities 1,0] [--policies ...] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from emulation.abr_sim_cli import Config, run  # noqa: E402
from netllm.paths import shared_data_dir  # noqa: E402
from traces.splits import split_paths  # noqa: E402

POLICIES = ["bba", "rb", "bola", "fastmpc", "robustmpc-pm1", "robustmpc", "optimal"]
REFERENCE = {"bba": 0.764, "robustmpc-pm1": 0.848, "robustmpc": 0.99}
SUBSETS = {"fcc-test": "fcc-test-unseen", "norway-test": "norway-test-unseen"}


def run_set(name: str, quality: int, policies: list[str], out: Path, workers: int) -> pd.DataFrame:
    abr = shared_data_dir() / "abr"
    folder = out / f"{name}-q{quality}"
    offsets = abr / "fcc-test-start-offsets.txt" if name == "fcc-test" else None
    started = time.time()
    run(Config(traces=abr / "traces" / name, video=abr / "videos" / "video1_sizes", out=folder,
               policies=policies, start_offsets=offsets, default_quality=quality, workers=workers,
               chunk_log=False))
    print(f"{name} q{quality}: {time.time() - started:.0f} s", flush=True)
    return pd.read_csv(folder / "sessions.csv")


def table(sessions: pd.DataFrame, keep: set[str] | None) -> dict[str, float]:
    if keep is not None:
        sessions = sessions[sessions["trace"].isin(keep)]
    means = sessions.groupby("policy", sort=False)["mean_qoe"].mean().to_dict()
    return means | {"traces": sessions["trace"].nunique()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sets", default="fcc-test,norway-test")
    parser.add_argument("--default-qualities", default="1,0")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    policies = args.policies.split(",")
    figures: dict[str, dict[str, float]] = {}
    for quality in (int(q) for q in args.default_qualities.split(",")):
        for name in args.sets.split(","):
            sessions = run_set(name, quality, policies, args.out, args.workers)
            figures[f"{name} q{quality}"] = table(sessions, None)
            if name in SUBSETS:
                keep = {p.name for p in split_paths(SUBSETS[name])}
                figures[f"{SUBSETS[name]} q{quality}"] = table(sessions, keep)
    lines = ["| set (default quality) | traces | " + " | ".join(policies) + " |",
             "|---|---|" + "---|" * len(policies)]
    for key, fig in figures.items():
        lines.append(f"| {key} | {fig['traces']} | " + " | ".join(f"{fig[p]:.3f}" for p in policies) + " |")
    lines.append("| published / reference (fcc-test) | 100 | "
                 + " | ".join(f"{REFERENCE[p]:.3f}" if p in REFERENCE else "" for p in policies) + " |")
    text = "\n".join(lines)
    print(text)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
