"""Real scale without downloads: SD1.5/SD2.1 configurations, CLIP's real tokenizer, the float16 checks."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _tokenizer(pad="<|endoftext|>"):
    from igmu.models.clip_tokenizer import clip_tokenizer

    return clip_tokenizer(pad)


def test_clip_tokenizer_gives_stable_diffusions_token_ids():
    tok = _tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # multi-token concepts, as on real SD: "Van Gogh" is two words, "McKernan" splits into two pieces
    assert tok.convert_ids_to_tokens(tok("Van Gogh").input_ids[1:-1]) == ["van</w>", "gogh</w>"]
    assert tok.convert_ids_to_tokens(tok("Kelly McKernan").input_ids[1:-1]) == ["kelly</w>", "mck", "ernan</w>"]
    assert tok("Kelly McKernan").input_ids == [49406, 5220, 6781, 34617, 49407]
    padded = tok("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[3:] == [49407] * 74  # SD 1.x pads with <|endoftext|>
    sd2 = _tokenizer("!")("a cat", padding="max_length", max_length=77).input_ids
    assert sd2[:4] == [49406, 320, 2368, 49407] and sd2[4:] == [0] * 73  # SD 2.x pads with "!"


def test_clip_tokenizer_without_open_clip_is_one_line(monkeypatch):
    import importlib.util

    from igmu.errors import UserError
    from igmu.models import clip_tokenizer as C

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps open-clip-torch==3.3.0"):
        C.bpe_vocab_path()


@pytest.mark.parametrize("kind, unet, text, vae, cross, pred", [
    ("sd15", 859_520_964, 123_060_480, 83_653_863, 768, "epsilon"),
    ("sd21", 865_910_724, 340_387_840, 83_653_863, 1024, "v_prediction"),
])
def test_scale_configs_have_the_real_sizes(kind, unet, text, vae, cross, pred):
    """The parameter counts of the public checkpoints (built on the meta device: no memory, no time)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from igmu.models.scale import scale_config

    c = scale_config(kind)
    with torch.device("meta"):
        u = UNet2DConditionModel.from_config(c["unet"])
        te = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in c["text_encoder"].items() if k != "architectures"}))
        v = AutoencoderKL.from_config(c["vae"])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(u), count(te), count(v)) == (unet, text, vae)
    assert u.config.cross_attention_dim == te.config.hidden_size == cross and c["scheduler"]["prediction_type"] == pred


@pytest.mark.slow
def test_sd15_sized_float16_checks_on_cpu(tmp_path):
    """generate --device cpu at 512 px, UCE + export + plain diffusers, generation from the artifact, one ESD
    iteration, on an SD1.5-sized pipeline saved in float16 (scripts/check_fp16_sd15.py; ~10 GB RAM)."""
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_fp16_sd15.py"), "--work", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "all checks pass" in res.stdout


@pytest.mark.slow
def test_gpu_check_runs_at_toy_size_on_cpu(tmp_path):
    """scripts/gpu_check.py's code path, on a tiny SD1 pipeline on the CPU (its fallback)."""
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--toy", "--device", "cpu",
                          "--work", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "checks ok" in res.stdout and "FAILED" not in res.stdout
