"""`netllm report` on simulator results and on live-style session folders: PNGs and a summary."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from controller.policies import make_policy
from emulation.abr_sim import SimConfig, simulate_session
from netllm.chunklog import ChunkLogWriter
from netllm.cli import CommandError
from netllm.video import Video
from traces.bandwidth import BandwidthTrace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, path


def _sessions(policies=("bba", "rb"), traces=3):
    rng = np.random.default_rng(0)
    ladder = (300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0)
    video = Video(ladder, (np.array(ladder)[:, None] * 500 * rng.uniform(0.8, 1.2, (6, 20))).astype(np.int64))
    out = []
    for t in range(traces):
        trace = BandwidthTrace(f"trace{t}", np.arange(0, 100.0), rng.uniform(300, 4000, 100))
        for name in policies:
            out.append(simulate_session(make_policy(name), trace, video, config=SimConfig(), log_rows=True,
                                        policy_name=name))
    return out


def test_report_on_live_style_session_folders(tmp_path):
    results = tmp_path / "runs"
    for k, session in enumerate(_sessions()):
        with ChunkLogWriter(results / f"session{k}" / "chunks.csv") as writer:
            for row in session.rows:
                writer.write(row)
    out = tmp_path / "plots"
    proc = subprocess.run([sys.executable, "-m", "netllm", "report", "--results", str(results),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policies"] == ["bba", "rb"] and summary["sessions"] == 6
    for name in summary["plots"]:
        _check_png(out / name)
    assert summary["bba"]["sessions"] == 3
    expected = np.mean([s.mean_qoe for s in _sessions() if s.policy == "bba"])
    assert summary["bba"]["mean_qoe"] == pytest.approx(expected)


def test_report_on_sim_results_with_chosen_session(tmp_path):
    import pandas as pd

    from emulation.report import Config, run

    results = tmp_path / "sim"
    results.mkdir()
    sessions = _sessions(("bba", "robustmpc"), traces=2)
    pd.DataFrame([r for s in sessions for r in s.rows]).to_parquet(results / "chunks.parquet")
    chosen = sessions[-1].rows[0]["session_id"]
    out = tmp_path / "plots"
    assert run(Config(results=results, out=out, session=chosen, policies=["robustmpc", "bba"])) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policies"] == ["robustmpc", "bba"] and summary["timeline_session"] == chosen
    assert any(name.startswith("timeline_robustmpc") for name in summary["plots"])
    for name in summary["plots"]:
        _check_png(out / name)
    with pytest.raises(CommandError, match="no session"):
        run(Config(results=results, out=out, session="nope"))
    with pytest.raises(CommandError, match="no chunks"):
        run(Config(results=tmp_path / "plots", out=out))


def test_paired_difference_statistics():
    from scipy import stats

    from netllm.evaluation import mean_ci95, paired_difference

    ours, ref = [1.0, 0.5, 0.9, 1.2, 0.7], [0.8, 0.5, 1.0, 0.9, 0.4]
    diff = paired_difference(ours, ref)
    deltas = [a - b for a, b in zip(ours, ref)]
    mean, low, high = mean_ci95(deltas)
    assert (diff.pairs, diff.wins, diff.ties, diff.losses) == (5, 3, 1, 1)
    assert (diff.mean_diff, diff.ci95_low, diff.ci95_high) == pytest.approx((mean, low, high))
    # The tied pair is left out of the signed-rank test.
    assert diff.wilcoxon_p == pytest.approx(stats.wilcoxon([d for d in deltas if d != 0]).pvalue)
    same = paired_difference(ref, ref)
    assert (same.mean_diff, same.ties, same.wilcoxon_p) == (0.0, 5, 1.0)
    with pytest.raises(ValueError, match="equal"):
        paired_difference([1.0], [1.0, 2.0])


def test_report_pairs_policies_with_a_reference(tmp_path):
    import pandas as pd

    from emulation.report import Config, run

    results = tmp_path / "sim"
    results.mkdir()
    sessions = _sessions(("bba", "rb", "robustmpc"), traces=4)
    pd.DataFrame([r for s in sessions for r in s.rows]).to_parquet(results / "chunks.parquet")
    out = tmp_path / "plots"
    assert run(Config(results=results, out=out, reference="robustmpc")) == 0
    paired = json.loads((out / "summary.json").read_text())["paired"]
    assert set(paired) == {"bba", "rb"}
    by_trace = {(s.policy, s.trace): s.mean_qoe for s in sessions}
    expected = np.mean([by_trace["bba", f"trace{t}"] - by_trace["robustmpc", f"trace{t}"] for t in range(4)])
    assert paired["bba"]["mean_diff"] == pytest.approx(expected)
    assert paired["bba"]["pairs"] == 4 and paired["bba"]["unpaired_sessions"] == 0
    assert paired["bba"]["wins"] + paired["bba"]["ties"] + paired["bba"]["losses"] == 4
    table = pd.read_csv(out / "paired.csv")
    assert list(table["policy"]) == ["bba", "rb"] and (table["reference"] == "robustmpc").all()
    with pytest.raises(CommandError, match="reference policy 'pensieve'"):
        run(Config(results=results, out=tmp_path / "other", reference="pensieve"))
    assert not (tmp_path / "other").exists()


def test_report_compares_results_folders_under_labels(tmp_path):
    import pandas as pd

    from emulation.report import Config, run

    first, second = tmp_path / "a", tmp_path / "b"
    runs = {}
    for folder, policies in ((first, ("bba", "rb")), (second, ("rb",))):
        folder.mkdir()
        runs[folder] = _sessions(policies, traces=4)
        pd.DataFrame([r for s in runs[folder] for r in s.rows]).to_parquet(folder / "chunks.parquet")
    # Same traces, same policy name in both folders: only the label keeps them apart.
    out = tmp_path / "plots"
    assert run(Config(results=first, out=out, reference="rb", compare=[f"{second}=other"])) == 0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["policies"] == ["bba", "rb", "other/rb"] and doc["other/rb"]["sessions"] == 4
    mine = {s.trace: s.mean_qoe for s in runs[first] if s.policy == "rb"}
    other = {s.trace: s.mean_qoe for s in runs[second]}
    expected = np.mean([other[t] - mine[t] for t in mine])
    assert doc["paired"]["other/rb"]["mean_diff"] == pytest.approx(expected)
    assert doc["paired"]["other/rb"]["pairs"] == 4
    sessions = pd.read_csv(out / "sessions.csv")
    assert sessions["session_id"].is_unique and len(sessions) == 12
    with pytest.raises(CommandError, match="used twice"):
        run(Config(results=first, out=tmp_path / "x", compare=[str(second), f"{second}"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CommandError, match="no chunks"):
        run(Config(results=first, out=tmp_path / "y", compare=[f"{tmp_path / 'empty'}"]))


@pytest.mark.parametrize("value", ["0", "-4", "inf", "nan"])
def test_report_refuses_a_chunk_duration_that_is_not_a_length(tmp_path, capsys, value):
    from netllm.cli import main

    results = tmp_path / "results"
    with ChunkLogWriter(results / "s" / "chunks.csv") as writer:
        for row in _sessions(("bba",), traces=1)[0].rows:
            writer.write(row)
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "r"),
                 "--chunk-duration-s", value]) == 2
    err = capsys.readouterr().err
    assert "--chunk-duration-s must be a finite number of seconds > 0" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def _hand_variant_mean(session, utility_of, rebuffer_penalty: float) -> float:
    """Pensieve's QoE variants written out by hand for one session (chunks 1.., switch against chunk n-1)."""
    q = [utility_of(b) for b in session.bitrates_kbps]
    terms = [q[n] - rebuffer_penalty * session.rebuffers_s[n] - abs(q[n] - q[n - 1]) for n in range(1, len(q))]
    return float(np.mean(terms))


def test_report_scores_sessions_under_qoe_log_and_hd(tmp_path):
    import math

    import pandas as pd

    from emulation.report import Config, run

    results = tmp_path / "sim"
    results.mkdir()
    sessions = _sessions(("bba", "robustmpc"), traces=3)
    pd.DataFrame([r for s in sessions for r in s.rows]).to_parquet(results / "chunks.parquet")
    hd = {300: 1, 750: 2, 1200: 3, 1850: 12, 2850: 15, 4300: 20}
    for variant, utility_of, penalty in (("hd", lambda b: hd[int(b)], 8.0),
                                         ("log", lambda b: math.log(b / 300.0), 2.66)):
        out = tmp_path / variant
        assert run(Config(results=results, out=out, qoe=variant, reference="robustmpc")) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["qoe"] == variant
        for policy in ("bba", "robustmpc"):
            expected = np.mean([_hand_variant_mean(s, utility_of, penalty) for s in sessions if s.policy == policy])
            assert summary[policy]["mean_qoe"] == pytest.approx(expected)
        table = pd.read_csv(out / "sessions.csv")
        # The three terms add up to the session's QoE under the variant.
        assert np.allclose(table["bitrate_term"] - table["stall_term"] - table["switch_term"], table["mean_qoe"])
    assert summary["qoe_min_bitrate_kbps"] == 300.0
    # The linear default still reports the logged QoE.
    assert run(Config(results=results, out=tmp_path / "lin")) == 0
    lin = json.loads((tmp_path / "lin" / "summary.json").read_text())
    assert lin["bba"]["mean_qoe"] == pytest.approx(np.mean([s.mean_qoe for s in sessions if s.policy == "bba"]))


def test_report_refuses_a_qoe_variant_it_cannot_compute(tmp_path):
    import pandas as pd

    from emulation.report import Config, run

    results = tmp_path / "sim"
    results.mkdir()
    rows = [r for s in _sessions(("bba",), traces=1) for r in s.rows]
    pd.DataFrame(rows).assign(bitrate_kbps=lambda df: df["bitrate_kbps"] * 2).to_parquet(results / "chunks.parquet")
    with pytest.raises(CommandError, match="hd is defined for the ladder"):
        run(Config(results=results, out=tmp_path / "a", qoe="hd"))
    with pytest.raises(CommandError, match="use one of lin, log, hd"):
        run(Config(results=results, out=tmp_path / "b", qoe="ssim"))
    no_rung0 = tmp_path / "no-rung0"
    no_rung0.mkdir()
    pd.DataFrame(rows).query("quality != 0").to_parquet(no_rung0 / "chunks.parquet")
    with pytest.raises(CommandError, match="give --min-bitrate-kbps"):
        run(Config(results=no_rung0, out=tmp_path / "c", qoe="log"))
    assert run(Config(results=no_rung0, out=tmp_path / "d", qoe="log", min_bitrate_kbps=300.0)) == 0
