"""`netllm report`: comparison plots from a results folder (simulated or live sessions).

Reads per-chunk logs (`netllm.chunklog.COLUMNS`): a `chunks.parquet` at the top of `--results` (what
`netllm sim` writes), else every `chunks.parquet` / `chunks.csv` below it (live runs write one per session
folder; where a folder has both, the Parquet copy is used). Per session the mean chunk QoE skips chunk 0,
as everywhere in the project.

Writes to `--out`: `qoe_box.png` (per-policy box plot of session QoE), `qoe_cdf.png` (per-policy CDF),
`qoe_components.png` (mean bitrate, stall and switch terms per policy, which add up to the QoE),
`timeline_<session>.png` (bitrate,
buffer and throughput over one session: `--session ID`, default the first), `sessions.csv` (one row per
session), `summary.json` (per policy: sessions, mean/median QoE, mean bitrate, rebuffer ratio; the plots) and
`config.json`.

With `--reference POLICY` (e.g. robustmpc) every other policy is also compared with it session by session:
a session is paired with the reference's session on the same trace from the same start (`netllm sim` ids
`policy:trace:start` give the start index; live sessions give `trace_start_time_s` in their folder's or their
replay's summary.json; where neither is known, the k-th session of a trace is paired with the reference's k-th
on it), and `paired.csv` and the summary's `paired` entry give the mean QoE difference with its 95% interval
(null with a single pair), wins / ties / losses and a Wilcoxon signed-rank p-value. Unpaired intervals hide
small differences under the spread between traces; paired ones do not. Pairs whose chunk counts differ, or
whose QoE is NaN (a one-chunk session), are left out; every dropped session is counted (`unpaired_sessions`,
`nan_sessions`, `chunk_mismatch_sessions` beside `sessions_present` and `sessions_used`) and printed. Sessions
whose folders record different run conditions (config.json / summary.json: video, chunks, default quality,
noise, live timing, seed of what is drawn, link options) are never paired: the report stops and names the
fields that differ.

With `--compare DIR=LABEL,...` the sessions of other results folders join the report, their policies renamed
`LABEL/policy` (LABEL defaults to the folder's name): two checkpoints of the same policy, or the same policy
before and after a change, are then plotted and paired like two policies (e.g. `--compare
runs/random-body/fcc-test=random --reference netllm` pairs `random/netllm` with `netllm`). Only sessions on
the same trace from the same start are paired, under the run conditions above.

With `--qoe log` or `--qoe hd` every session is scored under that variant of Pensieve's evaluation instead of
the logged linear QoE (`netllm.qoe.QOE_VARIANTS`, recomputed from each chunk's bitrate and stall): the plots,
tables, summary and paired comparisons all use it, and the components plot splits it into its utility, stall
and switch terms. `log` takes the ladder's lowest bitrate from the chunks played at quality 0 (or
`--min-bitrate-kbps`); `hd` is defined for Pensieve's ladder only and refuses other bitrates. Policies still
decide on the linear QoE; this changes how sessions are scored, not how they were played.

Two rows for one (session id, chunk) are refused, naming their files (two traces of one name, or a session
folder read twice); a replay's `interrupted/` and `failed_starts/` folders hold no results and are not read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulation.report_sources import (chunk_files, condition_differences, read_chunk_file,
                                      refuse_duplicate_rows, with_session_meta)
from netllm.cli import CommandError
from netllm.config import arg, save_config
from netllm.evaluation import interval_text


@dataclass
class Config:
    results: Path = arg(help="results folder (netllm sim output, or a folder of live session folders)")
    out: Path = arg(help="where to write the plots")
    session: str = arg("", help="session id for the timeline plot (default: the first session)")
    policies: list[str] = arg([], help="policies to show, in this order (default: all, in log order)")
    chunk_duration_s: float = arg(4.0, help="seconds of video per chunk (for the rebuffer ratio)")
    reference: str = arg("", help="compare every other policy with this one, session by session on the same "
                                  "traces (paired.csv; default: no paired comparison)")
    compare: list[str] = arg([], help="more results folders, each DIR or DIR=LABEL; their policies are shown "
                                      "and paired as LABEL/policy (LABEL: the folder's name)")
    qoe: str = arg("lin", help="QoE variant to score sessions with: lin (the logged QoE), log or hd "
                               "(Pensieve's other two, recomputed from each chunk's bitrate and stall)")
    min_bitrate_kbps: float = arg(0.0, help="--qoe log: the ladder's lowest bitrate (default: the bitrate of "
                                            "the chunks played at quality 0)")


def load_chunks(results: Path) -> Any:
    """All chunk rows under `results` as a DataFrame: the chunk-log columns, then
    `emulation.report_sources.META_COLUMNS` (each session's start and its folder's run conditions)."""
    import pandas as pd

    results = Path(results)
    if not results.is_dir():
        raise CommandError(f"{results}: not a directory")
    files = chunk_files(results)
    if not files:
        raise CommandError(f"{results}: no chunks.parquet or chunks.csv found")
    frames = [with_session_meta(df, f) for f in files if len(df := read_chunk_file(f))]
    if not frames:
        raise CommandError(f"{results}: the chunk logs are empty")
    chunks = pd.concat(frames, ignore_index=True)
    refuse_duplicate_rows(chunks)
    return chunks


def _compare_spec(spec: str) -> tuple[Path, str]:
    folder, _, label = spec.partition("=")
    path = Path(folder)
    label = label or path.name
    if not label or "/" in label:
        raise CommandError(f"--compare {spec!r}: the label must be a non-empty name without '/'")
    return path, label


def load_compared(results: Path, compare: list[str]) -> Any:
    """The chunk rows of `results` and of every `--compare` folder, the latter's policies and session ids
    prefixed with their label so that nothing collides."""
    import pandas as pd

    frames = [load_chunks(results)]
    labels: set[str] = set()
    for spec in compare:
        folder, label = _compare_spec(spec)
        if label in labels:
            raise CommandError(f"--compare: label {label!r} used twice; name them with DIR=LABEL")
        labels.add(label)
        frames.append(load_chunks(folder).assign(
            policy=lambda df, lb=label: lb + "/" + df["policy"].astype(str),
            session_id=lambda df, lb=label: lb + "/" + df["session_id"].astype(str)))
    return pd.concat(frames, ignore_index=True)


def lowest_bitrate_kbps(chunks: Any, given_kbps: float) -> float:
    """QoE log's R_min: `given_kbps` when > 0, else the bitrate of the chunks played at quality 0."""
    if given_kbps > 0:
        return given_kbps
    rung0 = chunks.loc[chunks["quality"] == 0, "bitrate_kbps"].unique()
    if len(rung0) != 1:
        found = "no chunk" if not len(rung0) else f"chunks at {sorted(rung0.tolist())} kbps"
        raise CommandError(f"--qoe log needs the ladder's lowest bitrate: {found} at quality 0 in the results; "
                           "give --min-bitrate-kbps")
    return float(rung0[0])


def rescore(chunks: Any, variant: str, min_kbps: float | None) -> Any:
    """`chunks` with the `qoe` column recomputed under `variant` (netllm.qoe.variant_terms), per session."""
    from netllm.qoe import QoeVariantError, variant_terms

    chunks = chunks.sort_values(["session_id", "chunk_index"], kind="stable")
    try:
        terms = [variant_terms(variant, df["bitrate_kbps"], df["rebuffer_s"], min_kbps)
                 for _, df in chunks.groupby("session_id", sort=False)]
    except QoeVariantError as exc:
        raise CommandError(f"--qoe {variant}: {exc}") from exc
    import numpy as np

    return chunks.assign(qoe=np.concatenate(terms) if terms else [])


def session_table(chunks: Any, variant: str = "lin", min_kbps: float | None = None) -> Any:
    """One row per session: policy, trace, chunks, mean QoE (chunk 0 skipped), bitrate, stalls, switches, and
    the QoE terms under `variant` (its utility, e.g. the bitrate in Mbps under lin; stall and switch
    penalties), which add up to mean_qoe when `qoe` holds that variant's terms."""
    import pandas as pd

    from netllm.qoe import QOE_VARIANTS, utility

    v = QOE_VARIANTS[variant]
    rows = []
    for sid, df in chunks.groupby("session_id", sort=False):
        df = df.sort_values("chunk_index")
        qoe = df["qoe"].to_numpy()
        quality = df["quality"].to_numpy()
        q = pd.Series(utility(variant, df["bitrate_kbps"].to_numpy(), min_kbps))
        rows.append({
            "session_id": sid, "policy": df["policy"].iloc[0], "trace": df["trace"].iloc[0],
            "chunks": len(df),
            "mean_qoe": float(qoe[1:].mean()) if len(qoe) > 1 else float("nan"),
            "mean_bitrate_kbps": float(df["bitrate_kbps"].mean()),
            "rebuffer_s": float(df["rebuffer_s"].sum()),
            "switches": int((quality[1:] != quality[:-1]).sum()),
            # The QoE terms over chunks 1.. (they add up to mean_qoe): utility - stall - switch.
            "bitrate_term": float(q.iloc[1:].mean()),
            "stall_term": float(v.rebuffer_penalty * df["rebuffer_s"].iloc[1:].mean()),
            "switch_term": float(v.smooth_penalty * q.diff().abs().iloc[1:].mean()),
            **_session_meta(df),
        })
    table = pd.DataFrame(rows)
    # Nullable integers: a start index is unknown for live sessions, and must not turn into a float.
    if not len(table):
        return table
    return table.assign(start_index=pd.array(table["start_index"].tolist(), dtype="Int64"))


def _session_meta(df: Any) -> dict[str, Any]:
    """A session's start and its folder's run conditions (absent from frames built without load_chunks)."""
    first = df.iloc[0]
    return {"start_index": first.get("start_index"), "trace_start_time_s": first.get("trace_start_time_s"),
            "run_conditions": first.get("run_conditions", "{}"), "source": first.get("source", "")}


def _policy_order(sessions: Any, wanted: list[str]) -> list[str]:
    present = list(dict.fromkeys(sessions["policy"]))
    if not wanted:
        return present
    missing = [p for p in wanted if p not in present]
    if missing:
        raise CommandError(f"no sessions of {missing} in the results; present: {', '.join(present)}")
    return wanted


def plot_box(sessions: Any, policies: list[str], path: Path, qoe_name: str = "QoE") -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(policies) + 2), 4.5))
    data = [sessions.loc[sessions["policy"] == p, "mean_qoe"].dropna().to_numpy() for p in policies]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(policies) + 1), policies, rotation=20 if len(policies) > 4 else 0)
    ax.set_ylabel(f"session mean {qoe_name} per chunk")
    ax.set_title(f"{qoe_name} per session (chunk 0 skipped); triangle = mean")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cdf(sessions: Any, policies: list[str], path: Path, qoe_name: str = "QoE") -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for p in policies:
        v = np.sort(sessions.loc[sessions["policy"] == p, "mean_qoe"].dropna().to_numpy())
        if v.size:
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=f"{p} (mean {v.mean():.3f})")
    ax.set_xlabel(f"session mean {qoe_name} per chunk")
    ax.set_ylabel("fraction of sessions")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"CDF of session {qoe_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_components(sessions: Any, policies: list[str], path: Path, qoe_name: str = "QoE") -> None:
    """Mean QoE per chunk split into its terms (chunks 1..): utility (the bitrate in Mbps under lin), stall
    penalty, switch penalty."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [sessions[sessions["policy"] == p] for p in policies]
    first = "bitrate (Mbps)" if qoe_name == "QoE" else "utility q(R)"
    terms = [(first, "bitrate_term", 1.0), ("- stall penalty", "stall_term", -1.0),
             ("- switch penalty", "switch_term", -1.0), (f"= mean {qoe_name}", "mean_qoe", 1.0)]
    x = np.arange(len(policies))
    width = 0.8 / len(terms)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.4 * len(policies) + 2), 4.5))
    for i, (label, key, sign) in enumerate(terms):
        ax.bar(x + (i - 1.5) * width, [sign * r[key].mean() for r in rows], width, label=label)
    ax.set_xticks(x, policies, rotation=20 if len(policies) > 4 else 0)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{qoe_name} terms per chunk (chunks 1.., mean over sessions)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_timeline(chunks: Any, session_id: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    df = chunks[chunks["session_id"] == session_id].sort_values("chunk_index")
    t = df["finish_time_s"].to_numpy()
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].step(t, df["bitrate_kbps"], where="pre", color="tab:blue")
    axes[0].set_ylabel("bitrate (kbps)")
    axes[1].plot(t, df["buffer_after_s"], marker=".", color="tab:green")
    stalls = df[df["rebuffer_s"] > 0]
    if len(stalls):
        axes[1].scatter(stalls["finish_time_s"], [0] * len(stalls), color="tab:red", marker="x", zorder=3,
                        label="stall")
        axes[1].legend(fontsize=8)
    axes[1].set_ylabel("buffer after chunk (s)")
    axes[2].plot(t, df["throughput_kbps"], marker=".", color="tab:orange")
    axes[2].set_ylabel("throughput (kbps)")
    axes[2].set_xlabel("session time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
    policy, trace = df["policy"].iloc[0], df["trace"].iloc[0]
    qoe = df["qoe"].to_numpy()
    mean = qoe[1:].mean() if len(qoe) > 1 else float("nan")
    fig.suptitle(f"{policy} on {trace}\nsession {session_id}: mean QoE {mean:.3f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PAIR_KEY = ["trace", "start_key", "occurrence"]
PAIR_COLUMNS = [*PAIR_KEY, "mean_qoe", "chunks", "run_conditions", "source"]


def _start_key(sessions: Any) -> list[str]:
    """Per session, where on its trace it started ("" where unknown): the simulator's start index or the
    live session's start time, so that only sessions that played the same stretch of a trace pair up."""
    import pandas as pd

    unknown = pd.Series(float("nan"), index=sessions.index)
    index = sessions.get("start_index", unknown)
    time_s = pd.to_numeric(sessions.get("trace_start_time_s", unknown), errors="coerce")
    return [f"sample {int(i)}" if not pd.isna(i) else f"{t:.6f} s" if not pd.isna(t) else ""
            for i, t in zip(index, time_s)]


def _keyed(sessions: Any) -> Any:
    """Sessions with their pairing key: (trace, start, k-th such session of its policy)."""
    keyed = sessions.assign(start_key=_start_key(sessions))
    if "run_conditions" not in keyed:
        keyed = keyed.assign(run_conditions="{}", source="")
    return keyed.assign(occurrence=keyed.groupby(["policy", "trace", "start_key"]).cumcount())


def _refuse_other_conditions(policy: str, reference: str, matched: Any) -> None:
    """Stop when a pair's folders recorded different run conditions (another video, chunk count, noise...)."""
    import json

    combos = matched[["run_conditions", "run_conditions_ref", "source", "source_ref"]].drop_duplicates(
        ["run_conditions", "run_conditions_ref"])
    for mine, ref, source, source_ref in combos.itertuples(index=False):
        differences = condition_differences(json.loads(mine), json.loads(ref))
        if differences:
            raise CommandError(f"{policy} ({source}) and {reference} ({source_ref}) were played under "
                               f"different conditions: {', '.join(differences)}; "
                               "pair only sessions played the same way")


def _pair_row(policy: str, reference: str, mine: Any, ref: Any) -> dict[str, Any]:
    """The paired comparison of one policy's sessions with the reference's, and what was left out."""
    from netllm.evaluation import paired_difference

    matched = mine.merge(ref, on=PAIR_KEY, suffixes=("", "_ref"))
    if matched.empty:
        raise CommandError(f"{policy} and {reference} share no session (same trace, same start): "
                           "nothing to pair")
    _refuse_other_conditions(policy, reference, matched)
    other_chunks = matched["chunks"] != matched["chunks_ref"]
    nan = ~other_chunks & (matched["mean_qoe"].isna() | matched["mean_qoe_ref"].isna())
    used = matched[~other_chunks & ~nan]
    if used.empty:
        raise CommandError(f"{policy} and {reference}: no pair to compare ({int(other_chunks.sum())} pairs "
                           f"of different chunk counts, {int(nan.sum())} with a NaN QoE)")
    diff = paired_difference(used["mean_qoe"].tolist(), used["mean_qoe_ref"].tolist())
    return {"policy": policy, "reference": reference, **vars(diff),
            "unpaired_sessions": int(len(mine) + len(ref) - 2 * len(matched)),
            "sessions_present": int(len(mine) + len(ref)), "sessions_used": 2 * len(used),
            "nan_sessions": 2 * int(nan.sum()), "chunk_mismatch_sessions": 2 * int(other_chunks.sum())}


def paired_table(sessions: Any, policies: list[str], reference: str) -> Any:
    """One row per policy other than `reference`: its paired QoE difference with the reference
    (netllm.evaluation.paired_difference) over the sessions both played on the same trace from the same
    start, and how many sessions were left out (no partner, a NaN QoE, another chunk count)."""
    import pandas as pd

    if reference not in policies:
        raise CommandError(f"reference policy {reference!r} has no sessions here; present: {', '.join(policies)}")
    keyed = _keyed(sessions)
    ref = keyed[keyed["policy"] == reference][PAIR_COLUMNS]
    rows = [_pair_row(policy, reference, keyed[keyed["policy"] == policy][PAIR_COLUMNS], ref)
            for policy in policies if policy != reference]
    return pd.DataFrame(rows)


def print_paired(table: Any) -> None:
    for row in table.itertuples():
        interval = interval_text(row.ci95_low, row.ci95_high, "pair", signed=True)
        print(f"{row.policy} - {row.reference}: {row.mean_diff:+.4f} {interval} "
              f"over {row.pairs} pairs ({row.sessions_used} of {row.sessions_present} sessions; left out: "
              f"{row.unpaired_sessions} unpaired, {row.nan_sessions} NaN QoE, "
              f"{row.chunk_mismatch_sessions} other chunk count), "
              f"wins/ties/losses {row.wins}/{row.ties}/{row.losses}, Wilcoxon p {row.wilcoxon_p:.3g}")


def _finite(value: Any) -> Any:
    """JSON-safe number: NaN (e.g. a one-chunk session's mean) becomes null."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and value != value else value


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:100]


def run(cfg: Config) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from netllm.chunklog import write_summary

    if not (math.isfinite(cfg.chunk_duration_s) and cfg.chunk_duration_s > 0):
        raise CommandError(f"--chunk-duration-s must be a finite number of seconds > 0, "
                           f"got {cfg.chunk_duration_s}")
    from netllm.qoe import QOE_VARIANTS

    if cfg.qoe not in QOE_VARIANTS:
        raise CommandError(f"--qoe {cfg.qoe!r}: use one of {', '.join(QOE_VARIANTS)}")
    if not (math.isfinite(cfg.min_bitrate_kbps) and cfg.min_bitrate_kbps >= 0):
        raise CommandError(f"--min-bitrate-kbps must be a finite number >= 0, got {cfg.min_bitrate_kbps}")
    chunks = load_compared(cfg.results, cfg.compare)
    min_kbps = lowest_bitrate_kbps(chunks, cfg.min_bitrate_kbps) if cfg.qoe == "log" else None
    if cfg.qoe != "lin":
        chunks = rescore(chunks, cfg.qoe, min_kbps)
    # "QoE" is the logged linear QoE; other variants are named on every plot.
    qoe_name = "QoE" if cfg.qoe == "lin" else f"QoE_{cfg.qoe}"
    sessions = session_table(chunks, cfg.qoe, min_kbps)
    policies = _policy_order(sessions, cfg.policies)
    sessions = sessions[sessions["policy"].isin(policies)]
    session = cfg.session or str(sessions["session_id"].iloc[0])
    if session not in set(sessions["session_id"]):
        raise CommandError(f"no session {session!r} in {cfg.results}")
    paired = paired_table(sessions, policies, cfg.reference) if cfg.reference else None
    cfg.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cfg.out)
    timeline = cfg.out / f"timeline_{_safe_name(session)}.png"
    plot_box(sessions, policies, cfg.out / "qoe_box.png", qoe_name)
    plot_cdf(sessions, policies, cfg.out / "qoe_cdf.png", qoe_name)
    plot_components(sessions, policies, cfg.out / "qoe_components.png", qoe_name)
    plot_timeline(chunks, session, timeline)
    sessions.drop(columns=["run_conditions"]).to_csv(cfg.out / "sessions.csv", index=False)
    doc: dict[str, Any] = {"results": str(cfg.results), "compared": list(cfg.compare), "policies": policies,
                           "qoe": cfg.qoe, **({"qoe_min_bitrate_kbps": min_kbps} if min_kbps else {}),
                           "sessions": int(len(sessions)),
                           "sessions_used": int(sessions["mean_qoe"].notna().sum()),
                           "timeline_session": session,
                           "plots": ["qoe_box.png", "qoe_cdf.png", "qoe_components.png", timeline.name]}
    for p in policies:
        s = sessions[sessions["policy"] == p]
        # sessions_used: those with a mean QoE (a one-chunk session has none), what mean_qoe averages over.
        doc[p] = {k: _finite(v) for k, v in {
            "sessions": int(len(s)), "sessions_used": int(s["mean_qoe"].notna().sum()),
            "mean_qoe": s["mean_qoe"].mean(), "median_qoe": s["mean_qoe"].median(),
            "mean_bitrate_kbps": s["mean_bitrate_kbps"].mean(),
            "rebuffer_ratio": s["rebuffer_s"].sum() / (s["chunks"].sum() * cfg.chunk_duration_s),
            "switches_per_session": s["switches"].mean()}.items()}
    if paired is not None:
        paired.to_csv(cfg.out / "paired.csv", index=False)
        doc["paired"] = {row["policy"]: {k: _finite(v) for k, v in row.items() if k != "policy"}
                         for row in paired.to_dict("records")}
        print_paired(paired)
    write_summary(doc, cfg.out)
    print(f"plots in {cfg.out}: {', '.join(doc['plots'])}")
    return 0
