"""The re-layered core: the architecture adapter, the one fine-tuning loop, sampling hooks through the registry."""
from types import SimpleNamespace

import pytest
import torch

from igmu.artifacts import load_model
from igmu.diffusion.arch import adapter_for
from igmu.errors import UserError
from igmu.methods import sampler_for
from igmu.methods.train import Adam, FineTune, changed_tensors


def test_adapter_reads_the_pipeline(tiny_sd1, tiny_sd2):
    for path, kind in ((tiny_sd1, "epsilon"), (tiny_sd2, "v_prediction")):
        pipe = load_model(str(path))
        a = adapter_for(pipe)
        assert adapter_for(a) is a and a.prediction_type == kind
        cond, mask = a.encode(["a circle", ""])
        assert cond.shape == (2, a.max_length, a.kv_input_dim) and mask.shape == (2, a.max_length)
        x = torch.randn(a.latent_shape(2))
        out = a.denoise(None, x, torch.tensor([10, 10]), cond)
        assert torch.equal(out, pipe.unet(x, torch.tensor([10, 10]), encoder_hidden_states=cond).sample)
        kv = a.kv_projections()
        assert len(kv) == len(a.cross_attentions()) > 0
        assert all(p.k.in_features == p.v.in_features == a.kv_input_dim for p in kv)
        assert all(p.key.endswith("attn2.to_k") and p.value.endswith("attn2.to_v") for p in kv)


@pytest.mark.parametrize("pipe, why", [
    (SimpleNamespace(unet=None, transformer=torch.nn.Linear(2, 2)), "its denoiser is a Linear"),
    (SimpleNamespace(unet=None, transformer=None), "no UNet or transformer"),
    (SimpleNamespace(unet=torch.nn.Linear(2, 2), text_encoder=None, tokenizer=None), "not a UNet2DConditionModel"),
])
def test_unsupported_pipelines_get_one_line(pipe, why):
    with pytest.raises(UserError, match=why) as e:
        adapter_for(pipe)
    assert "\n" not in str(e.value) and "SD 1" not in str(e.value)


def test_half_sdxl_pipeline_is_refused(tiny_sd1):
    pipe = load_model(str(tiny_sd1))
    pipe.text_encoder_2 = pipe.text_encoder  # a second encoder, but an SD 1.x UNet (no text_time conditioning)
    with pytest.raises(UserError, match="second text encoder but its UNet takes no SDXL text_time"):
        adapter_for(pipe)


def _toy(n=3):
    torch.manual_seed(0)
    return torch.nn.Linear(n, n), torch.randn(8, n), torch.randn(8, n)


def test_finetune_takes_steps_clips_and_reports():
    model, x, y = _toy()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []
    loop = FineTune(list(model.named_parameters()), Adam(lr=0.05), max_grad_norm=1e-3, snapshot=True,
                    adjust_gradients=lambda: seen.append(float(torch.cat([p.grad.flatten() for p in model.parameters()])
                                                               .norm())))
    losses = []

    def loss(step):
        out = torch.nn.functional.mse_loss(model(x), y)
        losses.append(out.item())
        return out, {"step": step}

    log = []
    loop.run(30, loss, lambda k, **info: log.append(info))
    assert loop.step == 30 and losses[-1] < losses[0]
    assert len(log) == 30 and log[3]["step"] == 3 and "loss" in log[3]
    assert set(loop.changed("layer")) == {"layer.weight", "layer.bias"}
    assert changed_tensors(model.named_parameters(), before, "m").keys() == {"m.weight", "m.bias"}
    assert seen and all(g > 0 for g in seen)  # the hook sees the gradients before clipping


def test_finetune_skips_steps_without_a_loss():
    model, x, y = _toy()
    loop = FineTune(list(model.named_parameters()), Adam(lr=0.1), snapshot=True)
    after = []
    loop.run(4, lambda step: None, None)
    loop.run(2, lambda step: torch.nn.functional.mse_loss(model(x), y).detach(), None)  # no grad: no update
    assert loop.step == 0 and loop.changed("m") == {}
    loop.run(1, lambda step: torch.nn.functional.mse_loss(model.weight @ x.T, y.T), lambda k, **i: after.append(i))
    assert loop.step == 1 and set(loop.changed("m")) == {"m.weight"}
    assert set(loop.tensors("m", updated_only=True)) == {"m.weight"}


def test_sampling_specs_resolve_through_the_registry():
    hook = sampler_for({"type": "negative_prompt", "negative_prompt": "circle"})
    assert callable(hook)
    with pytest.raises(UserError, match="does not know .*negative_prompt.*sld"):
        sampler_for({"type": "mystery"})
    with pytest.raises(UserError, match="malformed"):
        sampler_for({"type": "sld", "safety_concept": "x"})
