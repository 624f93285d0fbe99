"""Guards of the training entry points (train, train-vp, train-rl, train-cjs, collect): nothing is written
outside the run folder unless asked, exports replace only checkpoints, a resume checks its config against the
run's and survives an interruption mid-save, and bad options or unusable files are one-line user errors given
before any work. Tiny configs: each test takes seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from netllm.cli import main
from tests.test_netllm_support import small_pool, synthetic_sessions, synthetic_video
from tests.test_vp_track import write_synthetic_dataset


def _fail(*_: object, **__: object) -> None:
    raise AssertionError("reached work that a bad option should have prevented")


def _user_error(capsys: pytest.CaptureFixture[str], rc: int, *words: str) -> str:
    """Assert a one-line CommandError naming `words` (exit status 2, no traceback)."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


# ------------------------------------------------------------------------------------------ netllm train

@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pool")
    small_pool(traces=3, repeats=1).save(folder)
    return folder


@pytest.fixture(scope="module")
def other_pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pool-bba")
    small_pool(policies=("bba",), traces=3, repeats=1, seed=3).save(folder)
    return folder


def _train(pool: Path, out: Path, *extra: str) -> int:
    return main(["train", "--pool", str(pool), "--out", str(out), "--backbone", "tiny", "--device", "cpu",
                 "--window", "6", "--micro-batch-size", "2", "--grad-accum", "1", "--lr", "3e-3",
                 "--warmup-steps", "1", "--select-by", "loss", "--valid-fraction", "0.34",
                 "--valid-windows", "8", "--conv-channels", "8", *extra])


PAUSED = ("--optimizer-steps", "4", "--eval-every", "2")


@pytest.fixture(scope="module")
def paused_run(pool_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 4 steps stopped after 2 (last/ at step 2), to copy and resume."""
    out = tmp_path_factory.mktemp("paused") / "run"
    assert _train(pool_dir, out, *PAUSED, "--stop-after-steps", "2") == 0
    return out


def test_resume_refuses_changed_options_and_keeps_the_config_history(
        pool_dir: Path, other_pool_dir: Path, paused_run: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    shutil.copytree(paused_run, out)
    saved = (out / "config.json").read_text()
    rc = _train(pool_dir, out, *PAUSED, "--resume", "--lr", "1e-3", "--lora-rank", "4", "--seed", "1")
    err = _user_error(capsys, rc, "--lr: 0.003 -> 0.001", "--lora-rank: 8 -> 4", "--seed: 0 -> 1")
    assert "--optimizer-steps" in err  # the options that may change are listed
    assert (out / "config.json").read_text() == saved and not list(out.glob("config-resume-*"))
    # what models/README's resumes change: a longer schedule, another eval period and time limit, another
    # pool under a new --out (a copied run), another batch split
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    assert _train(other_pool_dir, moved, "--optimizer-steps", "6", "--eval-every", "3", "--max-minutes", "5",
                  "--micro-batch-size", "3", "--threads", "1", "--resume") == 0
    latest = json.loads((moved / "config.json").read_text())
    first = json.loads((moved / "config-resume-1.json").read_text())
    assert (latest["optimizer_steps"], latest["pool"], latest["resume"]) == (6, str(other_pool_dir), True)
    assert (first["optimizer_steps"], first["pool"], first["resume"]) == (4, str(pool_dir), False)
    assert json.loads((moved / "summary.json").read_text())["optimizer_steps"] == 6


def _train_config(command: str) -> object:
    """The resolved `netllm train` config of a command line (as `netllm train` would parse it)."""
    import argparse
    import shlex

    from netllm.config import add_config_args, config_from_args
    from training.train import Config

    parser = argparse.ArgumentParser()
    add_config_args(parser, Config)
    return config_from_args(Config, parser.parse_args(shlex.split(command)))


# models/README.md, "How netllm-abr-smollm2 was made": step 2, then its resumes ("other flags as in step 2")
STEP2 = ("--pool runs/pool-causal --out runs/abr3/smollm2 --backbone smollm2 --optimizer-steps 500 "
         "--micro-batch-size 4 --grad-accum 2 --lr 3e-4 --warmup-steps 20 --eval-every 75 --valid-max-traces 12 "
         "--save-dtype bfloat16 --threads 1 --max-minutes 80")
README_RESUMES = [
    "--optimizer-steps 1000 --max-minutes 152 --out runs/abr4/smollm2 --resume",
    "--optimizer-steps 1600 --eval-every 100 --max-minutes 250 --out runs/abr6/smollm2 --resume",
    "--pool runs/pool-top --out runs/abr7/smollm2-top --optimizer-steps 2400 --max-minutes 362 --resume",
    "--pool runs/pool-top --out runs/abr9/smollm2-top-gpu --device cuda --dtype fp32 --micro-batch-size 32 "
    "--grad-accum 1 --optimizer-steps 2700 --eval-every 200 --valid-max-traces 0 --eval-target-quantile 0.75 "
    "--lr 3e-4 --warmup-steps 20 --resume",
]


@pytest.mark.parametrize("resume", README_RESUMES)
def test_the_documented_resumes_pass_the_config_check(tmp_path: Path, resume: str) -> None:
    from netllm.cli import CommandError
    from netllm.config import save_config
    from training.run_files import check_resume_config
    from training.train import RESUMABLE

    save_config(_train_config(STEP2), tmp_path)
    check_resume_config(_train_config(f"{STEP2} {resume}"), tmp_path, RESUMABLE)
    with pytest.raises(CommandError, match="--window: 20 -> 10"):
        check_resume_config(_train_config(f"{STEP2} {resume} --window 10"), tmp_path, RESUMABLE)


def test_an_interrupted_save_of_last_leaves_it_resumable(pool_dir: Path, paused_run: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill while last/ is written (here: while its training state is) must leave the previous last/ whole:
    weights and state of the same step, so the run resumes and ends as an uninterrupted one."""
    import training.trainer

    straight, out = tmp_path / "straight", tmp_path / "run"
    assert _train(pool_dir, straight, *PAUSED) == 0
    shutil.copytree(paused_run, out)
    real = training.trainer.save_train_state

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training.trainer, "save_train_state", killed)
    assert _train(pool_dir, out, *PAUSED, "--resume") == 130
    monkeypatch.setattr(training.trainer, "save_train_state", real)
    assert json.loads((out / "last" / "train_state.json").read_text())["counters"]["step"] == 2
    assert json.loads((out / "last" / "netllm_config.json").read_text())["training"]["optimizer_steps"] == 2
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert _train(pool_dir, out, *PAUSED, "--resume") == 0
    assert (out / "loss.csv").read_text().count("\n") == 5
    loss = [line.split(",")[3] for line in (out / "loss.csv").read_text().splitlines()]
    assert loss == [line.split(",")[3] for line in (straight / "loss.csv").read_text().splitlines()]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


@pytest.mark.parametrize("name, damage", [
    ("train_state.safetensors", _truncate),
    ("train_state.json", lambda p: p.write_text("{}")),
    ("train_state.json", lambda p: p.write_text("{\"count")),
    ("netllm_modules.safetensors", _truncate),
])
def test_an_unusable_resume_state_is_a_user_error_naming_the_file(
        pool_dir: Path, paused_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
        damage: object) -> None:
    out = tmp_path / "run"
    shutil.copytree(paused_run, out)
    damage(out / "last" / name)  # type: ignore[operator]
    _user_error(capsys, _train(pool_dir, out, *PAUSED, "--resume"), str(out / "last" / name))


@pytest.mark.parametrize("option", [("--lr", "-1"), ("--save-dtype", "int8"), ("--return-scale", "0"),
                                    ("--min-lr-ratio", "-3"), ("--warmup-steps", "-5"),
                                    ("--lora-dropout", "1"), ("--clip-grad-norm", "nan"),
                                    ("--max-minutes", "-1")])
def test_train_checks_numeric_options_before_any_work(pool_dir: Path, tmp_path: Path, option: tuple[str, str],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import training.train

    monkeypatch.setattr(training.train, "_load_pool", _fail)
    _user_error(capsys, _train(pool_dir, tmp_path / "run", "--optimizer-steps", "1", *option), option[0])
    assert not (tmp_path / "run").exists()


def test_held_out_share_is_checked_on_the_pool_before_the_model_is_built(
        pool_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import training.train

    one_trace = tmp_path / "one-trace"
    small_pool(traces=1, repeats=1).save(one_trace)
    monkeypatch.setattr(training.train, "_build", _fail)
    rc = _train(one_trace, tmp_path / "a", "--optimizer-steps", "1", "--valid-fraction", "0.5")
    _user_error(capsys, rc, "--select-by loss", "1 trace")
    rc = _train(pool_dir, tmp_path / "b", "--optimizer-steps", "1", "--valid-fraction", "0.9")
    _user_error(capsys, rc, "--valid-fraction 0.9", "all 3 traces")


# -------------------------------------------------------------------------------------- netllm train-vp

@pytest.fixture(scope="module")
def vp_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("vpdata"), videos=4, users=4, n_samples=120)


def _train_vp(data: Path, out: Path, *extra: str) -> int:
    return main(["train-vp", "--model", "track", "--data", str(data), "--dataset", "Synth", "--out", str(out),
                 "--micro-batch-size", "8", "--track-hidden", "8", "--track-layers", "1",
                 "--warmup-steps", "1", "--valid-max-windows", "16", "--threads", "1", *extra])


def test_vp_resume_checks_the_config_and_survives_an_interrupted_save(
        vp_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import training.trainer

    out = tmp_path / "run"
    assert _train_vp(vp_data, out, "--optimizer-steps", "2", "--eval-every", "2") == 0
    rc = _train_vp(vp_data, out, "--optimizer-steps", "4", "--eval-every", "2", "--resume",
                   "--track-hidden", "16")
    _user_error(capsys, rc, "--track-hidden: 8 -> 16")
    real = training.trainer.save_train_state

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training.trainer, "save_train_state", killed)
    assert _train_vp(vp_data, out, "--optimizer-steps", "4", "--eval-every", "2", "--resume") == 130
    monkeypatch.setattr(training.trainer, "save_train_state", real)
    assert json.loads((out / "last" / "train_state.json").read_text())["counters"]["step"] == 2
    assert _train_vp(vp_data, out, "--optimizer-steps", "4", "--eval-every", "2", "--resume") == 0
    assert json.loads((out / "summary.json").read_text())["optimizer_steps"] == 4
    assert [json.loads(p.read_text())["optimizer_steps"] for p in sorted(out.glob("config-resume-*.json"))] \
        == [2, 4]
    (out / "last" / "train_state.json").write_text("[]")
    rc = _train_vp(vp_data, out, "--optimizer-steps", "6", "--eval-every", "2", "--resume")
    _user_error(capsys, rc, str(out / "last" / "train_state.json"))


def test_vp_export_replaces_only_an_empty_folder_or_a_vp_checkpoint(
        vp_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.vp.track import load_track_checkpoint

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("not a checkpoint\n")
    rc = _train_vp(vp_data, tmp_path / "a", "--optimizer-steps", "2", "--eval-every", "2",
                   "--export", str(notes))
    _user_error(capsys, rc, f"--export {notes}")
    assert (notes / "README.md").read_text() == "not a checkpoint\n" and not (tmp_path / "a").exists()
    target = tmp_path / "models" / "track"
    assert _train_vp(vp_data, tmp_path / "b", "--optimizer-steps", "2", "--eval-every", "2",
                     "--export", str(target)) == 0
    # a checkpoint is replaced whole by the next export (a shipped model being updated)
    assert _train_vp(vp_data, tmp_path / "c", "--optimizer-steps", "3", "--eval-every", "3", "--seed", "1",
                     "--export", str(target)) == 0
    assert json.loads((target / "track_config.json").read_text())["training"]["optimizer_steps"] == 3
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["track"]  # no staging left behind
    load_track_checkpoint(target)
    (target / "extra.txt").write_text("x")  # a checkpoint plus something else would lose that something
    rc = _train_vp(vp_data, tmp_path / "d", "--optimizer-steps", "2", "--export", str(target))
    _user_error(capsys, rc, "extra.txt")


@pytest.mark.parametrize("option", [("--lr", "-1"), ("--min-lr-ratio", "-3"), ("--warmup-steps", "-5"),
                                    ("--track-hidden", "0"), ("--lora-dropout", "2")])
def test_train_vp_checks_numeric_options_before_any_work(tmp_path: Path, option: tuple[str, str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _user_error(capsys, _train_vp(tmp_path / "no-data", tmp_path / "run", *option), option[0])


# -------------------------------------------------------------------------------------- netllm train-rl

def _write_video(folder: Path) -> Path:
    """The synthetic video as video_size_L files (a folder `--video` accepts)."""
    folder.mkdir()
    for level, sizes in enumerate(synthetic_video().chunk_sizes_bytes):
        (folder / f"video_size_{level}").write_text("\n".join(map(str, sizes)) + "\n")
    return folder


def test_train_rl_never_writes_a_shipped_model_by_default() -> None:
    from training.rl_baseline import Config

    default = Config.__dataclass_fields__["out"].default
    assert Path(default) == Path("runs/pensieve")


@pytest.mark.parametrize("option", [("--threads", "0"), ("--hidden", "0"), ("--actor-lr", "-1"),
                                    ("--critic-lr", "nan"), ("--gamma", "2"), ("--eval-every", "0")])
def test_train_rl_checks_options_and_out_before_any_work(tmp_path: Path, option: tuple[str, str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "no-traces")
    rc = main(["train-rl", "--out", str(tmp_path / "run"), "--train-traces", missing, *option])
    _user_error(capsys, rc, option[0])
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "model.safetensors").write_bytes(b"shipped")
    rc = main(["train-rl", "--out", str(tmp_path / "used"), "--train-traces", missing])
    _user_error(capsys, rc, "--out")
    assert (tmp_path / "used" / "model.safetensors").read_bytes() == b"shipped"


def test_train_rl_run_folder_has_the_common_layout(shared_data: Path, tmp_path: Path) -> None:
    """config.json (resolved options), loss.csv, summary.json and best/ (the policy's checkpoint folder)."""
    from controller.policies import make_policy
    from emulation.abr_sim import simulate_session
    from traces.readers import write_cooked

    traces = tmp_path / "traces"
    for s in synthetic_sessions(2, seed=60):
        write_cooked(s.trace, traces / s.trace.name)
    video = _write_video(tmp_path / "video")
    out = tmp_path / "run"
    assert main(["train-rl", "--out", str(out), "--train-traces", str(traces), "--valid-traces", str(traces),
                 "--video", str(video), "--steps", "32", "--envs", "2", "--rollout", "8",
                 "--eval-every", "16", "--hidden", "8"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["best", "config.json", "loss.csv", "summary.json"]
    assert json.loads((out / "config.json").read_text())["steps"] == 32
    assert (out / "loss.csv").read_text().splitlines()[0].startswith("step,") and \
        len((out / "loss.csv").read_text().splitlines()) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] == str(out / "best") and summary["evaluations"] == 2
    best = json.loads((out / "best" / "config.json").read_text())
    assert best["levels"] == 6 and best["valid_mean_qoe"] == pytest.approx(summary["best_valid_mean_qoe"])
    assert {p.stat().st_mode & 0o777 for p in (out / "best").iterdir()} == {0o644}
    policy = make_policy("pensieve", checkpoint=out / "best")
    assert len(simulate_session(policy, synthetic_sessions(1)[0].trace, synthetic_video()).qualities) > 0


# ------------------------------------------------------------------------------------- netllm train-cjs

CJS_TINY = ("--executors", "5", "--valid-seeds", "1", "--valid-jobs", "3", "--dim", "4", "--hidden", "8",
            "--passes", "1", "--threads", "1", "--max-minutes", "0")
DECIMA_TINY = ("--model", "decima", "--bc-episodes", "0", "--pg-iterations", "1", "--rollouts", "1",
               "--curriculum-jobs", "3", "--eval-every", "1", *CJS_TINY)


@pytest.fixture()
def no_repo_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The repository root train-cjs sees, moved to a scratch folder: a default write into models/ shows."""
    import training.train_cjs

    root = tmp_path / "repo"
    monkeypatch.setattr(training.train_cjs, "REPO_ROOT", root)
    return root


def test_train_cjs_writes_only_into_out_unless_exporting(shared_data: Path, no_repo_models: Path,
                                                          tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cjs.decima import CONFIG_FILE, load_decima

    out = tmp_path / "run"
    assert main(["train-cjs", "--out", str(out), *DECIMA_TINY]) == 0
    assert not (no_repo_models / "models").exists()
    load_decima(out / "best")
    assert json.loads((out / "summary.json").read_text())["exported_to"] is None
    _user_error(capsys, main(["train-cjs", "--out", str(out), *DECIMA_TINY]), "not a new or empty folder")
    killed = tmp_path / "killed"  # a run killed before best/ existed keeps its config and log too
    killed.mkdir()
    (killed / "config.json").write_text("{}")
    _user_error(capsys, main(["train-cjs", "--out", str(killed), *DECIMA_TINY]), "not a new or empty folder")
    # --export: over a Decima checkpoint (replaced whole), never over another folder
    shipped = tmp_path / "models" / "decima-cjs"
    shutil.copytree(out / "best", shipped)
    (shipped / CONFIG_FILE).write_text(json.dumps({**json.loads((shipped / CONFIG_FILE).read_text()),
                                                   "training": {"old": True}}))
    assert main(["train-cjs", "--out", str(tmp_path / "run2"), "--export", str(shipped), *DECIMA_TINY]) == 0
    assert "old" not in json.loads((shipped / CONFIG_FILE).read_text())["training"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["decima-cjs"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1\n")
    rc = main(["train-cjs", "--out", str(tmp_path / "run3"), "--export", str(other), *DECIMA_TINY])
    _user_error(capsys, rc, f"--export {other}")
    assert (other / "data.csv").read_text() == "1\n" and not (tmp_path / "run3").exists()


@pytest.mark.parametrize("option", [("--lr", "-1"), ("--pg-lr", "-1"), ("--mean-gap-s", "0"),
                                    ("--entropy-weight", "-1"), ("--save-dtype", "int8"),
                                    ("--lora-rank", "0")])
def test_train_cjs_checks_options_before_any_work(no_repo_models: Path, tmp_path: Path,
                                                  option: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import training.train_cjs

    monkeypatch.setattr(training.train_cjs, "train_decima", _fail)
    monkeypatch.setattr(training.train_cjs, "train_netllm_cjs", _fail)
    _user_error(capsys, main(["train-cjs", "--out", str(tmp_path / "run"), *DECIMA_TINY, *option]), option[0])


def test_train_cjs_checks_the_pool_before_simulating(pool_dir: Path, no_repo_models: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import training.train_cjs

    monkeypatch.setattr(training.train_cjs, "build_pool", _fail)
    for pool in (tmp_path / "nonexistent", pool_dir):  # missing, and an ABR pool
        rc = main(["train-cjs", "--model", "netllm-cjs", "--backbone", "tiny", "--pool", str(pool),
                   "--out", str(tmp_path / "run"), *CJS_TINY])
        _user_error(capsys, rc, "--pool", str(pool))
    rc = main(["train-cjs", "--model", "netllm-cjs", "--pool-policies", "", "--out", str(tmp_path / "run"),
               *CJS_TINY])
    _user_error(capsys, rc, "--pool-policies")


# -------------------------------------------------------------------------------------- netllm collect

def test_collect_without_policies_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from traces.readers import write_cooked

    trace = synthetic_sessions(1, seed=70)[0].trace
    write_cooked(trace, tmp_path / "traces" / trace.name)
    rc = main(["collect", "--out", str(tmp_path / "pool"), "--trace-dir", str(tmp_path / "traces"),
               "--video", str(_write_video(tmp_path / "video")), "--policies", ""])
    _user_error(capsys, rc, "--policies")
    assert not (tmp_path / "pool").exists()
