"""QoE of a NetLLM-ABR checkpoint next to the baselines on the test splits, in the chunk-level simulator.

For each split (default fcc-test, fcc-test-unseen, norway-test; see traces.splits) this runs `netllm sim`
with NetLLM's protocol (traces in name order; fcc-test traces at the start indices of
`<data>/abr/fcc-test-start-offsets.txt`, others at sample 1; video1; chunk 0 at quality 1; mean QoE over
chunks 1..47 then over traces), the `netllm` policy reading `--checkpoint` (through $NETLLM_ABR_CHECKPOINT)
and served as `--quantize` says (through $NETLLM_ABR_QUANTIZE; default auto: int8-split on a CPU).
Test splits are for this report only: checkpoints are selected on the validation split by `netllm train`.

    .venv/bin/python benchmarks/bench_netllm_qoe.py --checkpoint models/netllm-abr-smollm2 --out runs/qoe
    .venv/bin/python benchmarks/bench_netllm_qoe.py --checkpoint runs/abr/best --splits fcc-test \
        --max-traces 20

Each split's full `netllm sim` results (summary.json, sessions.csv, chunks.parquet) go to OUT/<split>/;
the table is printed and written to OUT/qoe_table.json. With `--reference` (default robustmpc, when it is among
the policies) each split also gets paired comparisons with it, trace by trace (`netllm report --reference`):
the mean QoE difference with its 95% interval, wins / ties / losses and a Wilcoxon p-value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from netllm.paths import REPO_ROOT, shared_data_dir  # noqa: E402

BASELINES = "bba,rb,bola,robustmpc-pm1,robustmpc"


def run_split(split: str, args: argparse.Namespace, out: Path) -> dict[str, dict]:
    from emulation.abr_sim_cli import Config, run
    from traces.splits import split_paths

    paths = [str(p) for p in split_paths(split)]
    if args.max_traces > 0:
        paths = paths[:args.max_traces]
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "traces.json"
    listing.write_text(json.dumps(paths, indent=1) + "\n")
    offsets = shared_data_dir() / "abr" / "fcc-test-start-offsets.txt"
    cfg = Config(traces=listing, video=Path(args.video), out=out, policies=args.policies.split(","),
                 start_offsets=offsets if split.startswith("fcc-test") else None, workers=args.workers,
                 chunk_log=True)
    if run(cfg) != 0:
        raise RuntimeError(f"netllm sim failed on {split}")
    return json.loads((out / "summary.json").read_text())


def paired_rows(split_out: Path, policies: list[str], reference: str) -> list[dict]:
    """Every policy against `reference`, session by session, from one split's chunk log."""
    from emulation.report import load_chunks, paired_table, print_paired, session_table

    table = paired_table(session_table(load_chunks(split_out)), policies, reference)
    print_paired(table)
    return table.to_dict("records")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(REPO_ROOT / "models" / "netllm-abr-smollm2"))
    parser.add_argument("--splits", default="fcc-test,fcc-test-unseen,norway-test")
    parser.add_argument("--policies", default="netllm," + BASELINES)
    parser.add_argument("--video", default=str(shared_data_dir() / "abr" / "videos" / "video1_sizes"))
    parser.add_argument("--max-traces", type=int, default=0, help="first N traces of each split (0: all)")
    parser.add_argument("--workers", type=int, default=1,
                        help="simulator worker processes (each loads the LLM)")
    parser.add_argument("--quantize", default="auto",
                        help="the netllm policy's quantize option (auto, none, int8, int8-split, ...)")
    parser.add_argument("--reference", default="robustmpc",
                        help="policy to pair the others with, per split (skipped when not in --policies)")
    parser.add_argument("--out", default="runs/bench-netllm-qoe")
    args = parser.parse_args(argv)
    if not (Path(args.checkpoint) / "netllm_config.json").is_file():
        print(f"{args.checkpoint}: not a NetLLM checkpoint folder", file=sys.stderr)
        return 2
    os.environ["NETLLM_ABR_CHECKPOINT"] = str(Path(args.checkpoint).resolve())
    os.environ["NETLLM_ABR_QUANTIZE"] = args.quantize
    out = Path(args.out)
    table: dict[str, dict[str, float]] = {}
    for split in args.splits.split(","):
        summary = run_split(split, args, out / split)
        table[split] = {p: summary[p]["mean_qoe"] for p in args.policies.split(",")}
    names = args.policies.split(",")
    print("\nmean per-chunk QoE (chunk 0 skipped)")
    print(f"{'split':<18}" + "".join(f"{n:>15}" for n in names))
    for split, row in table.items():
        print(f"{split:<18}" + "".join(f"{row[n]:>15.4f}" for n in names))
    doc = {"checkpoint": args.checkpoint, "quantize": args.quantize, "max_traces": args.max_traces,
           "table": table}
    if args.reference in names and len(names) > 1:
        doc["paired"] = {}
        for split in table:
            print(f"\n{split}, paired with {args.reference} (difference of mean QoE, 95% interval):")
            doc["paired"][split] = paired_rows(out / split, names, args.reference)
    (out / "qoe_table.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
