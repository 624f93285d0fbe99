"""NetLLM-VP (LLM + LoRA + regression head) on the tiny random backbone: `netllm train-vp --model
netllm-vp` (loss falls), the checkpoint folder (PEFT adapter + safetensors + JSON naming the backbone) and
its round trip, the `netllm-vp` policy through the controller, and clear errors for bad checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from controller.app import ControllerConfig, create_app
from controller.netllm.backbone import BackboneSpec, load_backbone
from controller.vp.netllm_vp import NetllmVpPolicy
from controller.vp.netllm_vp_model import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CONFIG_FILE,
    MODULES_FILE,
    NetllmVpConfig,
    build_netllm_vp,
    load_netllm_vp,
    save_netllm_vp,
)
from controller.vp.policies import NoMotion, make_vp_policy
from controller.vp.track import VpCheckpointError
from tests.test_vp_track import histories, write_synthetic_dataset
from training.train_vp import Config, run


def tiny_vp(perturb: bool = True) -> tuple[object, dict]:
    body, info = load_backbone(BackboneSpec("tiny"), "cpu")
    torch.manual_seed(0)
    model = build_netllm_vp(NetllmVpConfig(hidden_size=info.hidden_size, encoder_channels=16,
                                           head_channels=16), body)
    if perturb:  # the head starts at zero (no-motion); give the adapter and head something to carry
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
    return model.eval(), info.to_json()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    data = write_synthetic_dataset(tmp_path_factory.mktemp("vpdata"), videos=4, users=4)
    out = tmp_path_factory.mktemp("runs") / "netllm-vp"
    assert run(Config(model="netllm-vp", backbone="tiny", data=data, dataset="Synth", out=out,
                      optimizer_steps=100, eval_every=50, micro_batch_size=16, lr=1e-2, warmup_steps=5,
                      encoder_channels=16, head_channels=32, threads=1)) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_training_loss_falls(trained: tuple[Path, dict]) -> None:
    out, summary = trained
    with open(out / "loss.csv", newline="") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 100
    assert np.mean(losses[-15:]) < 0.75 * np.mean(losses[:15])
    assert summary["best_valid_mae"] < summary["valid_no_motion"]["valid_mae"]
    assert summary["trainable_parameters"] < summary["total_parameters"]
    assert summary["backbone"]["kind"] == "tiny" and summary["save_dtype"] == "bfloat16"


def test_checkpoint_folder_layout(trained: tuple[Path, dict]) -> None:
    best = Path(trained[0]) / "best"
    names = {p.name for p in best.iterdir()}
    assert {CONFIG_FILE, ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODULES_FILE} <= names
    assert not any(n.endswith((".pt", ".bin", ".pkl", ".pickle")) for n in names)
    doc = json.loads((best / CONFIG_FILE).read_text())
    assert doc["format"] == "netllm-vp" and doc["backbone"]["kind"] == "tiny"
    assert doc["storage_dtype"] == "bfloat16" and doc["model"]["lora_rank"] == 8
    assert json.loads((best / ADAPTER_CONFIG).read_text())["r"] == 8


@pytest.mark.parametrize("merge", [True, False])
def test_checkpoint_round_trip(tmp_path: Path, merge: bool) -> None:
    model, info = tiny_vp()
    save_netllm_vp(model, tmp_path / "ckpt", info, "float32", {"note": "test"})
    loaded, doc = load_netllm_vp(tmp_path / "ckpt", merge_lora=merge)
    assert doc["training"] == {"note": "test"}
    features = torch.randn(3, 10, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(features), model(features), atol=1e-5, rtol=1e-4)


def test_untrained_model_is_no_motion() -> None:
    model, _ = tiny_vp(perturb=False)
    policy = NetllmVpPolicy.from_model(model)
    expected = NoMotion().predict_batch(histories(), 20)
    np.testing.assert_allclose(policy.predict_batch(histories(), 20), expected, atol=1e-9)


def test_policy_horizons(tmp_path: Path) -> None:
    model, info = tiny_vp()
    save_netllm_vp(model, tmp_path / "ckpt", info)
    policy = make_vp_policy("netllm-vp", checkpoint=str(tmp_path / "ckpt"))
    poses = policy.predict_batch(histories(), 20)
    assert poses.shape == (4, 20, 3) and np.isfinite(poses).all()
    np.testing.assert_allclose(policy.predict_batch(histories(), 7), poses[:, :7])
    longer = policy.predict_batch(histories(), 25)
    np.testing.assert_allclose(longer[:, 20:], np.repeat(poses[:, -1:], 5, axis=1))
    with pytest.raises(ValueError, match="exactly 10"):
        policy.predict_batch(histories()[:, :9], 20)


async def test_controller_round_trip(tmp_path: Path) -> None:
    model, info = tiny_vp()
    save_netllm_vp(model, tmp_path / "ckpt", info)
    cfg = ControllerConfig(tasks=["vp"])
    object.__setattr__(cfg, "vp_policy", "netllm-vp")
    object.__setattr__(cfg, "vp_policy_options", json.dumps({"checkpoint": str(tmp_path / "ckpt")}))
    history = histories(1)[0]
    doc = {"session_id": "v1", "history_time_s": (np.arange(10) * 0.2).tolist(),
           "history_roll_deg": history[:, 0].tolist(), "history_pitch_deg": history[:, 1].tolist(),
           "history_yaw_deg": history[:, 2].tolist(), "horizon": 20}
    async with TestClient(TestServer(create_app(cfg))) as client:
        response = await client.post("/v1/vp/predict", json=doc)
        assert response.status == 200, await response.text()
        answer = await response.json()
        short = await client.post("/v1/vp/predict", json={**doc, "history_time_s": doc["history_time_s"][:9],
                                                          "history_roll_deg": doc["history_roll_deg"][:9],
                                                          "history_pitch_deg": doc["history_pitch_deg"][:9],
                                                          "history_yaw_deg": doc["history_yaw_deg"][:9]})
        assert short.status == 400 and "exactly 10" in (await short.json())["error"]
    assert answer["policy"] == "netllm-vp" and len(answer["yaw_deg"]) == 20
    expected = NetllmVpPolicy(checkpoint=str(tmp_path / "ckpt")).predict(history, 20)
    got = np.array([answer["roll_deg"], answer["pitch_deg"], answer["yaw_deg"]]).T
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_bad_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*netllm_vp_config\.json missing"):
        NetllmVpPolicy(checkpoint=str(tmp_path / "nowhere"))
    model, info = tiny_vp()
    save_netllm_vp(model, tmp_path / "ckpt", info)
    (tmp_path / "ckpt" / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(VpCheckpointError, match=f"{ADAPTER_WEIGHTS}: missing"):
        load_netllm_vp(tmp_path / "ckpt")
    doc = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    doc["backbone"]["kind"] = "no-such-kind"
    (tmp_path / "ckpt" / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(VpCheckpointError, match="backbone no-such-kind"):
        load_netllm_vp(tmp_path / "ckpt")
    doc["format"] = "netllm-abr"
    (tmp_path / "ckpt" / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(VpCheckpointError, match="not a netllm-vp checkpoint"):
        load_netllm_vp(tmp_path / "ckpt")
