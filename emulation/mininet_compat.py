"""Import Mininet from the Debian package when the project's virtual environment cannot see it.

Debian's `mininet` package installs the Python package for the system interpreter only (the one named on
`mn`'s first line), while the project runs from a venv without system site-packages. Rather than exposing
every system package to the venv, this loads just the `mininet` package from the directory the system
interpreter reports. `NETLLM_MININET_DIR` (the folder that contains `mininet/`) overrides the search.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType


class MininetMissing(RuntimeError):
    """Mininet is not installed (Debian: `apt-get install mininet bridge-utils`)."""


def _system_site_dir() -> Path | None:
    override = os.environ.get("NETLLM_MININET_DIR")
    if override:
        return Path(override)
    mn = shutil.which("mn")
    if mn is None:
        return None
    with open(mn, "rb") as fh:
        first = fh.readline().decode(errors="replace").strip()
    if not first.startswith("#!"):
        return None
    interpreter = first[2:].split()
    probe = "import mininet, os; print(os.path.dirname(os.path.dirname(mininet.__file__)))"
    try:
        out = subprocess.run([*interpreter, "-c", probe], capture_output=True, text=True, timeout=20,
                             check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip())


def import_mininet() -> ModuleType:
    """The `mininet` package (with its submodules importable as usual)."""
    try:
        return importlib.import_module("mininet")
    except ModuleNotFoundError:
        pass
    site = _system_site_dir()
    init = site / "mininet" / "__init__.py" if site else None
    if init is None or not init.is_file():
        raise MininetMissing("Mininet not found: install the Debian package `mininet` (and `bridge-utils`), "
                             "or set NETLLM_MININET_DIR to the folder that contains mininet/")
    spec = importlib.util.spec_from_file_location("mininet", init,
                                                  submodule_search_locations=[str(init.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mininet"] = module
    spec.loader.exec_module(module)
    return module
