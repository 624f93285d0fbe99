"""Map a URL path onto a file below a root folder, refusing anything that could leave the root.

Refused (with the reason, for a 403): absolute paths, `.` / `..` segments, empty segments (`a//b`), NUL bytes
and paths whose real location (after following symlinks) is outside the root. A path that is safe but names
no regular file is "missing" (404). The router has already percent-decoded the path, so `%2e%2e` arrives as
`..` and is refused like it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Resolved:
    path: Path | None
    """The regular file to serve, or None."""
    status: int = 200
    reason: str = ""


def resolve_under(root: Path, relative: str) -> Resolved:
    """The file `relative` names under `root` (status 200), or why not (403 unsafe, 404 missing)."""
    if not relative or "\x00" in relative or relative.startswith("/"):
        return Resolved(None, 403 if relative else 404, "absolute or empty path")
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return Resolved(None, 403, "path segments '', '.' and '..' are not allowed")
    real_root = root.resolve()
    try:
        candidate = real_root.joinpath(*parts).resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops, over-long names
        return Resolved(None, 404, f"cannot resolve ({exc.__class__.__name__})")
    if not candidate.is_relative_to(real_root):
        return Resolved(None, 403, "resolves outside the served folder")
    if not candidate.is_file():
        return Resolved(None, 404, "no such file")
    return Resolved(candidate)
