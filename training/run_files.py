"""Run-folder rules shared by the training entry points: option range checks, the resumed config checked
against the saved one (with a history of configs), and exports that never clobber unrelated folders.

Resuming: `check_resume_config` compares the new resolved config with OUT/config.json field by field; only the
fields an entry point names as resumable may differ (how long and how often, where it runs, ...), anything
that defines the model or its data must match. `save_run_config` then keeps the replaced config as
`config-resume-N.json` (N-th resume), so config.json is always the latest and none is lost.

Exports (`--export DIR`): a copy of a selected checkpoint swapped in atomically, and only over an absent or
empty folder or one that holds nothing but a checkpoint of the same format (a shipped model being replaced).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from netllm.atomic import write_folder_atomically
from netllm.cli import CommandError
from netllm.config import read_json_object, to_jsonable

CONFIG_FILE = "config.json"
HISTORY_PREFIX = "config-resume-"


# ------------------------------------------------------------------------------------------ range checks

def require(condition: bool, message: str) -> None:
    """A user error when `condition` does not hold (one line, no traceback)."""
    if not condition:
        raise CommandError(message)


def check_ranges(cfg: Any, *, at_least: dict[str, float] | None = None, above: dict[str, float] | None = None,
                 within: dict[str, tuple[float, float]] | None = None) -> None:
    """Range checks of numeric options, named as on the command line. `at_least`: value >= bound; `above`:
    value > bound; `within`: lo <= value <= hi. NaN and infinities never pass (argparse accepts 'nan')."""
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    def value(name: str) -> float:
        v = getattr(cfg, name)
        require(isinstance(v, (int, float)) and math.isfinite(v),
                f"{flag(name)} {v}: must be a finite number")
        return float(v)

    for name, low in (at_least or {}).items():
        require(value(name) >= low, f"{flag(name)} {getattr(cfg, name)}: must be >= {low:g}")
    for name, low in (above or {}).items():
        require(value(name) > low, f"{flag(name)} {getattr(cfg, name)}: must be > {low:g}")
    for name, (low, high) in (within or {}).items():
        require(low <= value(name) <= high,
                f"{flag(name)} {getattr(cfg, name)}: must be in [{low:g}, {high:g}]")


def check_choice(cfg: Any, name: str, choices: Iterable[str]) -> None:
    options = list(choices)
    require(getattr(cfg, name) in options,
            f"--{name.replace('_', '-')} {getattr(cfg, name)!r}: use one of {', '.join(options)}")


# --------------------------------------------------------------------------------------------- resuming

def read_saved_config(out: Path) -> dict[str, Any]:
    return read_json_object(Path(out) / CONFIG_FILE, CommandError, "a run config")


def config_differences(cfg: Any, saved: dict[str, Any], may_change: Collection[str]) -> list[str]:
    """`field: saved -> now` for every field outside `may_change` whose value differs. A field the saved
    config lacks (added to the code since) is compared with its default, which that run used."""
    now = to_jsonable(cfg)
    diffs = []
    for f in dataclasses.fields(cfg):
        if f.name in may_change:
            continue
        before = saved[f.name] if f.name in saved else _default_json(f)
        if not _same(before, now[f.name]):
            diffs.append(f"--{f.name.replace('_', '-')}: {before!r} -> {now[f.name]!r}")
    return diffs


def _default_json(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return to_jsonable(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return to_jsonable(f.default_factory())
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)  # 3e-4 saved as 0.0003, an int default given as 2.0, ...
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_resume_config(cfg: Any, out: Path, may_change: Collection[str]) -> None:
    """Refuse to resume OUT with a config that differs from OUT/config.json outside `may_change`."""
    diffs = config_differences(cfg, read_saved_config(out), may_change)
    if diffs:
        raise CommandError(f"--resume: these options differ from {Path(out) / CONFIG_FILE} ("
                           + "; ".join(diffs) + "); resume with the run's values, or start a new --out "
                           "(only " + ", ".join(sorted(f"--{n.replace('_', '-')}" for n in may_change))
                           + " may change)")


def save_run_config(cfg: Any, out: Path, resuming: bool) -> Path:
    """Write OUT/config.json (atomically: a resume reads it back); a resume first keeps the config it
    replaces as config-resume-N.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    if resuming and path.is_file():
        shutil.copy2(path, out / f"{HISTORY_PREFIX}{len(config_history(out)) + 1}.json")
    tmp = out / f".{CONFIG_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(to_jsonable(cfg), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def config_history(out: Path) -> list[Path]:
    """The configs replaced by resumes, oldest first."""
    found = [(p, p.stem[len(HISTORY_PREFIX):]) for p in Path(out).glob(f"{HISTORY_PREFIX}*.json")]
    return [p for p, n in sorted((x for x in found if x[1].isdigit()), key=lambda x: int(x[1]))]


# ---------------------------------------------------------------------------------------------- exports

def check_export_target(target: Path, formats: Mapping[str, Collection[str]], what: str) -> None:
    """Refuse `--export DIR` unless DIR is absent, empty, or holds only a `what` checkpoint: one of the
    `formats` (config file name -> every file name that format's folder may hold). Exporting swaps the whole
    folder, so anything else in it would be lost."""
    target = Path(target)
    if not target.exists():
        return
    require(target.is_dir(), f"--export {target}: exists and is not a folder")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return
    found = [name for name in formats if name in entries]
    require(bool(found), f"--export {target}: not empty and not a {what} checkpoint (no "
                         f"{' or '.join(formats)}); it would be replaced whole: export to a new or empty folder")
    others = [n for n in entries if n not in formats[found[0]] or not (target / n).is_file()]
    require(not others, f"--export {target}: holds what a {what} checkpoint does not "
                        f"({', '.join(others[:5])}); it would be replaced whole: export to a new or empty "
                        "folder")


def export_checkpoint(source: Path, target: Path) -> Path:
    """Swap a copy of the checkpoint folder `source` in for `target` (whole or not at all). Training-state
    files (train_state.*) stay behind: an export is for serving."""
    def write(staging: Path) -> None:
        for src in sorted(Path(source).iterdir()):
            if src.is_file() and not src.name.startswith("train_state."):
                shutil.copy2(src, staging / src.name)

    return write_folder_atomically(Path(target), write)


def check_new_out(out: Path, command: str) -> None:
    """CommandError unless `out` is absent or an empty folder: for entry points that cannot resume, so a
    killed run's config and log are never overwritten, nor a shipped model."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CommandError(f"--out {out}: not a new or empty folder ({command} cannot resume, and never "
                           "writes into an existing run or a shipped model): choose another --out")
