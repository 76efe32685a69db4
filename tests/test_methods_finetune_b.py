"""SalUn, EraseDiff and ScissorHands on tiny SD1/SD2-style pipelines (and one check on the mini model)."""
import numpy as np
import pytest
import torch

import igmu.methods.erasediff  # noqa: F401
import igmu.methods.salun  # noqa: F401
import igmu.methods.scissorhands  # noqa: F401
from igmu.errors import UserError
from igmu.artifacts import load_artifact, load_model
from igmu.erase import run_erase
from igmu.methods.base import EraseRequest
from igmu.diffusion.arch import adapter_for
from igmu.diffusion.noise import diffusion_loss
from igmu.diffusion.sampling import concept_latents
from igmu.methods.erasediff import EraseDiff
from igmu.methods.salun import GENERIC_RETAIN, forget_gradients, retain_prompts, top_fraction_mask
from igmu.methods.scissorhands import project_gradient, trim, trim_layers

DATA = ["forget_images=4", "retain_images=2", "sample_steps=3", "batch_size=4"]


def _base(kind, tiny_sd1, tiny_sd2):
    return str(tiny_sd1 if kind == "sd1" else tiny_sd2)


def _probe(pipe, n=4, seed=11, prompt="circle"):
    """Noised latents of `prompt` drawn by the original model, fixed noise and timesteps."""
    x0 = concept_latents(pipe, pipe.unet, [prompt], n, 3, 5.0, seed)[0]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([100, 400, 700, 900][:n])
    return adapter_for(pipe).train_scheduler.add_noise(x0, noise, t), t


@torch.no_grad()
def _gap(pipe, unet, xt, t, a, b):
    """Mean squared difference of the UNet's predictions for prompts a and b on the same x_t."""
    e = adapter_for(pipe).encode([a, b])[0]
    pa = unet(xt, t, encoder_hidden_states=e[:1].expand(len(xt), -1, -1)).sample
    pb = unet(xt, t, encoder_hidden_states=e[1:].expand(len(xt), -1, -1)).sample
    return float(((pa - pb) ** 2).mean())


def _unet_params(pipe):
    return {f"unet.{n}": p.detach() for n, p in pipe.unet.named_parameters()}


# ---------------------------------------------------------------- shared scoring

def test_top_fraction_mask_keeps_the_largest_scores_over_all_tensors():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0]), "b": torch.tensor([[4.0, 0.0], [2.0, 6.0]])}
    m = top_fraction_mask(scores, 3 / 7)
    assert m["a"].tolist() == [True, False, False] and m["b"].tolist() == [[True, False], [False, True]]
    assert not any(v.any() for v in top_fraction_mask(scores, 0.0).values())
    assert all(v.all() for v in top_fraction_mask(scores, 1.0).values())


def test_forget_gradients_signed_sum_versus_sum_of_magnitudes(tiny_sd1):
    pipe = load_model(str(tiny_sd1))
    unet = pipe.unet.requires_grad_(True)
    x0 = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    e = adapter_for(pipe).encode(["circle", ""])[0]
    args = (pipe, unet, x0, e[:1].expand(8, -1, -1), e[1:], 7.5, 4)
    # the same two batches, t and noise: SalUn sums signed gradients, SNIP sums their magnitudes
    signed = forget_gradients(*args, torch.Generator().manual_seed(1), np.random.default_rng(0), passes=2)
    mags = forget_gradients(*args, torch.Generator().manual_seed(1), np.random.default_rng(0), passes=2,
                            abs_each=True)
    assert set(signed) == {n for n, _ in unet.named_parameters()}
    assert all(torch.all(mags[n] >= signed[n] - 1e-6) for n in signed)  # |g1 + g2| <= |g1| + |g2|
    assert sum(float((mags[n] - signed[n]).sum()) for n in signed) > 0
    one = forget_gradients(*args, torch.Generator().manual_seed(1), np.random.default_rng(0))  # one shuffled pass
    assert sum(float(v.sum()) for v in one.values()) > 0


def test_generic_retain_drops_prompts_naming_the_target_and_adds_the_anchor():
    keep = retain_prompts(EraseRequest(["red circle"], None, []))
    assert keep and all(not {"circle", "red"} & set(p.split()) for p in keep)
    assert len(keep) < len(GENERIC_RETAIN)
    assert retain_prompts(EraseRequest(["circle"], "square", ["star"])) == ["star", "square"]


# ---------------------------------------------------------------- SalUn

@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_salun_trains_only_salient_weights_and_maps_target_to_pseudo_prompt(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    art = run_erase(base, "salun", ["circle"], "square", [], None, DATA + ["epochs=4", "lr=3e-3", "alpha=0.1"],
                    tmp_path / "a")
    manifest, tensors = load_artifact(art)
    orig, edited = load_model(base), load_model(str(art))
    before = _unet_params(orig)
    total = sum(p.numel() for p in before.values())
    assert tensors and all(k.startswith("unet.") for k in tensors)
    assert all(not torch.equal(v, before[k]) for k, v in tensors.items())  # only tensors that changed
    # at most mask_ratio = 50% of all UNet weights moved (the saliency mask), and most tensors are touched
    assert 0.2 * total < manifest["cost"]["params_changed"] <= 0.5 * total
    xt, t = _probe(orig)
    gap0 = _gap(orig, orig.unet, xt, t, "circle", "square")
    gap1 = _gap(orig, edited.unet, xt, t, "circle", "square")
    assert gap1 < 0.5 * gap0  # the target's prediction was pulled onto the pseudo prompt's


@torch.no_grad()
def _retain_loss(pipe, orig, prompts, n, seed):
    """Denoising loss of `pipe` on the very retain latents the method trained on (concept_latents, seed + 1)."""
    x0, which = concept_latents(orig, orig.unet, prompts, n, 3, 5.0, seed + 1)
    c = adapter_for(orig).encode(prompts)[0][which]
    return float(sum(diffusion_loss(orig, pipe.unet, x0, c, torch.Generator().manual_seed(i))
                     for i in range(4)))


def test_salun_retain_term_holds_the_retain_images(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    orig = load_model(base)
    sets = DATA + ["epochs=4", "lr=3e-3", "retain_images=4"]
    loss = {a: _retain_loss(load_model(str(run_erase(base, "salun", ["circle"], "square", ["star"], None,
                                                           sets + [f"alpha={a}"], tmp_path / f"a{a}"))),
                            orig, ["star", "square"], 4, 0)
            for a in (0, 20)}
    assert loss[20] < 0.7 * loss[0]  # with the retain term the preserved images stay denoised


def test_salun_is_deterministic(tiny_sd1, tmp_path):
    sets = DATA + ["epochs=1"]
    a = load_artifact(run_erase(str(tiny_sd1), "salun", ["star"], None, [], None, sets, tmp_path / "a"))[1]
    b = load_artifact(run_erase(str(tiny_sd1), "salun", ["star"], None, [], None, sets, tmp_path / "b"))[1]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- EraseDiff

@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_erasediff_drives_forget_prediction_to_pseudo_prompt(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    art = run_erase(base, "erasediff", ["circle"], "square", [], None, DATA + ["epochs=3", "lr=3e-3"], tmp_path / "a")
    manifest, tensors = load_artifact(art)
    orig, edited = load_model(base), load_model(str(art))
    assert set(tensors) == set(_unet_params(orig))  # train_method full: every UNet tensor moves
    xt, t = _probe(orig)
    assert _gap(orig, edited.unet, xt, t, "circle", "square") < 0.5 * _gap(orig, orig.unet, xt, t, "circle", "square")


def test_erasediff_uniform_target_and_xattn_only(tiny_sd2, tmp_path):
    base = str(tiny_sd2)
    sets = DATA + ["epochs=3", "lr=3e-3", "forget_target=uniform", "train_method=xattn", "lambda_bome=5"]
    art = run_erase(base, "erasediff", ["circle"], None, [], None, sets, tmp_path / "a")
    tensors = load_artifact(art)[1]
    assert tensors and all(".attn2." in k for k in tensors)
    orig, edited = load_model(base), load_model(str(art))
    xt, t = _probe(orig)
    e = adapter_for(orig).encode(["circle"])[0].expand(len(xt), -1, -1)
    with torch.no_grad():
        m0 = float(orig.unet(xt, t, encoder_hidden_states=e).sample.mean())
        m1 = float(edited.unet(xt, t, encoder_hidden_states=e).sample.mean())
    assert abs(m1 - 0.5) < abs(m0 - 0.5)  # the prediction on forget images moved towards U(0, 1) noise


def test_erasediff_adaptive_lambda_follows_the_cosine_rule():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    same = EraseDiff._adaptive_lambda((w * w).sum(), (w * w).sum(), [w], eta=1.5)
    opposite = EraseDiff._adaptive_lambda((w * w).sum(), -(w * w).sum(), [w], eta=0.5)
    assert same == pytest.approx(0.5, abs=1e-5) and opposite == pytest.approx(1.5, abs=1e-5)
    assert EraseDiff._adaptive_lambda((w * w).sum(), (w * w).sum(), [w], eta=0.5) == 0.0


# ---------------------------------------------------------------- ScissorHands

def test_trim_reinitialises_exactly_the_top_scores_inside_the_trim_layers(tiny_sd1):
    pipe = load_model(str(tiny_sd1))
    unet = pipe.unet
    layers = trim_layers(unet, "official")
    assert layers and all(n.startswith("up_blocks.1.attentions.1.") and ".attn1." in n for n in layers)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in unet.named_parameters()}
    n = trim(unet, scores, 0.9, layers, torch.Generator().manual_seed(1))
    mask = top_fraction_mask(scores, 0.1)
    expect = sum(int(mask[f"{lay}.{k}"].sum()) for lay in layers for k in ("weight", "bias")
                 if f"{lay}.{k}" in mask)
    assert n == expect > 0
    for name, p in unet.named_parameters():
        changed = p.detach() != before[name]
        inside = any(name.startswith(lay + ".") for lay in layers)
        if inside:
            assert not (changed & ~mask[name]).any()  # nothing outside the mask moved
            assert changed.sum() >= 0.9 * mask[name].sum()
            if name.endswith("bias"):
                assert torch.all(p.detach()[mask[name]] == 0)
        else:
            assert not changed.any()


def test_projection_keeps_the_update_from_lowering_the_forget_loss():
    g0 = torch.Generator().manual_seed(0)
    for t in (1, 3):
        mem = torch.randn(t, 50, generator=g0, dtype=torch.float64)
        g = -mem.sum(0) + 0.1 * torch.randn(50, generator=g0, dtype=torch.float64)  # conflicts with memories
        assert (mem @ g < 0).any()
        new = project_gradient(g, mem, margin=0.0)
        assert (mem @ new >= -1e-2 * mem.norm(dim=1) * new.norm()).all()
        assert ((new - g).norm() < g.norm())  # a projection, not a replacement
        with_margin = project_gradient(g, mem, margin=0.5)
        assert (mem @ with_margin > mem @ new - 1e-9).all()


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_scissorhands_repairs_with_projection_and_pseudo_prompt(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    sets = DATA + ["epochs=3", "lr=3e-3", "lam=1", "prune_num=2", "sparsity=0.99"]
    art = run_erase(base, "scissorhands", ["circle"], "square", [], None, sets, tmp_path / "a")
    tensors = load_artifact(art)[1]
    orig, edited = load_model(base), load_model(str(art))
    assert set(tensors) == set(_unet_params(orig))  # the repair fine-tunes every UNet tensor
    xt, t = _probe(orig)
    gap0 = _gap(orig, orig.unet, xt, t, "circle", "square")
    assert _gap(orig, edited.unet, xt, t, "circle", "square") < gap0


def test_scissorhands_ascent_raises_forget_loss(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    sets = DATA + ["epochs=3", "lr=3e-3", "lam=1", "prune_num=2", "forget_loss=ascent", "project=false"]
    edited = load_model(str(run_erase(base, "scissorhands", ["circle"], None, [], None, sets, tmp_path / "a")))
    orig = load_model(base)
    x0 = concept_latents(orig, orig.unet, ["circle"], 8, 3, 5.0, 5)[0]
    c = adapter_for(orig).encode(["circle"])[0].expand(8, -1, -1)
    with torch.no_grad():
        before = diffusion_loss(orig, orig.unet, x0, c, torch.Generator().manual_seed(0))
        after = diffusion_loss(orig, edited.unet, x0, c, torch.Generator().manual_seed(0))
    assert after > before


# ---------------------------------------------------------------- bad input, determinism

@pytest.mark.parametrize("method", ["salun", "erasediff", "scissorhands"])
def test_bad_inputs_are_one_line_errors(method, tiny_sd1, plain_unet_model, tmp_path):
    base = str(tiny_sd1)
    for bad in ["lr=0", "epochs=0", "batch_size=0", "nope=1"]:
        with pytest.raises(UserError):
            run_erase(base, method, ["circle"], None, [], None, [bad], tmp_path / "a")
    for targets, anchor, msg in [(["circle", " "], None, "empty target"), (["circle", "circle"], None, "twice"),
                                 (["circle"], "square " * 40, "at most")]:
        with pytest.raises(UserError, match=msg):
            run_erase(base, method, targets, anchor, [], None, DATA, tmp_path / "a")
    with pytest.raises(UserError, match="cross-attention|no layers") as e:
        run_erase(str(plain_unet_model), method, ["circle"], None, [], None, DATA, tmp_path / "a")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("method", ["erasediff", "scissorhands"])
def test_deterministic(method, tiny_sd2, tmp_path):
    sets = DATA + ["epochs=1", "prune_num=1"] if method == "scissorhands" else DATA + ["epochs=1"]
    a = load_artifact(run_erase(str(tiny_sd2), method, ["star"], None, [], None, sets, tmp_path / "a"))[1]
    b = load_artifact(run_erase(str(tiny_sd2), method, ["star"], None, [], None, sets, tmp_path / "b"))[1]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
