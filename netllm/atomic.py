"""Folders that appear whole or not at all: checkpoints, caches, selections.

A writer fills a private staging folder next to the target; only when it is complete does a rename put it in
place, so a crash or a kill mid-write leaves the previous folder (or none) rather than a half-written one.
mkdtemp and safetensors create owner-only files; checkpoints and caches are shared by the users of a checkout,
so the finished folder is made world-readable before it is renamed in.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def make_readable(path: Path) -> None:
    """Give a file the permissions of one created under umask 022 (safetensors writes 0600)."""
    Path(path).chmod(0o755 if Path(path).is_dir() else 0o644)


def write_folder_atomically(out_dir: Path, write: Callable[[Path], None], keep_existing: bool = False) -> Path:
    """Let `write` fill a staging folder, then swap it in for `out_dir`.

    With `keep_existing`, a folder that already exists wins (another process finished first: e.g. two
    workers converting the same cache) and the staged copy is dropped.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        write(staging)
        make_readable(staging)
        for item in staging.iterdir():
            make_readable(item)
        if out_dir.exists() and keep_existing:
            return out_dir
        if out_dir.exists():
            if _exchange(staging, out_dir):  # one step: out_dir is never missing, staging now holds the old
                return out_dir
            old = out_dir.with_name(f".{out_dir.name}-old-{os.getpid()}")
            out_dir.rename(old)  # without renameat2 a kill between these two renames leaves only `old`
            staging.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


RENAME_EXCHANGE = 2
"""renameat2 flag: swap two paths atomically (Linux 3.15+)."""
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where renameat2 is unavailable (not Linux, old libc,
    a file system without it), and the caller falls back to two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    done = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return done == 0
