import pytest
import torch

from igmu.errors import UserError
from igmu.methods.lora import (inject_lora, lora_delta, lora_parameters, merge_lora, only_adapters,
                               set_adapter_scale)
from igmu.artifacts import load_model


@pytest.fixture
def unet(tiny_sd1):
    return load_model(str(tiny_sd1)).unet.eval()


def _kv(unet):
    return [f"{n}.{p}" for n, m in unet.named_modules() if n.endswith("attn2") for p in ("to_k", "to_v")]


def _inputs(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, unet.config.sample_size, unet.config.sample_size, generator=g)
    c = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    return x, c


def _is_peft(m):
    from peft.tuners.tuners_utils import BaseTunerLayer
    return isinstance(m, BaseTunerLayer)


def test_inject_train_merge_roundtrip(unet):
    plain = [n for n, _ in unet.named_parameters()]
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    targets = _kv(unet)
    assert inject_lora(unet, targets, rank=1, alpha=1.0, adapter="a", seed=0) == targets
    params = lora_parameters(unet, "a")
    assert len(params) == 2 * len(targets) and all(p.requires_grad for p in params)
    assert all(p.shape[0] == 1 or p.shape[1] == 1 for p in params)  # rank 1
    assert not any(p.requires_grad for n, p in unet.named_parameters() if ".lora_" not in n)
    x, c = _inputs(unet)
    y0 = unet(x, 10, c).sample.detach()
    with only_adapters(unet, []):
        assert torch.allclose(unet(x, 10, c).sample, y0)  # B starts at zero: adapter is a no-op
    opt = torch.optim.SGD(params, lr=1.0)
    unet(x, 10, c).sample.pow(2).mean().backward()
    opt.step()
    y = unet(x, 10, c).sample.detach()
    with only_adapters(unet, []):
        base = unet(x, 10, c).sample.detach()
    assert torch.allclose(base, y0) and not torch.allclose(y, y0)  # trained, base untouched

    delta = lora_delta(unet, "a")
    changed = merge_lora(unet, ["a"])
    assert sorted(changed) == sorted(f"{t}.weight" for t in targets) == sorted(delta)
    assert [n for n, _ in unet.named_parameters()] == plain
    assert not any(_is_peft(m) for m in unet.modules()) and not hasattr(unet, "peft_config")
    after = dict(unet.named_parameters())
    for n, w in changed.items():
        assert torch.allclose(w, before[n] + delta[n], atol=1e-6) and torch.equal(after[n].detach(), w)
    assert all(torch.equal(after[n].detach(), before[n]) for n in plain if n not in changed)
    assert (unet(x, 10, c).sample.detach() - y).abs().max() < 1e-5


def test_several_adapters_scales_and_selection(unet):
    targets = _kv(unet)
    inject_lora(unet, targets, 1, 1.0, "a", init_zero_b=False, seed=1)
    inject_lora(unet, targets[:2], 2, 4.0, "b", init_zero_b=False, seed=2)
    assert not any(p.requires_grad for p in lora_parameters(unet, "a"))  # only the newest adapter trains
    assert all(p.requires_grad for p in lora_parameters(unet, "b"))
    x, c = _inputs(unet)
    with torch.no_grad():
        both = unet(x, 10, c).sample
        with only_adapters(unet, []):
            y0 = unet(x, 10, c).sample
        with only_adapters(unet, ["a"]):
            ya = unet(x, 10, c).sample
        with only_adapters(unet, ["b"]):
            yb = unet(x, 10, c).sample
        assert torch.allclose(unet(x, 10, c).sample, both)  # restored after each block
        assert not torch.allclose(ya, y0) and not torch.allclose(yb, y0) and not torch.allclose(ya, yb)
        da = lora_delta(unet, "a")
        set_adapter_scale(unet, "a", 0.5)
        half = lora_delta(unet, "a")
        assert all(torch.allclose(half[k], 0.5 * da[k]) for k in da)
        assert set(lora_delta(unet, "b")) == {f"{t}.weight" for t in targets[:2]}
        w0 = {n.replace(".base_layer", ""): p.detach().clone() for n, p in unet.named_parameters()
              if n.endswith("base_layer.weight")}
        changed = merge_lora(unet, ["a"], scales={"a": 2.0})  # b is discarded
        assert set(changed) == set(da) and all(torch.allclose(changed[k], w0[k] + 2 * da[k], atol=1e-6) for k in da)
        assert not any(_is_peft(m) for m in unet.modules())
        with pytest.raises(UserError, match="no LoRA adapter"):
            lora_delta(unet, "a")


def test_merge_with_scale_matches_adapted_output(unet):
    targets = _kv(unet)[:4]
    inject_lora(unet, targets, 1, 2.0, "a", init_zero_b=False, seed=3)
    set_adapter_scale(unet, "a", 0.3)
    x, c = _inputs(unet)
    with torch.no_grad():
        y = unet(x, 10, c).sample
        merge_lora(unet, ["a"])
        assert (unet(x, 10, c).sample - y).abs().max() < 1e-5


def test_conv_layers_and_bad_requests(unet):
    conv = "down_blocks.0.resnets.0.conv1"
    assert inject_lora(unet, [conv], 1, 1.0, "c", init_zero_b=False, seed=0) == [conv]
    base_w = dict(unet.named_parameters())[f"{conv}.base_layer.weight"]
    assert lora_delta(unet, "c")[f"{conv}.weight"].shape == base_w.shape
    with pytest.raises(UserError, match="empty target list"):
        inject_lora(unet, [], 1, 1.0, "d")
    with pytest.raises(UserError, match="no layer named"):
        inject_lora(unet, ["nope"], 1, 1.0, "d")
    with pytest.raises(UserError, match="Linear or Conv2d"):
        inject_lora(unet, ["down_blocks.0.resnets.0.norm1"], 1, 1.0, "d")
    with pytest.raises(UserError, match="already has"):
        inject_lora(unet, [conv], 1, 1.0, "c")
    with pytest.raises(UserError, match="no LoRA adapter"):
        with only_adapters(unet, ["zzz"]):
            pass
    changed = merge_lora(unet, ["c"])
    assert list(changed) == [f"{conv}.weight"]
