"""Where the project finds its installed assets. Every path can be overridden by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parent.parent


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser().resolve() if value else default


def node_modules_dir() -> Path:
    """npm packages installed by `make setup` (dash.js)."""
    return _env_path("NETLLM_NODE_MODULES", REPO_ROOT / "node_modules")


def dashjs_file() -> Path:
    """The dash.js v5 bundle the player page loads."""
    return node_modules_dir() / "dashjs" / "dist" / "modern" / "umd" / "dash.all.min.js"


def cache_dir() -> Path:
    """Derived, re-creatable artefacts (converted model weights, default video)."""
    return _env_path("NETLLM_CACHE", REPO_ROOT / ".cache")


def default_video_dir() -> Path:
    """The video `make setup` prepares for the demo."""
    return cache_dir() / "videos" / "default"


def shared_data_dir() -> Path:
    """Reference data sets (read-only, never copied into the repository)."""
    return _env_path("NETLLM_DATA", REPO_ROOT.parent / "shared" / "data")


def chromium_executable() -> Path:
    """Debian's Chromium; Playwright never downloads a browser here."""
    return _env_path("NETLLM_CHROMIUM", Path("/usr/bin/chromium"))
