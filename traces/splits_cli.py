"""`netllm splits`: write the project's trace splits (see `traces.splits`) as JSON lists of paths.

`--out DIR` receives one `<split>.json` per split (a JSON list of absolute trace paths, usable as
`netllm sim --traces DIR/<split>.json`), `summary.json` (trace count per split, the validation fraction and
the overlaps removed) and `config.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from netllm.cli import CommandError
from netllm.config import arg, save_config


@dataclass
class Config:
    out: Path = arg(help="folder for the split lists")
    data: Path | None = arg(None, help="reference data folder holding abr/traces (default: NETLLM_DATA or "
                                       "../shared/data)")


def run(cfg: Config) -> int:
    from netllm.chunklog import write_summary
    from traces.splits import SPLITS, VALID_FRACTION, SplitError, all_splits, trace_root

    try:
        splits = all_splits(cfg.data)
    except SplitError as exc:
        raise CommandError(str(exc)) from None
    cfg.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.out)
    for name in SPLITS:
        (cfg.out / f"{name}.json").write_text(json.dumps([str(p) for p in splits[name]], indent=1) + "\n")
    counts = {name: len(splits[name]) for name in SPLITS}
    write_summary({"root": str(trace_root(cfg.data)), "valid_fraction": VALID_FRACTION, **counts,
                   "fcc_test_in_train": counts["fcc-test"] - counts["fcc-test-unseen"],
                   "norway_test_from_train_recordings": counts["norway-test"] - counts["norway-test-unseen"]},
                  cfg.out)
    for name in SPLITS:
        print(f"{name:20s} {counts[name]:4d} traces -> {cfg.out / (name + '.json')}")
    return 0
