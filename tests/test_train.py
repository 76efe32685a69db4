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
