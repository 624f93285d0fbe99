"""Offline training: the loss falls, accumulation/clipping/warm-up semantics, exact resume, `netllm train`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.test_netllm_support import small_pool, synthetic_sessions, synthetic_video, tiny_model
from training.pool import WindowSampler
from training.trainer import LrSchedule, accumulated_step, make_adamw, to_device


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pool")
    small_pool(traces=3, repeats=2).save(folder)
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_loss_falls_on_a_small_pool() -> None:
    torch.manual_seed(0)
    pool = small_pool(traces=3, repeats=2)
    model, _ = tiny_model(window=8)
    sampler = WindowSampler(pool, 8, 50.0, seed=0)
    fixed = to_device(sampler.sample(32), torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_adamw(model, 3e-3, 0.0)
    with torch.no_grad():
        before = float(model.loss(fixed))
    for _ in range(40):
        micro = (to_device(sampler.sample(8), torch.device("cpu")) for _ in range(2))
        accumulated_step(micro, model.loss, optimizer, params, 3e-3, 1.0)
    with torch.no_grad():
        after = float(model.loss(fixed))
    assert after < before - 0.3, (before, after)


def test_clipping_applies_once_to_the_accumulated_gradient() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1, bias=False)
    start = layer.weight.detach().clone()
    batches = [torch.randn(8, 4) * 10 for _ in range(3)]

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return (layer(x) ** 2).mean()

    expected = torch.zeros_like(start)
    for x in batches:  # the mean of the micro-batch gradients
        expected += torch.autograd.grad(loss_fn(x), layer.weight)[0] / len(batches)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    _, norm = accumulated_step(batches, loss_fn, optimizer, list(layer.parameters()), lr=1.0, clip_norm=0.5)
    assert norm == pytest.approx(float(expected.norm()), rel=1e-5)
    update = start - layer.weight.detach()
    torch.testing.assert_close(update, expected * (0.5 / expected.norm()), rtol=1e-5, atol=1e-6)


def test_warmup_counts_optimizer_steps() -> None:
    s = LrSchedule(base_lr=1.0, warmup_steps=4, total_steps=20, min_ratio=0.1)
    assert [s.lr(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.lr(4) == pytest.approx(1.0)
    assert s.lr(20) == pytest.approx(0.1) and s.lr(12) < s.lr(8)


def _train(pool_dir: Path, out: Path, *extra: str) -> int:
    from netllm.cli import main

    return main(["train", "--pool", str(pool_dir), "--out", str(out), "--backbone", "tiny", "--device", "cpu",
                 "--window", "8", "--micro-batch-size", "4", "--grad-accum", "3", "--lr", "3e-3",
                 "--warmup-steps", "3", "--select-by", "loss", "--valid-fraction", "0.34",
                 "--conv-channels", "8", *extra])


def test_train_command_logs_selects_and_saves(pool_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _train(pool_dir, out, "--optimizer-steps", "24", "--eval-every", "6") == 0
    rows = _rows(out / "loss.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 25))
    # micro-batches and samples count accumulation explicitly; warm-up reaches the peak at optimizer step 3
    assert int(rows[-1]["micro_batches"]) == 72 and int(rows[-1]["samples"]) == 288
    assert float(rows[2]["lr"]) == pytest.approx(3e-3, rel=1e-4)
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-6:]) < np.mean(losses[:3]) - 0.15
    evals = {int(r["step"]): float(r["valid_loss"]) for r in rows if r["valid_loss"]}
    assert sorted(evals) == [6, 12, 18, 24]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_step"] == min(evals, key=evals.get)  # selection by held-out loss
    assert summary["optimizer_steps"] == 24 and 0 < summary["trainable_fraction"] < 1
    assert json.loads((out / "config.json").read_text())["grad_accum"] == 3
    best = json.loads((out / "best" / "netllm_config.json").read_text())
    assert best["training"]["optimizer_steps"] == summary["best_step"]
    assert best["serving"]["max_trained_timestep"] == 23
    from controller.policies.netllm_policy import NetLLMPolicy

    policy = NetLLMPolicy(checkpoint=out / "best")
    from emulation.abr_sim import simulate_session

    result = simulate_session(policy, synthetic_sessions(1)[0].trace, synthetic_video())
    assert all(0 <= q < 6 for q in result.qualities)


def test_existing_run_needs_resume(pool_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _train(pool_dir, out, "--optimizer-steps", "2", "--eval-every", "2") == 0
    assert _train(pool_dir, out, "--optimizer-steps", "2", "--eval-every", "2") == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_reproduces_an_uninterrupted_run(pool_dir: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ("--optimizer-steps", "8", "--eval-every", "4", "--lora-dropout", "0.1")
    assert _train(pool_dir, straight, *common) == 0
    assert _train(pool_dir, split, *common, "--stop-after-steps", "4") == 0
    assert len(_rows(split / "loss.csv")) == 4
    assert json.loads((split / "summary.json").read_text())["stopped_early"] is True
    assert _train(pool_dir, split, *common, "--resume") == 0
    a, b = _rows(straight / "loss.csv"), _rows(split / "loss.csv")
    assert [r["step"] for r in b] == [str(i) for i in range(1, 9)]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    for name in ("adapter_model.safetensors", "netllm_modules.safetensors"):
        ta, tb = load_file(str(straight / "last" / name)), load_file(str(split / "last" / name))
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), (name, key)


def test_resume_with_other_batch_sizes_keeps_running_totals(pool_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _train(pool_dir, out, "--optimizer-steps", "4", "--eval-every", "2", "--stop-after-steps", "2") == 0
    # resumed with 1 micro-batch of 8 per step instead of 3 of 4 (as when a run moves to a GPU)
    assert _train(pool_dir, out, "--optimizer-steps", "4", "--eval-every", "2", "--resume",
                  "--micro-batch-size", "8", "--grad-accum", "1") == 0
    totals = [(int(r["micro_batches"]), int(r["samples"])) for r in _rows(out / "loss.csv")]
    assert totals == [(3, 12), (6, 24), (7, 32), (8, 40)]


def test_init_from_starts_a_new_run_from_a_checkpoint(pool_dir: Path, tmp_path: Path, capsys) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert _train(pool_dir, first, "--optimizer-steps", "3", "--eval-every", "3") == 0
    # with a zero learning rate the new run's weights stay exactly the checkpoint's
    assert _train(pool_dir, second, "--optimizer-steps", "2", "--eval-every", "2", "--lr", "0",
                  "--init-from", str(first / "last")) == 0
    for name in ("adapter_model.safetensors", "netllm_modules.safetensors"):
        ta, tb = load_file(str(first / "last" / name)), load_file(str(second / "last" / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    assert [r["step"] for r in _rows(second / "loss.csv")] == ["1", "2"]  # fresh counters
    assert json.loads((second / "config.json").read_text())["init_from"] == str(first / "last")
    # a checkpoint of another backbone is refused, naming both
    config = first / "last" / "netllm_config.json"
    doc = json.loads(config.read_text())
    doc["backbone"]["sha256"] = "0" * 64
    config.write_text(json.dumps(doc))
    assert _train(pool_dir, tmp_path / "third", "--optimizer-steps", "1", "--init-from", str(first / "last")) == 2
    assert "trained on backbone tiny (000000000000)" in capsys.readouterr().err
    assert _train(pool_dir, second, "--optimizer-steps", "1", "--resume", "--init-from", str(first / "last")) == 2


def test_init_from_can_add_a_return_bypass(pool_dir: Path, tmp_path: Path) -> None:
    from controller.netllm.checkpoint import load_checkpoint

    first, second = tmp_path / "first", tmp_path / "second"
    assert _train(pool_dir, first, "--optimizer-steps", "1", "--eval-every", "1") == 0
    assert _train(pool_dir, second, "--optimizer-steps", "1", "--eval-every", "1", "--lr", "0",
                  "--return-bypass", "--init-from", str(first / "last")) == 0
    ta = load_file(str(first / "last" / "netllm_modules.safetensors"))
    tb = load_file(str(second / "last" / "netllm_modules.safetensors"))
    assert set(tb) - set(ta) == {"encoder.return_bypass"} and not tb["encoder.return_bypass"].any()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    model, _ = load_checkpoint(second / "last", device="cpu")
    assert model.cfg.return_bypass and model.encoder.return_bypass is not None
    # the other way round is a mismatch, reported as such
    assert _train(pool_dir, tmp_path / "third", "--optimizer-steps", "1", "--init-from", str(second / "last")) == 2


def test_eval_window_scores_periodic_evaluations_with_that_context(pool_dir: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """--eval-window serves periodic evaluations and the end-of-run choice with that many steps of context,
    and best/ records it as its served context."""
    import training.train as train_module
    from netllm.cli import main
    from traces.readers import write_cooked

    valid = tmp_path / "valid"
    for s in synthetic_sessions(1, seed=51):
        write_cooked(s.trace, valid / s.trace.name)
    windows: list[int | None] = []
    real = train_module.simulate_mean_qoe

    def recording(*args, **kwargs):
        windows.append(args[5] if len(args) > 5 else kwargs.get("window"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "simulate_mean_qoe", recording)
    out = tmp_path / "run"
    common = ["train", "--pool", str(pool_dir), "--backbone", "tiny", "--device", "cpu", "--window", "8",
              "--micro-batch-size", "2", "--grad-accum", "1", "--conv-channels", "8", "--select-by", "sim",
              "--valid-trace-dir", str(valid)]
    assert main([*common, "--out", str(out), "--optimizer-steps", "2", "--eval-every", "1",
                 "--eval-window", "3", "--target-quantiles", "0.5,1.0"]) == 0
    assert windows == [3, 3, 3, 3]  # two periodic evaluations, then the two candidate targets
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["target_scores"]) == {"0.5/w3", "1/w3"}
    assert json.loads((out / "best" / "netllm_config.json").read_text())["serving"]["context_steps"] == 3
    for bad in ("1", "9"):
        assert main([*common, "--out", str(tmp_path / f"bad{bad}"), "--eval-window", bad]) == 2


def test_simulator_selection_and_target_choice(pool_dir: Path, tmp_path: Path) -> None:
    """--select-by sim scores checkpoints on validation traces and picks the serving target there."""
    from traces.readers import write_cooked

    valid = tmp_path / "valid"
    for s in synthetic_sessions(2, seed=50):
        write_cooked(s.trace, valid / s.trace.name)
    video = tmp_path / "video"
    video.mkdir()
    sizes = synthetic_video().chunk_sizes_bytes
    for level in range(6):
        (video / f"video_size_{level}").write_text("\n".join(map(str, sizes[level])) + "\n")
    out = tmp_path / "run"
    from netllm.cli import main

    rc = main(["train", "--pool", str(pool_dir), "--out", str(out), "--backbone", "tiny", "--device", "cpu",
               "--window", "8", "--micro-batch-size", "4", "--grad-accum", "1", "--optimizer-steps", "4",
               "--eval-every", "2", "--select-by", "sim", "--valid-trace-dir", str(valid),
               "--video", str(video), "--conv-channels", "8", "--target-quantiles", "0.5,1.0"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["target_scores"]) == {"0.5", "1"}
    assert summary["valid_quantize"] == "int8-split" and summary["valid_sessions"] == 2  # served as on a CPU
    assert np.isfinite(summary["best_score"])
    serving = json.loads((out / "best" / "netllm_config.json").read_text())["serving"]
    assert serving["target_quantile"] in (0.5, 1.0) and serving["context_steps"] == 8
    rows = _rows(out / "loss.csv")
    assert [r["valid_qoe"] != "" for r in rows] == [False, True, False, True]
    # --select-only: best/ and last/ at each target, scored on the same validation traces; winner in selected/
    rc = main(["train", "--pool", str(pool_dir), "--out", str(out), "--backbone", "tiny", "--device", "cpu",
               "--select-only", "--select-by", "sim", "--valid-trace-dir", str(valid), "--video", str(video),
               "--target-quantiles", "0.25,0.5", "--serving-windows", "2,8", "--save-dtype", "bfloat16"])
    assert rc == 0
    selection = json.loads((out / "selection.json").read_text())
    assert set(selection["scores"]) == {f"{c}@{q}/w{w}" for c in ("best", "last") for q in ("0.25", "0.5")
                                        for w in (2, 8)}
    assert selection["scores"][selection["winner"]] == max(selection["scores"].values())
    assert selection["valid_sessions"] == 2 and selection["valid_quantize"] == "int8-split"
    chosen = json.loads((out / "selected" / "netllm_config.json").read_text())
    assert chosen["storage_dtype"] == "bfloat16" and chosen["serving"]["target_quantile"] in (0.25, 0.5)
    assert f"/w{chosen['serving']['context_steps']}" in selection["winner"]  # the served window is recorded
    assert main(["train", "--pool", str(pool_dir), "--out", str(out), "--backbone", "tiny", "--select-only",
                 "--valid-trace-dir", str(valid), "--serving-windows", "1"]) == 2  # below 2
    assert main(["train", "--pool", str(pool_dir), "--out", str(out), "--backbone", "tiny", "--select-only",
                 "--valid-trace-dir", str(valid), "--video", str(video), "--serving-windows", "9"]) == 2
    assert not list((out / "selected").glob("train_state*"))
    assert {f.stat().st_mode & 0o777 for f in (out / "selected").iterdir()} == {0o644}  # shareable, as best/
    from controller.netllm.checkpoint import load_checkpoint

    load_checkpoint(out / "selected", device="cpu")  # the copy is a valid checkpoint


def test_selection_simulates_the_served_quantised_model(pool_dir: Path, capsys) -> None:
    """--select-by sim scores the model as a CPU serves it (int8-split by default) on a copy: the trained
    model keeps its float weights, its LoRA adapter and its gradients."""
    from controller.netllm.quantize import OutlierSplitLinear
    from training.train import Config, _serving_copy, _valid_quantize

    assert _valid_quantize(Config(pool=pool_dir, device="cpu")) == "int8-split"
    assert _valid_quantize(Config(pool=pool_dir, device="cpu", valid_quantize="none")) == "none"
    model, _ = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    served = _serving_copy(model, "int8-split")
    assert any(isinstance(m, OutlierSplitLinear) for m in served.backbone.modules())
    assert not any(type(m) is torch.nn.Linear for m in served.backbone.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert hasattr(model.backbone, "peft_config") and any(p.requires_grad for p in model.parameters())
    assert _train(pool_dir, Path("unused"), "--valid-quantize", "fp8") == 2
    assert "--valid-quantize" in capsys.readouterr().err


def test_validation_traces_can_start_at_several_samples() -> None:
    from training.train import spread_starts

    sessions = synthetic_sessions(2, seed=5)
    spread = spread_starts(sessions, 3)
    assert [s.trace.name for s in spread] == [sessions[0].trace.name] * 3 + [sessions[1].trace.name] * 3
    for s in spread:
        assert 1 <= s.start_index < len(s.trace.time_s)
    n = len(sessions[0].trace.time_s)
    assert [s.start_index for s in spread[:3]] == [1, 1 + (n - 1) // 3, 1 + 2 * (n - 1) // 3]
    assert spread_starts(sessions, 1) == [type(s)(s.trace, 1) for s in sessions]
