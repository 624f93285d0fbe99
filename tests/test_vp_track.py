"""TRACK-style VP model: `netllm train-vp --model track` on a small synthetic dataset (loss falls, validation
selection beats no-motion on predictable motion), checkpoint round trip, the `track` policy through the
controller, and clear errors for bad checkpoints and options."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from controller.app import ControllerConfig, create_app
from controller.vp.policies import NoMotion, make_vp_policy
from controller.vp.track import (
    TRACK_CONFIG_FILE,
    TRACK_WEIGHTS,
    TrackConfig,
    TrackPolicy,
    VpCheckpointError,
    build_track_model,
    load_track_checkpoint,
    save_track_checkpoint,
)
from netllm.cli import main as netllm_main
from traces.headmove import synthetic_head_trace, write_head_trace
from training.train_vp import Config, run


def write_synthetic_dataset(root: Path, videos: int = 5, users: int = 5, n_samples: int = 200) -> Path:
    """A NetLLM-layout dataset `root/Synth` of viewers turning at steady, per-viewer yaw speeds (predictable
    motion a learned model can extrapolate; no-motion cannot)."""
    rng = np.random.default_rng(7)
    folder = root / "Synth"
    for v in range(1, videos + 1):
        for u in range(1, users + 1):
            trace = synthetic_head_trace(str(v), str(u), n_samples=n_samples,
                                         yaw_speed_deg_s=float(rng.uniform(-40, 40)), noise_deg=0.3,
                                         seed=v * 100 + u, dataset="Synth")
            write_head_trace(trace, folder / f"video{v}" / "5Hz" / f"simple_5Hz_user{u}.csv")
    return root


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("vpdata"))


def read_losses(out: Path) -> list[float]:
    with open(out / "loss.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def random_track(seed: int = 0) -> object:
    torch.manual_seed(seed)
    model = build_track_model(TrackConfig(hidden_size=16, layers=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # the output layer starts at zero: make it predict something
    return model.eval()


def histories(n: int = 4) -> np.ndarray:
    return np.stack([synthetic_head_trace(n_samples=10, noise_deg=2.0, seed=s).poses_deg for s in range(n)])


@pytest.fixture(scope="module")
def trained_track(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "track"
    torch.set_num_threads(1)
    assert run(Config(model="track", data=synth_data, dataset="Synth", out=out, optimizer_steps=150,
                      eval_every=50, micro_batch_size=32, track_hidden=32, track_layers=1, warmup_steps=10,
                      threads=1)) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_training_loss_falls_and_selection_beats_no_motion(trained_track: tuple[Path, dict]) -> None:
    out, summary = trained_track
    losses = read_losses(out)
    assert len(losses) == 150
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])
    assert summary["best_valid_mae"] < summary["valid_no_motion"]["valid_mae"]
    assert (out / "best" / TRACK_CONFIG_FILE).is_file() and (out / "summary.json").is_file()
    assert json.loads((out / "config.json").read_text())["model"] == "track"
    assert not any(p.suffix in (".pt", ".bin", ".pkl") for p in out.rglob("*"))


def test_checkpoint_round_trip_and_policy(tmp_path: Path) -> None:
    model = random_track()
    save_track_checkpoint(model, tmp_path / "ckpt", "float32", {"note": "test"})
    loaded, doc = load_track_checkpoint(tmp_path / "ckpt")
    assert doc["training"] == {"note": "test"} and doc["format"] == "netllm-vp-track"
    features = torch.randn(3, 10, 6)
    torch.testing.assert_close(loaded(features), model(features))
    policy = TrackPolicy(checkpoint=str(tmp_path / "ckpt"))
    poses = policy.predict_batch(histories(), 20)
    assert poses.shape == (4, 20, 3) and np.isfinite(poses).all()
    assert np.all(np.abs(poses[..., 2]) <= 180) and np.all(np.abs(poses[..., 1]) <= 90)
    assert policy.predict_batch(histories(), 30).shape == (4, 30, 3)  # the decoder rolls out further
    np.testing.assert_allclose(policy.predict_batch(histories(), 5), poses[:, :5], atol=1e-9)


def test_untrained_model_is_no_motion() -> None:
    policy = TrackPolicy.from_model(build_track_model(TrackConfig(hidden_size=8, layers=1)).eval())
    expected = NoMotion().predict_batch(histories(), 20)
    np.testing.assert_allclose(policy.predict_batch(histories(), 20), expected, atol=1e-9)


async def test_controller_round_trip(trained_track: tuple[Path, dict]) -> None:
    out, _ = trained_track
    cfg = ControllerConfig(tasks=["vp"])
    object.__setattr__(cfg, "vp_policy", "track")
    object.__setattr__(cfg, "vp_policy_options", json.dumps({"checkpoint": str(out / "best")}))
    history = histories(1)[0]
    doc = {"session_id": "v1", "history_time_s": (np.arange(10) * 0.2).tolist(),
           "history_roll_deg": history[:, 0].tolist(), "history_pitch_deg": history[:, 1].tolist(),
           "history_yaw_deg": history[:, 2].tolist()}
    async with TestClient(TestServer(create_app(cfg))) as client:
        response = await client.post("/v1/vp/predict", json=doc)
        assert response.status == 200, await response.text()
        answer = await response.json()
    assert answer["policy"] == "track" and answer["horizon"] == 20
    expected = make_vp_policy("track", checkpoint=str(out / "best")).predict(history, 20)
    got = np.array([answer["roll_deg"], answer["pitch_deg"], answer["yaw_deg"]]).T
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_bad_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*track_config\.json missing.*netllm train-vp"):
        TrackPolicy(checkpoint=str(tmp_path / "nowhere"))
    save_track_checkpoint(random_track(), tmp_path / "ckpt")
    (tmp_path / "ckpt" / TRACK_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(VpCheckpointError, match=TRACK_WEIGHTS):
        load_track_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / TRACK_CONFIG_FILE).write_text("{")
    with pytest.raises(VpCheckpointError, match="not valid JSON"):
        load_track_checkpoint(tmp_path / "ckpt")


async def test_controller_refuses_to_start_with_a_missing_default_checkpoint(tmp_path: Path) -> None:
    cfg = ControllerConfig(tasks=["vp"])
    object.__setattr__(cfg, "vp_policy", "track")
    object.__setattr__(cfg, "vp_policy_options", json.dumps({"checkpoint": str(tmp_path / "none")}))
    with pytest.raises(ValueError, match="no VP checkpoint here"):
        async with TestClient(TestServer(create_app(cfg))):
            pass


def test_cli_refuses_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert netllm_main(["train-vp", "--model", "bogus", "--out", str(tmp_path / "x")]) == 2
    assert "--model 'bogus'" in capsys.readouterr().err
    assert netllm_main(["train-vp", "--data", str(tmp_path), "--dataset", "none",
                        "--out", str(tmp_path / "y")]) == 2
    assert "not found" in capsys.readouterr().err
