"""The training recipes run, checkpoint and resume (a few steps on a tiny DataIGM-mini)."""
import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from igmu.world.data import build_data

    return build_data(tmp_path_factory.mktemp("d") / "data", seed=1, n_train=32, n_test=8)


def test_vae_unet_export_roundtrip(tiny_data, tmp_path):
    from diffusers import StableDiffusionPipeline

    from igmu.world.train import export_pipeline, train_unet, train_vae

    work = tmp_path / "work"
    train_vae(tiny_data, work, steps=2, batch=4)
    sf = json.loads((work / "vae_done.json").read_text())["scaling_factor"]
    assert np.isfinite(sf) and sf > 0
    train_unet(tiny_data, work, steps=2, batch=4)
    assert json.loads((work / "unet_state.json").read_text())["step"] == 2
    train_unet(tiny_data, work, steps=3, batch=4)  # resumes from step 2
    assert json.loads((work / "unet_state.json").read_text())["step"] == 3
    out = export_pipeline(work, tmp_path / "pipe")
    pipe = StableDiffusionPipeline.from_pretrained(str(out))
    assert pipe.vae.config.scaling_factor == pytest.approx(sf)
    im = pipe("a red circle", num_inference_steps=2, output_type="np").images
    assert im.shape == (1, 32, 32, 3)


def test_detector_training_smoke(tiny_data, tmp_path):
    from igmu.world.judges import Detector, train_detector

    card = train_detector(tiny_data, tmp_path / "det", steps=2, batch=8, log=lambda *_: None)
    assert set(card["test_accuracy"]) >= {"objects", "mark", "identity"}
    det = Detector.load(tmp_path / "det")
    assert len(det.predict(np.zeros((3, 32, 32, 3), np.uint8))) == 3


def test_unet_stage_two_from_a_pipeline_stops_and_records(tiny_data, tmp_path):
    """Stage 2 of the shipped recipe: start from a pipeline's weights, over-sample two-object
    scenes, stop early with --stop-at; the export records the run it continued from."""
    from safetensors.torch import load_file

    from igmu.models.load import MINI_DIR
    from igmu.world.train import export_pipeline, train_unet, train_vae

    work = tmp_path / "work"
    train_vae(tiny_data, work, steps=1, batch=4)
    train_unet(tiny_data, work, steps=4, batch=4, init_from=MINI_DIR, stop_at=2)
    state = json.loads((work / "unet_state.json").read_text())
    assert state["step"] == 2 and state["steps_total"] == 4 and state["kind_share"]["pair"] == 0.4
    start = load_file(str(MINI_DIR / "unet" / "diffusion_pytorch_model.safetensors"))
    now = load_file(str(work / "unet_ckpt.safetensors"))
    k = "conv_in.weight"
    assert not torch.equal(now["unet." + k], start[k])  # trained ...
    assert (now["unet." + k] - start[k]).abs().max() < 0.05  # ... from the given weights, not from scratch
    out = export_pipeline(work, tmp_path / "pipe")
    info = json.loads((out / "igmu_training.json").read_text())
    assert info["unet"]["init_from"] == str(MINI_DIR) and "unet" in info["init"]


def test_train_cli_rejects_bad_options(tiny_data):
    from typer.testing import CliRunner

    from igmu.cli import app

    r = CliRunner().invoke(app, ["world", "train", "vae", "--data", str(tiny_data), "--stop-at", "3"])
    assert r.exit_code == 2 and "apply to the unet stage only" in r.output
    r = CliRunner().invoke(app, ["world", "train", "unet", "--data", str(tiny_data), "--init-from", "/nonexistent"])
    assert r.exit_code == 2 and "not a diffusers pipeline folder" in r.output
    r = CliRunner().invoke(app, ["world", "train", "clip", "--data", str(tiny_data), "--device", "tpu"])
    assert r.exit_code == 2 and "--device must be" in r.output
