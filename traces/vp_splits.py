"""Train / validation / test splits of head-movement datasets with no video and no user shared between splits.

A split is a group of videos and a group of users; it keeps the (video, user) traces whose video AND user are
both in its groups. Groups are disjoint across splits, so a model is tested on viewers it never saw watching
videos it never saw. The price: pairs that mix groups (a train user on a test video) belong to no split.

Schemes (all deterministic):
- `netllm`: the video and user groups NetLLM published for its results (viewport_prediction/config.py of
  duowuyms/NetLLM, MIT), so figures are comparable. Surviving pairs:
  Jin2022 (27 videos x 84 users = 2268): train 15x42 = 630, valid 6x21 = 126, test 6x21 = 126 (882 kept);
  Wu2017 (18 x 48 = 864): train 5x30 = 150, valid 2x9 = 18, test 2x9 = 18 (186 kept). NetLLM's Wu2017 groups
  name videos 1-9 only (its Experiment 1); videos 10-18 are in no split.
- `hash`: for any dataset: videos and users each ordered by the SHA-256 of their id, the first 60% train, the
  next 20% valid, the rest test (each split gets at least one when there are three or more). On Jin2022 that
  keeps 16x50 + 5x17 + 6x17 = 987 pairs; on Wu2017 11x29 + 4x10 + 3x9 = 386.
- `auto`: `netllm` for the datasets it covers (Jin2022, Wu2017), `hash` otherwise.

`split_report` gives the counts for a dataset index (the `netllm vp-eval` summary records them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from traces.headmove import TraceRef

SPLITS: tuple[str, ...] = ("train", "valid", "test")
SCHEMES: tuple[str, ...] = ("auto", "netllm", "hash")
HASH_FRACTIONS: tuple[float, float] = (0.6, 0.2)
"""train and valid shares of the `hash` scheme; test gets the rest."""

NETLLM_VIDEOS: dict[str, dict[str, tuple[int, ...]]] = {
    "Wu2017": {"train": (9, 7, 4, 1, 6), "valid": (8, 2), "test": (3, 5)},
    "Jin2022": {"train": (1, 5, 9, 2, 6, 11, 15, 16, 13, 17, 21, 22, 26, 19, 23),
                "valid": (3, 7, 12, 10, 20, 27), "test": (4, 8, 14, 18, 24, 25)},
}
NETLLM_USERS: dict[str, dict[str, tuple[int, ...]]] = {
    "Wu2017": {
        "train": (23, 3, 19, 24, 18, 28, 9, 26, 6, 15, 21, 25, 32, 38, 45, 34, 48, 44, 29, 43, 4, 36, 39, 8,
                  17, 42, 30, 11, 22, 37),
        "valid": (40, 20, 14, 1, 31, 12, 33, 27, 10),
        "test": (16, 7, 46, 5, 35, 2, 41, 47, 13)},
    "Jin2022": {
        "train": (50, 54, 6, 34, 66, 63, 52, 39, 62, 46, 75, 28, 65, 18, 37, 13, 80, 33, 69, 78, 19, 40, 10,
                  43, 61, 72, 56, 41, 79, 82, 27, 71, 57, 67, 8, 2, 12, 81, 1, 64, 32, 42),
        "valid": (9, 25, 73, 29, 31, 70, 58, 11, 14, 38, 16, 76, 77, 74, 24, 5, 17, 20, 51, 68, 36),
        "test": (83, 15, 3, 35, 48, 22, 55, 4, 45, 60, 26, 21, 44, 23, 53, 84, 59, 49, 7, 47, 30)},
}


class VpSplitError(ValueError):
    pass


@dataclass(frozen=True)
class VpSplit:
    name: str
    videos: frozenset[str]
    users: frozenset[str]

    def keeps(self, ref: TraceRef) -> bool:
        return ref.video_id in self.videos and ref.user_id in self.users


def resolve_scheme(dataset: str, scheme: str = "auto") -> str:
    if scheme not in SCHEMES:
        raise VpSplitError(f"split scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if scheme == "auto":
        return "netllm" if dataset in NETLLM_VIDEOS else "hash"
    if scheme == "netllm" and dataset not in NETLLM_VIDEOS:
        raise VpSplitError(f"the netllm scheme covers {', '.join(sorted(NETLLM_VIDEOS))}, not {dataset!r}; "
                           "use --split-scheme hash")
    return scheme


def _id_rank(identifier: str) -> str:
    return hashlib.sha256(identifier.encode("utf-8")).hexdigest()


def _hash_groups(ids: Sequence[str]) -> dict[str, frozenset[str]]:
    ordered = sorted(set(ids), key=_id_rank)
    n = len(ordered)
    n_train = round(HASH_FRACTIONS[0] * n)
    n_valid = round(HASH_FRACTIONS[1] * n)
    if n >= 3:
        n_valid = max(1, n_valid)
        n_train = max(1, min(n_train, n - n_valid - 1))
    cuts = (ordered[:n_train], ordered[n_train:n_train + n_valid], ordered[n_train + n_valid:])
    return {name: frozenset(group) for name, group in zip(SPLITS, cuts)}


def split_groups(dataset: str, refs: Sequence[TraceRef], scheme: str = "auto") -> dict[str, VpSplit]:
    """The three splits' video and user groups for one dataset's index."""
    scheme = resolve_scheme(dataset, scheme)
    if scheme == "netllm":
        videos = {s: frozenset(str(v) for v in NETLLM_VIDEOS[dataset][s]) for s in SPLITS}
        users = {s: frozenset(str(u) for u in NETLLM_USERS[dataset][s]) for s in SPLITS}
    else:
        videos = _hash_groups([r.video_id for r in refs])
        users = _hash_groups([r.user_id for r in refs])
    return {s: VpSplit(s, videos[s], users[s]) for s in SPLITS}


def select_split(refs: Sequence[TraceRef], split: str, scheme: str = "auto") -> list[TraceRef]:
    """The refs of one split (`all`: every ref), keeping the index order. `refs` must be one dataset's."""
    if split == "all":
        return list(refs)
    if split not in SPLITS:
        raise VpSplitError(f"split must be one of {', '.join(SPLITS)} or all, got {split!r}")
    datasets = {r.dataset for r in refs}
    if len(datasets) > 1:
        raise VpSplitError(f"refs of several datasets ({', '.join(sorted(datasets))}); split them one by one")
    if not refs:
        return []
    group = split_groups(refs[0].dataset, refs, scheme)[split]
    return [r for r in refs if group.keeps(r)]


def split_report(refs: Sequence[TraceRef], scheme: str = "auto") -> dict[str, object]:
    """How many videos, users and (video, user) pairs each split holds, and how many pairs no split keeps."""
    if not refs:
        return {"pairs_total": 0}
    dataset = refs[0].dataset
    groups = split_groups(dataset, refs, scheme)
    report: dict[str, object] = {"dataset": dataset, "scheme": resolve_scheme(dataset, scheme),
                                 "pairs_total": len(refs)}
    kept = 0
    for name, group in groups.items():
        pairs = sum(1 for r in refs if group.keeps(r))
        kept += pairs
        report[name] = {"videos": len(group.videos), "users": len(group.users), "pairs": pairs}
    report["pairs_in_no_split"] = len(refs) - kept
    return report
