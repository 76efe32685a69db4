"""RECE, AdvUnlearn and Receler: the adversarial family of erasers."""
import pytest
import torch
import torch.nn.functional as F

import igmu.methods.advunlearn  # noqa: F401  (registers the methods)
import igmu.methods.rece  # noqa: F401
import igmu.methods.receler  # noqa: F401
from igmu.errors import UserError
from igmu.methods.advunlearn import GENERIC_RETAIN, retain_prompts
from igmu.methods.train import text_encoder_parameters
from igmu.diffusion.sampling import sample_until, trajectory_pool
from igmu.artifacts import load_artifact, load_model
from igmu.erase import run_erase
from igmu.diffusion.arch import adapter_for
from igmu.methods.rece import adversarial_embedding, edited_projections
from igmu.methods.receler import LinearEraser, _reg

ADV_FAST = ["iterations=12", "warmup_iter=4", "attack_step=2", "sample_steps=3", "pool_size=2", "lr=1e-2",
            "retain_batch=2"]
REC_FAST = ["iterations=6", "advrs_iters=2", "num_advrs_prompts=3", "sample_steps=3", "lr=1e-2"]


def _base(kind, tiny_sd1, tiny_sd2):
    return str(tiny_sd1 if kind == "sd1" else tiny_sd2)


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _goal_gap(base, pipes, prompt, eta=1.0, stops=(0, 1, 2)):
    """For each pipe: MSE between its prediction for `prompt` and ESD's goal eps_0 - eta (eps_c - eps_0) of the
    original model, on latents of the prompt drawn by the original model (3-step sampler, stopped early)."""
    c, null = adapter_for(base).encode([prompt])[0], adapter_for(base).encode([""])[0]
    gaps = [0.0] * len(pipes)
    for stop in stops:
        xt, t = sample_until(base, base.unet, c, null, 3, stop, 3.0, torch.Generator().manual_seed(11 + stop))
        with torch.no_grad():
            e0 = base.unet(xt, t, encoder_hidden_states=null).sample
            ec = base.unet(xt, t, encoder_hidden_states=c).sample
            goal = e0 - eta * (ec - e0)
            for i, p in enumerate(pipes):
                pred = p.unet(xt, t, encoder_hidden_states=adapter_for(p).encode([prompt])[0]).sample
                gaps[i] += F.mse_loss(pred, goal).item()
    return gaps


# ---- RECE -------------------------------------------------------------------------------------------------


def _attack(pipe, orig, prompt, reg, e=None):
    """RECE's attack objective sum_l ||W'_l e - W_l c||^2 + reg ||e||^2 at e (default: its minimiser on `pipe`)."""
    We = [p.linear.weight.detach() for p in edited_projections(pipe)]
    Wo = [p.linear.weight.detach() for p in edited_projections(orig)]
    c = adapter_for(orig).encode([prompt])[0][0]
    e = adversarial_embedding(We, Wo, c, reg) if e is None else e
    value = sum(((a.double() @ e.T - b.double() @ c.double().T) ** 2).sum() for a, b in zip(We, Wo)).item() \
        + reg * (e ** 2).sum().item()
    return value, e


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_rece_changes_kv_and_closes_the_attack_uce_leaves(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    rece = run_erase(base, "rece", ["circle"], "square", ["star"], None, [], tmp_path / "r")
    uce = run_erase(base, "uce", ["circle"], "square", ["star"], None, [], tmp_path / "u")
    manifest, tensors = load_artifact(rece)
    assert manifest["method"] == "rece" and manifest["cost"]["params_changed"] > 0
    orig = load_model(base)
    expect = {f"unet.{n}.to_{p}.weight" for n, _ in adapter_for(orig).cross_attentions() for p in "kv"}
    assert set(tensors) == expect == set(load_artifact(uce)[1])
    assert not _same(tensors, load_artifact(uce)[1])  # the adversarial epochs changed UCE's result
    p_rece, p_uce = load_model(str(rece)), load_model(str(uce))
    # the embedding RECE's closed-form attack finds after UCE (its first epoch's e*) no longer brings the target
    # back once RECE has erased it. (Its new optimum need not be worse than UCE's: with the official empty-prompt
    # preservation in the first stage, min over e is lower after RECE on the tiny and the mini model.)
    after_uce, e_star = _attack(p_uce, orig, "circle", 0.1)
    assert _attack(p_rece, orig, "circle", 0.1, e_star)[0] > 1.5 * after_uce


def test_rece_adversarial_embedding_is_the_minimiser():
    g = torch.Generator().manual_seed(0)
    We = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    Wo = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    c = torch.randn(2, 4, generator=g, dtype=torch.float64)
    e = adversarial_embedding(We, Wo, c, 0.3).requires_grad_(True)
    J = sum(((a @ e.T - b @ c.T) ** 2).sum() for a, b in zip(We, Wo)) + 0.3 * (e ** 2).sum()
    J.backward()
    assert e.grad.abs().max() < 1e-9  # zero gradient: the closed form is the optimum


def test_rece_several_targets_and_determinism(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    a = load_artifact(run_erase(base, "rece", ["circle", "star"], None, [], None, [], tmp_path / "a"))[1]
    b = load_artifact(run_erase(base, "rece", ["circle", "star"], None, [], None, [], tmp_path / "b"))[1]
    one = load_artifact(run_erase(base, "rece", ["circle"], None, [], None, [], tmp_path / "c"))[1]
    assert _same(a, b) and set(a) == set(one) and not _same(a, one)


def test_rece_bad_inputs(tiny_sd1, plain_unet_model, tmp_path):
    base = str(tiny_sd1)
    for bad in ["epochs=0", "regular_scale=0", "lamb=-1"]:
        with pytest.raises(UserError, match="bad value"):
            run_erase(base, "rece", ["circle"], None, [], None, [bad], tmp_path / "a")
    with pytest.raises(UserError, match="empty target"):
        run_erase(base, "rece", ["circle", " "], None, [], None, [], tmp_path / "a")
    with pytest.raises(UserError, match="at most"):
        run_erase(base, "rece", ["circle"], "square " * 40, [], None, [], tmp_path / "a")
    with pytest.raises(UserError, match="no cross-attention"):
        run_erase(str(plain_unet_model), "rece", ["circle"], None, [], None, [], tmp_path / "a")
    assert not (tmp_path / "a").exists()


# ---- AdvUnlearn -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_advunlearn_trains_only_the_text_encoder_towards_the_esd_goal(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    art = run_erase(base, "advunlearn", ["circle"], None, [], None, ADV_FAST, tmp_path / "a")
    manifest, tensors = load_artifact(art)
    orig = load_model(base)
    names = {n for n, _ in orig.text_encoder.named_parameters()}
    want = {f"text_encoder.{n}" for n, _ in text_encoder_parameters(orig.text_encoder, "all")}
    assert set(tensors) == want and want  # transformer layers and final layer norm, nothing else
    assert not any("embeddings" in k for k in tensors) and any("final_layer_norm" in k for k in tensors)
    assert len(want) < len(names) and manifest["cost"]["params_changed"] > 0.9 * manifest["cost"][
        "params_in_changed_tensors"]
    edited = load_model(str(art))
    before, after = _goal_gap(orig, [orig, edited], "circle")
    assert after < 0.8 * before  # the target's prediction moved towards the negative-guidance goal


def test_advunlearn_is_deterministic_and_component_selects(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    sets = ["iterations=3", "warmup_iter=1", "attack_step=2", "sample_steps=3", "pool_size=1"]
    a = load_artifact(run_erase(base, "advunlearn", ["star"], None, [], None, sets, tmp_path / "a"))[1]
    b = load_artifact(run_erase(base, "advunlearn", ["star"], None, [], None, sets, tmp_path / "b"))[1]
    assert _same(a, b)
    ffn = load_artifact(run_erase(base, "advunlearn", ["star"], None, [], None, sets + ["component=ffn"],
                                  tmp_path / "c"))[1]
    assert ffn and all(".mlp." in k for k in ffn)


def test_advunlearn_retain_prompts():
    assert retain_prompts(["circle"], ["star", "heart"]) == ["star", "heart"]
    kept = retain_prompts(["red circle"], [])
    assert kept and not any("circle" in p.split() or "red" in p.split() for p in kept)
    assert len(retain_prompts(["hex mark"], [])) == len(GENERIC_RETAIN)  # no caption names the mark


def test_trajectory_pool_holds_the_samplers_latents(tiny_sd2):
    pipe = load_model(str(tiny_sd2))
    c, null = adapter_for(pipe).encode(["circle", "star"])[0], adapter_for(pipe).encode([""])[0]
    xs, ts = trajectory_pool(pipe, pipe.unet, c, null, 4, 3.0, torch.Generator().manual_seed(3))
    assert xs.shape == (4, 2, 4, 8, 8) and ts.shape == (4,)
    for stop in (0, 2, 3):
        x, t = sample_until(pipe, pipe.unet, c, null.expand(2, -1, -1), 4, stop, 3.0,
                            torch.Generator().manual_seed(3))
        assert int(t) == int(ts[stop]) and torch.allclose(x, xs[stop], atol=1e-6)


def test_advunlearn_bad_inputs(tiny_sd1, plain_unet_model, tmp_path):
    base = str(tiny_sd1)
    for bad in ["iterations=0", "attack_step=0", "component=unet", "sample_steps=1"]:
        with pytest.raises(UserError, match="bad value"):
            run_erase(base, "advunlearn", ["circle"], None, [], None, [bad], tmp_path / "a")
    with pytest.raises(UserError, match="no room"):
        run_erase(base, "advunlearn", ["circle"], None, [], None, ["adv_prompt_num=31"], tmp_path / "a")
    with pytest.raises(UserError, match="twice"):
        run_erase(base, "advunlearn", ["circle", "circle"], None, [], None, [], tmp_path / "a")
    with pytest.raises(UserError, match="no cross-attention"):
        run_erase(str(plain_unet_model), "advunlearn", ["circle"], None, [], None, [], tmp_path / "a")
    assert not (tmp_path / "a").exists()


# ---- Receler ----------------------------------------------------------------------------------------------


def test_linear_eraser_folds_exactly_into_to_out():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(6, 8)
    er = LinearEraser(8, 3, True, g)
    with torch.no_grad():
        er.up.weight.copy_(torch.randn(8, 3, generator=g))
        er.up.bias.copy_(torch.randn(8, generator=g))
    x = torch.randn(5, 6, generator=g)
    W, b = er.fold(lin.weight.detach(), lin.bias.detach())
    with torch.no_grad():
        o = lin(x)
        assert torch.allclose(o + er(o), x @ W.T + b, atol=1e-5)
    assert torch.equal(LinearEraser(8, 3, True, g)(o), torch.zeros_like(o))  # U starts at zero: no change


def test_concept_localised_regulariser_counts_only_outside_the_mask():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1  # the concept covers the top half
    e = torch.zeros(1, 16, 3)
    e[:, :8] = 5.0  # output inside the mask only
    assert _reg([(0, e)], {"full": mask}, (4, 4)).item() == 0
    e[:, 8:] = 1.0  # and 1 outside: mean over channels 1, summed over 8 pixels, over 8 pixels
    assert abs(_reg([(0, e)], {"full": mask}, (4, 4)).item() - 1.0) < 1e-6
    assert _reg([(0, e)], None, (4, 4)).item() > 1.0  # no mask (preserved prompts): everything counts


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_receler_folds_erasers_into_to_out_and_erases(kind, tiny_sd1, tiny_sd2, tmp_path):
    base = _base(kind, tiny_sd1, tiny_sd2)
    # the ESD direction is checked without the attack: on an untrained tiny model a soft prompt is anything,
    # and what the eraser learns under it says little about the plain prompt
    art = run_erase(base, "receler", ["circle"], None, [], None, REC_FAST + ["advrs_iters=0"], tmp_path / "a")
    manifest, tensors = load_artifact(art)
    orig = load_model(base)
    expect = {f"unet.{n}.to_out.0.{p}" for n, _ in adapter_for(orig).cross_attentions() for p in ("weight", "bias")}
    assert set(tensors) == expect and manifest["cost"]["params_changed"] > 0
    edited = load_model(str(art))
    before, after = _goal_gap(orig, [orig, edited], "circle")
    assert after < 0.8 * before  # the erasers moved the target's prediction towards the ESD goal
    # the folded weights are plain diffusers weights: nothing else in the UNet differs
    p0, p1 = dict(orig.unet.named_parameters()), dict(edited.unet.named_parameters())
    assert all(torch.equal(p0[n], p1[n]) for n in p0 if f"unet.{n}" not in expect)


def test_receler_is_deterministic_with_preserve_and_two_targets(tiny_sd1, tmp_path):
    base = str(tiny_sd1)
    sets = ["iterations=2", "advrs_iters=1", "num_advrs_prompts=2", "sample_steps=3"]
    a = load_artifact(run_erase(base, "receler", ["circle", "star"], None, ["square"], None, sets, tmp_path / "a"))[1]
    b = load_artifact(run_erase(base, "receler", ["circle", "star"], None, ["square"], None, sets, tmp_path / "b"))[1]
    assert _same(a, b)
    plain = load_artifact(run_erase(base, "receler", ["circle", "star"], None, ["square"], None,
                                    sets + ["advrs_iters=0"], tmp_path / "c"))[1]
    assert set(plain) == set(a) and not _same(plain, a)  # the adversarial prompts change what is learned


def test_receler_bad_inputs(tiny_sd1, plain_unet_model, tmp_path):
    base = str(tiny_sd1)
    for bad in ["iterations=0", "mask_thres=1", "eraser_rank=0", "lr=0"]:
        with pytest.raises(UserError, match="bad value"):
            run_erase(base, "receler", ["circle"], None, [], None, [bad], tmp_path / "a")
    with pytest.raises(UserError, match="no room"):
        run_erase(base, "receler", ["circle"], None, [], None, ["num_advrs_prompts=31"], tmp_path / "a")
    with pytest.raises(UserError, match="empty target"):
        run_erase(base, "receler", [""], None, [], None, [], tmp_path / "a")
    with pytest.raises(UserError, match="no cross-attention"):
        run_erase(str(plain_unet_model), "receler", ["circle"], None, [], None, [], tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_advunlearn_retain_regulariser_holds_preserved_prompts_on_the_mini_model(tmp_path):
    # the tiny test models are untrained (all prompts encode alike), so the retain term is checked on the mini model
    orig = load_model("mini")

    def preds(pipe, prompt):
        c, null = adapter_for(orig).encode([prompt])[0], adapter_for(orig).encode([""])[0]
        out = []
        for stop in (0, 1, 2):
            xt, t = sample_until(orig, orig.unet, c, null, 3, stop, 3.0, torch.Generator().manual_seed(stop))
            with torch.no_grad():
                out.append(pipe.unet(xt, t, encoder_hidden_states=adapter_for(pipe).encode([prompt])[0]).sample)
        return torch.cat(out)

    ref = preds(orig, "a blue star")
    sets = ["iterations=12", "warmup_iter=6", "attack_step=1", "sample_steps=3", "pool_size=2", "lr=3e-3"]
    drift = {}
    for w in (0, 10):
        art = run_erase("mini", "advunlearn", ["circle"], None, ["a blue star"], None, sets + [f"retain_loss_w={w}"],
                        tmp_path / f"w{w}")
        drift[w] = F.mse_loss(preds(load_model(str(art)), "a blue star"), ref).item()
    assert drift[10] < 0.5 * drift[0]  # with the retain term the preserved prompt moves much less
